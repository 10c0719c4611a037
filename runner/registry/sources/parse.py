"""Parsing a ``model.source`` string into a typed source: pure (no disk, no network).

:func:`parse_source` turns ``"hf:org/name@rev"`` into a frozen source object, or raises
:class:`~runner.registry.sources.kinds.SourceError` saying what is wrong and how to write it
instead, so job files can be checked without touching the disk or the network.
"""

from __future__ import annotations

import difflib
import keyword
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from runner.registry.sources.kinds import (
    SCHEMES,
    GGUFSource,
    HubSource,
    JobSource,
    LocalSource,
    ModelSource,
    PackageSource,
    RegistrySource,
    SourceError,
)

__all__ = ["parse_source"]

_EXPECTED = ", ".join(f"{s}:" for s in SCHEMES)

# Same shapes as the job spec's patterns (kept here: the registry must not depend on the spec).
_ALIAS = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Hub rules: letters, digits, '_', '-', '.'; no leading/trailing '-' or '.'; no '--' or '..'; <= 96.
_HUB_PART = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?$")


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
        raise _err(
            text, "empty revision after '@'", f"write 'hf:{repo}@REVISION' (branch, tag or commit) or drop the '@'"
        )
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
            raise _err(
                text, "no folder before '#'", f"write 'gguf:FOLDER#{name or 'FILE.gguf'}' or 'gguf:PATH/FILE.gguf'"
            )
        if not name or "/" in name or "\\" in name:
            raise _err(
                text,
                f"{name!r} is not a file name",
                "after '#' name the .gguf file inside the folder: 'gguf:FOLDER#FILE.gguf'",
            )
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
        raise _err(
            text, f"dotted package {package!r}", f"name the top-level package and the folder inside it: 'pkg:{fixed}'"
        )
    if not package.isidentifier() or keyword.iskeyword(package):
        raise _err(
            text,
            f"{package!r} is not a Python package name",
            "write 'pkg:PACKAGE[/SUBPATH]' with an importable top-level package",
        )
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
    if (
        not colon
        or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_+.-]*", scheme)
        or (len(scheme) == 1 and rest.startswith("\\"))
    ):
        raise _no_scheme(raw)
    if scheme not in _PARSERS:
        close = difflib.get_close_matches(scheme.lower(), SCHEMES, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}:{rest}'?)" if close else ""
        raise SourceError(f"unknown scheme {scheme!r} in {raw!r}; expected one of {_EXPECTED}{hint}")
    if not rest.strip():
        raise SourceError(f"nothing after '{scheme}:' in {raw!r}; write {_FORMS[scheme]}")
    base = Path(base_dir) if base_dir is not None else None
    return _PARSERS[scheme](raw, rest.strip(), base)
