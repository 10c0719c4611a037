"""Images of image-text records: where a record's path points, whether the file is a usable image,
and how it is loaded for a model.

A record's image path is relative to `data.image_root` (default: the folder of the data file the
record came from). A missing or corrupt image is a *row* problem: `image_problem` returns the
reason so the data stage can report a `BadRecord` (file, line, path) under the on_bad_record
policy, before any weights load. `load_image` decodes and resizes to `image_size` x `image_size`.
"""

from __future__ import annotations

from pathlib import Path

from runner.data.report import DataError

# What Pillow raises for files that are not images, are truncated, or fail their checksums.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


class ImageError(DataError):
    """An image that passed the data check but cannot be decoded when a batch is built."""


def resolve_image(value: str, root: Path) -> Path:
    """A record's image path: absolute as given, else relative to `root`."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def image_problem(path: Path) -> str | None:
    """Why `path` is not a usable image (None if it is).

    `verify()` reads the whole file and checks its structure (PNG chunk CRCs, JPEG markers)
    without decoding pixels, so checking a dataset stays cheap.
    """
    from PIL import Image

    if not path.is_file():
        return f"image not found: {path}"
    try:
        with Image.open(path) as image:
            image.verify()
    except (*_DECODE_ERRORS, Image.DecompressionBombError) as exc:
        return f"image cannot be read: {path} ({type(exc).__name__}: {exc})"
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
