"""`runner.cli:main`, the entry point that installs made before the commands moved to
runner.commands still name in their `runner` script; the same function."""

from runner.commands import main

__all__ = ["main"]
