"""Paths in requests must lie under the allowed data roots.

A key-holder can already run jobs, but the API should not become a way to read any file the
daemon's user can read (`/etc/shadow` as "training data", then `generate`). So every path a
request names, directly (`/datasets/validate`) or inside a submitted job file (data files, the
image folder, a `local:` or `gguf:` model), is resolved (symlinks followed, `..` collapsed) and
must fall under one of the roots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.spec import LoadedJob, SpecIssue
from runner.spec.errors import dotted
from runner.spec.positions import SourceMap

__all__ = ["BadPath", "OutsideRoots", "check_path_text", "confine", "job_paths_outside"]


class BadPath(ValueError):
    """A path no file can have: a NUL byte, text that is not Unicode, or far too long."""


def check_path_text(text: str, shown: str | None = None) -> None:
    """`BadPath` for path text that would make the filesystem calls fail (not a 500: a clear 4xx)."""
    what = shown if shown is not None else repr(text[:200])
    if "\x00" in text:
        raise BadPath(f"path {what} contains a NUL byte; no file name can")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadPath(f"path {what} is not valid Unicode (it holds a lone surrogate such as \\ud800)") from None
    if len(encoded) > 4096:
        raise BadPath(f"path {what[:60]}... is {len(encoded)} bytes long; paths are at most 4096")


@dataclass
class OutsideRoots(Exception):
    path: str
    roots: tuple[Path, ...]

    def __str__(self) -> str:
        return (
            f"{self.path} is outside the allowed data roots ({', '.join(map(str, self.roots))}); "
            "put the file under one of them, or start the API with --api-data-root FOLDER"
        )


def confine(path: Path, roots: Sequence[Path], *, shown: str | None = None) -> Path:
    """The resolved path if it is under one of `roots` (already resolved); `OutsideRoots` if not,
    `BadPath` for text no file can have. Decided on the path alone, whether or not a file is there."""
    check_path_text(str(path), shown)
    resolved = path.expanduser().resolve()
    if any(resolved == root or resolved.is_relative_to(root) for root in roots):
        return resolved
    raise OutsideRoots(shown or str(path), tuple(roots))


def _named_paths(job: LoadedJob) -> list[tuple[tuple[str | int, ...], Path]]:
    """Every file or folder a job file names, with the key path it is written at."""
    from runner.registry.sources import GGUFSource, LocalSource, SourceError, parse_source

    found: list[tuple[tuple[str | int, ...], Path]] = []
    data = found_data if isinstance(found_data := job.raw.get("data"), dict) else {}
    for key in ("train", "eval"):
        value = data.get(key)
        items = (
            [(("data", key), value)]
            if isinstance(value, str)
            else [(("data", key, i), item) for i, item in enumerate(value or []) if isinstance(item, str)]
        )
        # an hf: data set is not a path here: it is read from the datasets cache (or the Hub)
        found.extend((where, job.resolve_path(item)) for where, item in items if not item.startswith("hf:"))
    if isinstance(data.get("image_root"), str):
        found.append((("data", "image_root"), job.resolve_path(data["image_root"])))
    try:
        source = parse_source(job.spec.model.source, base_dir=job.path.parent)
    except SourceError:
        source = None
    if isinstance(source, LocalSource):
        found.append((("model", "source"), source.path))
    elif isinstance(source, GGUFSource):
        found.append((("model", "source"), source.folder / source.filename))
    return found


def job_paths_outside(
    job: LoadedJob, text: str, display: str, roots: Sequence[Path], located: int = 100
) -> list[SpecIssue]:
    """One issue per path of the job that lies outside the roots (or is no usable path); the first
    `located` carry their line and column (an answer lists no more than that)."""
    positions = SourceMap(text)
    issues: list[SpecIssue] = []
    for where, path in _named_paths(job):
        try:
            confine(path, roots)
            continue
        except OutsideRoots as exc:
            message = str(OutsideRoots(str(path), exc.roots))
        except BadPath as exc:
            message = str(exc)
        at = positions.value(where) if len(issues) < located else None
        issues.append(SpecIssue(display, at.line if at else 1, at.column if at else 1, dotted(where), message))
    return issues
