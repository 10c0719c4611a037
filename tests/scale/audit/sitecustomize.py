"""Test-only: in a torchrun worker (RANK set) with RUNNER_AUDIT_ROOT set, record every file write,
folder creation, rename and removal under that root, and write the list to
RUNNER_AUDIT_LOG_DIR/rank-N.log at exit. Proves which ranks write a run's files.

It sees Python-level file operations (open, os.*, shutil); torch.save and safetensors write
through native code, but every save of ours first creates its folder or a sibling file in Python.
"""

from __future__ import annotations

import atexit
import os
import sys

_ROOT = os.environ.get("RUNNER_AUDIT_ROOT")
_LOGS = os.environ.get("RUNNER_AUDIT_LOG_DIR")
_RANK = os.environ.get("RANK")

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_EVENTS = {
    "os.mkdir",
    "os.rename",
    "os.remove",
    "os.rmdir",
    "shutil.rmtree",
    "os.truncate",
    "os.symlink",
    "os.link",
    "os.chmod",
    "os.utime",
}


def _under_root(path: object) -> bool:
    if isinstance(path, bytes):
        path = path.decode(errors="replace")
    if not isinstance(path, str):
        return False
    return os.path.abspath(path).startswith(os.path.abspath(_ROOT or "/nonexistent") + os.sep)


if _ROOT and _LOGS and _RANK is not None:
    _seen: list[str] = []

    def _hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = ((*tuple(args), None, None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
            )
            if writing and _under_root(path):
                _seen.append(f"open {path}")
        elif event in _EVENTS and args:
            path = args[0]
            if event == "os.mkdir" and isinstance(path, (str, bytes)) and os.path.isdir(path):
                return  # makedirs(exist_ok=True) of a folder that exists creates nothing
            if _under_root(path) or (event == "os.rename" and len(args) > 1 and _under_root(args[1])):
                _seen.append(f"{event} {path}")

    def _write() -> None:
        with open(os.path.join(_LOGS, f"rank-{_RANK}.log"), "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in _seen))

    sys.addaudithook(_hook)
    atexit.register(_write)
