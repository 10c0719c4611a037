"""GGUF file -> plain safetensors snapshot, converted once and reused.

Dequantising a GGUF through transformers takes tens of seconds and a GGUF-loaded model cannot be
trained or saved as is, so each distinct file (by sha256) is converted once into
``RUNNER_HOME/snapshots/<sha256>/``, a folder that ``from_pretrained`` loads in under a second.

The snapshot is complete-or-absent: it is built in a temp sibling and renamed into place
(:func:`runner.fsutil.atomic_dir`), under an exclusive ``flock`` so that two processes never
convert the same file at once (the second waits, then reuses the first one's result).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.fsutil import TMP_PREFIX, atomic_dir, atomic_write_json, file_lock
from runner.paths import checksums_dir, runner_home, snapshots_dir
from runner.registry.checksums import cached_sha256, folder_checksums

__all__ = [
    "CHECKSUMS_FILE",
    "SNAPSHOT_MANIFEST",
    "GGUFSnapshot",
    "convert_gguf",
    "ensure_gguf_snapshot",
    "gguf_quant_name",
    "gguf_sha256",
]

logger = logging.getLogger("runner.registry")

SNAPSHOT_MANIFEST = "runner_snapshot.json"
CHECKSUMS_FILE = "runner_checksums.json"


@dataclass(frozen=True)
class GGUFSnapshot:
    """A converted snapshot: where, of which file (sha256), from which quantisation."""

    path: Path
    sha256: str
    quant: str
    converted: bool  # True when this call did the conversion (False: reused)
    seconds: float  # conversion time (of this call or, when reused, of the original one)


def note(message: str, progress: bool) -> None:
    """Tell the user what is happening: through logging, or on stderr when nobody listens."""
    logger.info(message)
    if progress and not logger.hasHandlers():
        print(f"[runner] {message}", file=sys.stderr, flush=True)


def gguf_sha256(file: Path, *, home: Path | str | None = None, progress: bool = True) -> str:
    """sha256 of a GGUF file, remembered by (path, size, mtime, inode) so it is read only once."""
    file = Path(file).resolve()
    key = cached_key(str(file))
    return cached_sha256(file, checksums_dir(home) / f"file-{key}.json", progress=progress)


def cached_key(text: str) -> str:
    """A short, filesystem-safe name for a cache file about ``text`` (usually a path)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


_QUANT_IN_NAME = re.compile(r"(?:^|[.\-_])((?:IQ|Q)\d[A-Z0-9_]*|BF16|F16|F32)(?=\.gguf$)", re.IGNORECASE)


def gguf_quant_name(file: Path) -> str:
    """The file's quantisation ('Q4_1', 'Q8_0', 'F16', ...) from its header, else from its name.

    Reads only the metadata (transformers' reader maps the file and stops before the tensors);
    gguf.GGUFReader would parse every field, seconds for a large vocabulary.
    """
    try:
        import gguf
        from transformers.integrations.gguf.reader import read_gguf_metadata

        metadata, _names = read_gguf_metadata(str(file))
        file_type = metadata.get("general.file_type")
        if file_type is not None:
            name = gguf.LlamaFileType(int(file_type)).name
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except Exception:  # a name is only informative (logged at debug): fall back to the file name
        logger.debug("could not read the GGUF header of %s", file, exc_info=True)
    match = _QUANT_IN_NAME.search(file.name)
    return match.group(1).upper() if match else "unknown"


def _plain_copy_ready(model: Any) -> None:
    """Make a GGUF-loaded model saveable as an ordinary safetensors checkpoint.

    transformers marks GGUF-loaded models as quantised and refuses to save them; with the weights
    already dequantised to dense tensors, dropping that mark is all that is needed.
    """
    packed = [type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()]
    if packed:
        raise RuntimeError(f"GGUF weights were kept packed ({packed[0]}); cannot write a plain copy")
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if "is_quantized" in vars(model):
        model.is_quantized = False
    config = model.config
    if getattr(config, "quantization_config", None) is not None or "quantization_config" in vars(config):
        with contextlib.suppress(AttributeError):
            delattr(config, "quantization_config")


def _gguf_load_kwargs() -> dict[str, Any]:
    """Ask for dense weights explicitly where transformers can keep GGUF blocks packed."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantise
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def convert_gguf(file: Path, out_dir: Path) -> None:
    """Load ``file`` with transformers (model + tokenizer) and save a plain safetensors copy in ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(file.parent), file.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True, **_gguf_load_kwargs())
    _plain_copy_ready(model)
    model.save_pretrained(out_dir)
    del model
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    tokenizer.save_pretrained(out_dir)


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / SNAPSHOT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _reuse(final: Path, sha: str, file: Path) -> GGUFSnapshot | None:
    """The published snapshot for ``sha``, or None if there is none (or it is not ours)."""
    manifest = _read_manifest(final)
    if manifest is None or manifest.get("sha256") != sha:
        return None
    if not (final / "config.json").is_file() or not any(final.glob("*.safetensors")):
        return None  # emptied by hand: convert again
    quant = str(manifest.get("quant") or gguf_quant_name(file))
    return GGUFSnapshot(final, sha, quant, converted=False, seconds=float(manifest.get("seconds", 0.0)))


def _prune_leftovers(parent: Path, name: str) -> None:
    """Remove temp folders of earlier conversions of ``name`` that were killed mid-way.

    Safe only under the lock: nobody else builds ``name`` while we hold it.
    """
    for leftover in parent.glob(f"{TMP_PREFIX}{name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def ensure_gguf_snapshot(
    file: Path | str,
    *,
    home: Path | str | None = None,
    progress: bool = True,
    convert: Callable[[Path, Path], None] | None = None,
) -> GGUFSnapshot:
    """The safetensors snapshot of a GGUF file, converting it first if this file was never converted.

    ``convert`` is the heavy step (file, temp folder) -> files in the folder, :func:`convert_gguf`
    by default; replaceable so that how the copy is made can change without the publishing logic.
    """
    convert = convert or convert_gguf
    file = Path(file).resolve()
    home = runner_home(home)
    sha = gguf_sha256(file, home=home, progress=progress)
    root = snapshots_dir(home)
    final = root / sha
    found = _reuse(final, sha, file)
    if found is not None:
        logger.debug("reusing converted snapshot %s", final)
        return found

    def waiting() -> None:
        note(f"waiting for another process converting {file.name} into {final}", progress)

    with file_lock(root / f"{sha}.lock", on_wait=waiting):
        found = _reuse(final, sha, file)
        if found is not None:  # another process converted it while we waited
            return found
        _prune_leftovers(root, sha)
        if final.exists():  # not a snapshot of ours (no/foreign manifest): set it aside
            broken = root / f"{TMP_PREFIX}{sha}-broken-{int(time.time())}"
            final.rename(broken)
            shutil.rmtree(broken, ignore_errors=True)
        quant = gguf_quant_name(file)
        note(f"converting GGUF ({quant}) -> safetensors: {file} -> {final} (once; later runs reuse it)", progress)
        started = time.perf_counter()
        with atomic_dir(final) as tmp, _transformers_bars(progress):
            convert(file, tmp)
            seconds = time.perf_counter() - started
            folder_checksums(tmp, cache_file=tmp / CHECKSUMS_FILE)
            atomic_write_json(
                tmp / SNAPSHOT_MANIFEST,
                {
                    "sha256": sha,
                    "source_file": str(file),
                    "quant": quant,
                    "seconds": round(seconds, 3),
                    "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "transformers": _version("transformers"),
                    "torch": _version("torch"),
                },
            )
            _share_like(tmp / SNAPSHOT_MANIFEST, tmp)
        note(f"converted {file.name} in {seconds:.1f} s -> {final}", progress)
        return GGUFSnapshot(final, sha, quant, converted=True, seconds=seconds)


def _share_like(reference: Path, folder: Path) -> None:
    """Give every file in ``folder`` the permissions of ``reference`` (0666 & ~umask).

    Some savers create 0600 files; a RUNNER_HOME shared by several users needs them readable.
    """
    mode = reference.stat().st_mode & 0o777
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


@contextlib.contextmanager
def _transformers_bars(progress: bool) -> Iterator[None]:
    """Silence transformers' loading bars when the caller asked for no progress output."""
    if progress:
        yield
        return
    from transformers.utils import logging as tlog

    was_enabled = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            tlog.enable_progress_bar()


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
