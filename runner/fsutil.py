"""Crash-safe file and folder writes.

A job can be killed at any instant (OOM killer, Ctrl-C, power loss), and the
daemon and `runner status` read our files while we write them.  Every file we
publish therefore goes through a temp sibling + fsync + ``os.replace``, so a
reader sees either the old content or the new one, never a torn mix.

Temp names start with :data:`TMP_PREFIX` (``.tmp-<name>-<random>``) so that
leftovers of a crash are recognisable and can be pruned.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "TMP_PREFIX",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_lock",
    "fsync_dir",
    "fsync_tree",
    "is_tmp_name",
    "tmp_sibling",
]

TMP_PREFIX = ".tmp-"


def is_tmp_name(name: str) -> bool:
    """True for names made by :func:`tmp_sibling`: leftovers, never real outputs."""
    return name.startswith(TMP_PREFIX)


def tmp_sibling(final_path: Path, tag: str = "") -> Path:
    """A fresh, unused-looking temp path next to ``final_path``.

    Same folder on purpose: ``os.replace`` is only atomic within one filesystem.
    """
    final_path = Path(final_path)
    middle = f"{final_path.name}-{tag}-" if tag else f"{final_path.name}-"
    return final_path.with_name(f"{TMP_PREFIX}{middle}{secrets.token_hex(4)}")


def fsync_dir(path: Path) -> None:
    """Persist a folder's entries (a rename is not durable until its folder is synced).

    Best effort: some platforms/filesystems cannot open or fsync a directory.
    """
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root``.

    Savers we do not control (torch.save, Trainer) do not fsync; without this a
    renamed-into-place checkpoint could still be empty after a power loss.
    """
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def digest_file(digest: Any, path: Path) -> None:
    """Feed a file's bytes to a hashlib digest in 1 MiB chunks; a file that cannot be read feeds
    `<missing>`, so a fingerprint still changes (and nothing raises) when a data file goes away."""
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        digest.update(b"<missing>")


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Replace ``path`` with ``data`` all-or-nothing.

    On any failure the previous file (if any) is untouched and the temp file is
    removed.  The new file gets normal permissions (0666 & ~umask), unlike
    ``tempfile.mkstemp``'s 0600, so other users can run ``runner status``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = tmp_sibling(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8") -> None:
    """Text flavour of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: Path | str, obj: Any, *, indent: int | None = 2) -> None:
    """Serialise first, then write: a non-serialisable object never touches the disk."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"
    atomic_write_text(path, text)


@contextmanager
def atomic_dir(final_path: Path | str, *, replace: bool = False, durable: bool = True) -> Iterator[Path]:
    """Build a folder under a temp name and publish it by rename: complete-or-absent.

    Yields a fresh temp sibling ``.tmp-<name>-<random>``.  On clean exit its
    content is fsynced (``durable``) and it is renamed to ``final_path``; on any
    exception (including KeyboardInterrupt) it is removed and nothing appears.

    ``replace=False`` (default): ``FileExistsError`` if ``final_path`` exists,
    checked on entry (fail before doing the work) and again before the rename.
    ``replace=True``: for idempotent re-saves; the old folder is first renamed
    to a temp name, then the new one moved in, then the old one deleted.  A crash
    in between leaves ``final_path`` absent (never half old, half new) and a
    ``.tmp-`` leftover that pruning removes.

    Single-writer: the existence checks are not race-free against another
    process publishing the same name concurrently.
    """
    final_path = Path(final_path)
    if not replace and final_path.exists():
        raise FileExistsError(f"{final_path} already exists")
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(final_path)
    tmp.mkdir()
    try:
        yield tmp
        if durable:
            fsync_tree(tmp)
        if final_path.exists():
            if not replace:
                raise FileExistsError(f"{final_path} already exists")
            old = tmp_sibling(final_path, "old")
            os.rename(final_path, old)
            try:
                os.rename(tmp, final_path)
            except BaseException:
                os.rename(old, final_path)  # put the previous save back
                raise
            fsync_dir(final_path.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final_path)
            fsync_dir(final_path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def file_lock(lock_path: Path | str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Exclusive advisory lock (flock) on ``lock_path``; released on exit or when the process dies.

    The lock file itself is left in place: deleting it would let a third process lock a new inode
    while a second one still waits on the old.  ``on_wait`` is called once if the lock is busy.
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no cross-process lock
        yield
        return
    with lock_path.open("a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
