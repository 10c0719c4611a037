"""The ``hf:`` resolver: a Hugging Face Hub snapshot, from the cache first, downloaded if needed.

Only the model files are fetched (:data:`HUB_ALLOW_PATTERNS`, the same patterns that are
hashed); offline (``HF_HUB_OFFLINE``) a missing or incomplete snapshot is an error that says so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from runner.paths import hub_cache_dir
from runner.registry.checksums import MODEL_FILE_PATTERNS, folder_checksums
from runner.registry.gguf_convert import note
from runner.registry.sources.folders import model_folder_problem
from runner.registry.sources.kinds import HubSource, ResolvedModel, SourceError
from runner.registry.sources.resolve import ResolveContext, register_resolver

__all__ = ["HUB_ALLOW_PATTERNS", "HUB_IGNORE_PATTERNS", "hub_offline"]

_COMMIT = re.compile(r"^[0-9a-f]{40}$")

# Hub download filter: the model files only (no pickles, ONNX, GGUF, checkpoints in sub-folders).
HUB_ALLOW_PATTERNS: tuple[str, ...] = MODEL_FILE_PATTERNS
HUB_IGNORE_PATTERNS: tuple[str, ...] = ("*/*.safetensors", "*/*.safetensors.index.json")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), read now rather than when huggingface_hub was imported."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _silent_tqdm() -> type:
    from tqdm.auto import tqdm

    class SilentTqdm(tqdm):  # type: ignore[type-arg]  # generic in its stubs only: tqdm[Any] fails at run time
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm


def _hub_listing(repo_id: str, commit: str, cache: Path) -> set[str]:
    """File names of the repo at ``commit`` as last listed by the Hub (cached tree), or empty."""
    try:
        from huggingface_hub import get_cached_repo_tree

        return {f.path for f in get_cached_repo_tree(repo_id, revision=commit, cache_dir=cache)}
    except Exception:  # noqa: BLE001 - the listing only sharpens an error message
        return set()


def _resolve_hub(src: HubSource, ctx: ResolveContext) -> ResolvedModel:
    import huggingface_hub
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    source = str(src)
    cache = hub_cache_dir(ctx.home)
    kwargs: dict[str, Any] = {
        "repo_id": src.repo_id,
        "revision": src.revision,
        "cache_dir": cache,
        "allow_patterns": list(HUB_ALLOW_PATTERNS),
        "ignore_patterns": list(HUB_IGNORE_PATTERNS),
        "tqdm_class": None if ctx.progress else _silent_tqdm(),
    }

    def problem_of(folder: Path) -> str | None:
        return model_folder_problem(folder, source, _hub_listing(src.repo_id, folder.name, cache))

    folder: Path | None = None
    problem: str | None = None
    try:  # the cache first: no network call at all when the snapshot is there
        folder = Path(huggingface_hub.snapshot_download(**kwargs, local_files_only=True))
        problem = problem_of(folder)
    except LocalEntryNotFoundError:  # includes IncompleteSnapshotError
        pass

    if folder is None or problem is not None:
        if hub_offline():
            if folder is None:
                raise SourceError(
                    f"{source}: not in the cache and offline (HF_HUB_OFFLINE is set); run with network "
                    f"or import it first (cache: {cache})"
                )
            raise SourceError(f"{problem} (offline, so it cannot be completed; cache: {cache})")
        try:
            if ctx.before_download is not None:
                plan = huggingface_hub.snapshot_download(**kwargs, dry_run=True)
                todo = [f for f in plan if f.will_download]
                ctx.before_download(source, sum(f.file_size or 0 for f in todo), len(todo))
            note(f"{source}: downloading into {cache}", ctx.progress)
            folder = Path(huggingface_hub.snapshot_download(**kwargs))
        except RevisionNotFoundError as exc:
            raise SourceError(
                f"{source}: revision {src.revision!r} not found on the Hub; check the branch, tag or commit"
            ) from exc
        except (RepositoryNotFoundError, GatedRepoError) as exc:
            raise SourceError(
                f"{source}: repository not found, private or gated; check the name, or log in "
                "(HF_TOKEN / `hf auth login`) with access to it"
            ) from exc
        except LocalEntryNotFoundError as exc:  # the Hub could not be reached and nothing is cached
            raise SourceError(
                f"{source}: not in the cache and the Hub cannot be reached; run with network or import it first "
                f"(cache: {cache})"
            ) from exc
        except HfHubHTTPError as exc:
            raise SourceError(f"{source}: the Hub refused the download ({exc})") from exc
        problem = problem_of(folder)
        if problem is not None:
            raise SourceError(problem)

    commit = folder.name
    files = folder_checksums(folder, cache_file=ctx.checksum_cache(folder), progress=ctx.progress)
    return ResolvedModel(
        path=folder,
        source=source,
        revision=commit if _COMMIT.match(commit) else None,
        files=files,
        format_note="Hugging Face Hub snapshot",
    )


register_resolver(HubSource, _resolve_hub)
