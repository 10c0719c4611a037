"""Which license a model is under, read where it is written down.

In order: ``config.json``, the model card (the Hub's README.md at the pinned commit, the folder's
own README.md, the origin folder's), the GGUF file's metadata, the metadata of the Python package
that ships the weights. Nothing here fails an import: a license that cannot be read stays unknown.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.paths import hub_cache_dir
from runner.registry.derived import read_snapshot_manifest
from runner.registry.sources import (
    GGUFSource,
    HubSource,
    LocalSource,
    ModelSource,
    PackageSource,
    ResolveContext,
    hub_offline,
)

__all__ = ["find_license"]


def _card_license(card: Path) -> str | None:
    try:
        from huggingface_hub.repocard import metadata_load

        meta = metadata_load(card) or {}
    except Exception:  # noqa: BLE001 - a malformed card only loses the license
        return None
    value = meta.get("license")
    if value == "other" and meta.get("license_name"):
        value = meta["license_name"]
    return str(value) if value else None


def _hub_card(src: HubSource, commit: str | None, ctx: ResolveContext) -> Path | None:
    """The repo's README.md (model card) at the commit: from the cache, else fetched unless offline."""
    from huggingface_hub import hf_hub_download

    kwargs: dict[str, Any] = {
        "repo_id": src.repo_id,
        "filename": "README.md",
        "revision": commit or src.revision,
        "cache_dir": hub_cache_dir(ctx.home),
    }
    for local_only in (True, False):
        if not local_only and hub_offline():
            return None
        try:
            return Path(hf_hub_download(**kwargs, local_files_only=local_only))
        except Exception:  # noqa: BLE001 - no card (or no network): the license stays unknown
            continue
    return None


def _dist_license(package: str) -> str | None:
    try:
        dists = importlib.metadata.packages_distributions().get(package) or []
        for dist in dists:
            meta = importlib.metadata.metadata(dist)
            found = [*(meta.get_all("License-Expression") or []), *(meta.get_all("License") or [])]
            value = next((str(v) for v in found if v), None)
            if value and len(value) < 80:
                return value
    except Exception:  # noqa: BLE001
        return None
    return None


def find_license(
    folder: Path, config: Mapping[str, Any], src: ModelSource | None, ctx: ResolveContext, revision: str | None
) -> tuple[str | None, str | None]:
    """(license, where it was read): config, model card, GGUF metadata, package metadata."""
    if config.get("license"):
        return str(config["license"]), "config.json"
    cards: list[Path] = []
    if isinstance(src, HubSource):
        card = _hub_card(src, revision, ctx)
        if card is not None:
            cards.append(card)
    cards.append(folder / "README.md")
    origin = _origin_folder(src)
    if origin is not None:
        cards.append(origin / "README.md")
    for card in cards:
        if card.is_file() and (value := _card_license(card)):
            return value, "model card"
    manifest = read_snapshot_manifest(folder) or {}
    gguf_file = manifest.get("source_file")
    if gguf_file and Path(gguf_file).is_file():
        try:
            from transformers.integrations.gguf.reader import read_gguf_metadata

            metadata, _ = read_gguf_metadata(str(gguf_file))
            if metadata.get("general.license"):
                return str(metadata["general.license"]), "GGUF metadata"
        except Exception:  # noqa: BLE001
            pass
    if isinstance(src, PackageSource) and (value := _dist_license(src.package)):
        return value, f"package metadata of {src.package}"
    return None, None


def _origin_folder(src: ModelSource | None) -> Path | None:
    if isinstance(src, LocalSource):
        return src.path
    if isinstance(src, PackageSource):
        import importlib.util

        spec = importlib.util.find_spec(src.package)
        if spec and spec.submodule_search_locations:
            base = Path(next(iter(spec.submodule_search_locations)))
            return base / src.subpath if src.subpath and (base / src.subpath).is_dir() else base
    if isinstance(src, GGUFSource):
        return src.folder
    return None
