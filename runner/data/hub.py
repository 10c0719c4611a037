"""Read a Hub data set (``hf:ORG/NAME[@REVISION][?split=...&subset=...]``) through ``datasets``.

``datasets.load_dataset`` does the work and keeps its own cache (``HF_DATASETS_CACHE``, by default
``~/.cache/huggingface/datasets``): a data set read once is read from there again, and with no
network (or ``HF_HUB_OFFLINE=1``) it falls back to the newest cached copy of that data set and
split. That fallback cannot tell revisions apart: a pinned ``@REVISION`` is honoured when the
Hub is reachable. ``datasets`` is an optional dependency (the ``hub`` extra), imported only
here, so reading JSON, text or CSV never needs it.

Rows become records located as ``hf:ORG/NAME?split=train[index]``. Image, audio and video columns
are not decoded (a text model does not read them; the record keeps their file reference).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from runner.data.records import DataFileError, ReadResult, Record
from runner.data.report import BadRecord, Location
from runner.data.tables import non_finite
from runner.fsutil import digest_file
from runner.spec.data_source import DataSourceError, HubDataSource, parse_hub_data

INSTALL_HINT = "pip install 'runner[hub]' (or pip install datasets)"


def read_hub(text: str) -> ReadResult:
    """Every row of one split of a Hub data set, located by its index."""
    source = _parse(text)
    dataset = load(source)
    name = str(source)
    result = ReadResult()
    for index, row in enumerate(dataset):
        location = Location(name, index=index)
        reason = non_finite(row)
        if reason is not None:
            result.bad.append(BadRecord(location, reason))
        else:
            result.records.append(Record(dict(row), location))
    if not result.records and not result.bad:
        raise DataFileError(name, f"split '{source.split}' holds no rows", "name another split with ?split=...")
    return result


def hub_fingerprint(text: str) -> str:
    """sha256 of the cached Arrow files that hold the split: changes when the data does."""
    source = _parse(text)
    dataset = load(source)
    digest = hashlib.sha256(str(source).encode())
    for entry in dataset.cache_files:
        digest_file(digest, Path(entry["filename"]))
    return digest.hexdigest()


def load(source: HubDataSource) -> Any:
    """The split as a `datasets.Dataset` (media columns left undecoded); DataFileError on failure."""
    datasets = _datasets()
    name = str(source)
    try:
        dataset = datasets.load_dataset(source.repo_id, source.subset, split=source.split, revision=source.revision)
    except ConnectionError as exc:
        raise DataFileError(
            name,
            f"not in the datasets cache, and the Hub cannot be reached ({_first_line(exc)})",
            "read it once with network access (it is cached then), or point HF_DATASETS_CACHE at a cache that holds it",
        ) from None
    except (ValueError, KeyError) as exc:  # unknown split or subset, missing config name
        raise DataFileError(
            name, _first_line(exc), "name a split and subset the data set has (?split=...&subset=...)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds (not found, gated, bad files)
        raise DataFileError(
            name,
            f"cannot be loaded: {type(exc).__name__}: {_first_line(exc)}",
            "check the data set's id, revision and access rights",
        ) from None
    media = [
        column
        for column, feature in dataset.features.items()
        if type(feature).__name__ in ("Image", "Audio", "Video") and getattr(feature, "decode", False)
    ]
    for column in media:
        dataset = dataset.cast_column(column, type(dataset.features[column])(decode=False))
    return dataset


def _parse(text: str) -> HubDataSource:
    try:
        return parse_hub_data(text)
    except DataSourceError as exc:
        raise DataFileError(text, str(exc), "fix the data source in the job file") from None


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataFileError(
            "hf:", "Hub data sets are read with the 'datasets' library, which is not installed", INSTALL_HINT
        ) from None
    return datasets


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
