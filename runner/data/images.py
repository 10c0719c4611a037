"""Images of image-text records: where a record's path points, whether the file is a usable image,
and how it is loaded for a model.

A record's image path is relative to `data.image_root` (default: the folder of the data file the
record came from) and must stay inside it: `../outside.png`, `/etc/hostname` or a symlink that
leads out are refused before anything is opened, with the same words whether or not such a file
exists (no file-existence oracle for whoever writes the records). A missing or corrupt image is a
*row* problem: `image_problem` returns the reason so the data stage can report a `BadRecord`
(file, line, path) under the on_bad_record policy, before any weights load. `load_image` decodes
and resizes to `image_size` x `image_size`.
"""

from __future__ import annotations

import os
from pathlib import Path

from runner.data.formats import RecordError
from runner.data.report import DataError

# What Pillow raises for files that are not images, are truncated, or fail their checksums.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


class ImageError(DataError):
    """An image that passed the data check but cannot be decoded when a batch is built."""


def resolve_image(value: str, root: Path) -> Path:
    """A record's image path under `root` (relative to it, or absolute inside it).

    Raises RecordError for a path that leads outside `root`, judged on the path as written and
    again after following symlinks; nothing is opened, and the message is the same whether or not
    the file exists.
    """
    if any(ord(char) < 32 or char == "\x7f" for char in value):
        raise RecordError(f"image path {value!r} holds a control character; a file name cannot")
    path = Path(value)  # no `~` expansion: a record names files under the image root, not a home
    candidate = Path(os.path.normpath(path if path.is_absolute() else root.absolute() / path))
    top = Path(os.path.normpath(root.absolute()))
    if not candidate.is_relative_to(top) or not Path(os.path.realpath(candidate)).is_relative_to(os.path.realpath(top)):
        raise RecordError(
            f"image path {value!r} leads outside the image folder (data.image_root, by default "
            "the data file's folder); keep images under it"
        )
    return candidate


def image_problem(path: Path, shown: str | None = None) -> str | None:
    """Why `path` is not a usable image (None if it is); messages name it as `shown` (the record's
    value) when given, so they do not reveal where the image folder is.

    `verify()` reads the whole file and checks its structure (PNG chunk CRCs, JPEG markers)
    without decoding pixels, so checking a dataset stays cheap.
    """
    from PIL import Image

    name = repr(shown) if shown is not None else str(path)
    if not path.is_file():
        return f"image not found: {name}"
    try:
        with Image.open(path) as image:
            image.verify()
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as exc:
        return f"image cannot be read: {name} ({type(exc).__name__})"
    return None


def load_image(path: Path, size: int) -> object:
    """The image at `path` as RGB, resized to size x size (a PIL image)."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as exc:
        raise ImageError(f"image cannot be decoded: {path} ({type(exc).__name__}: {exc})") from None
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image
