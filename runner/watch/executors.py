"""The executors of one daemon: the one `--executor` names starts new attempts; an attempt a
previous daemon left is followed by the executor whose attempt it is (a Slurm job goes on being
followed through Slurm after a restart with `--executor local`, and the other way round).

Executors are made on first use, so a daemon that never meets a Slurm run never looks for Slurm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from runner.executors.base import Executor
from runner.executors.local import LocalExecutor
from runner.outputs.status import Status
from runner.slurm.executor import SlurmExecutor
from runner.watch.config import WatchConfig

__all__ = ["KINDS", "Executors"]

KINDS: dict[str, type[Executor]] = {"local": LocalExecutor, "slurm": SlurmExecutor}  # `--executor` choices
FALLBACK = "local"  # follows what no other kind claims (a process by pid, or one that is gone)


class Executors:
    def __init__(
        self, config: WatchConfig, log: Callable[[str], None], made: Mapping[str, Executor] | None = None
    ) -> None:
        if config.executor not in KINDS:
            raise ValueError(f"unknown executor {config.executor!r}; known: {', '.join(KINDS)}")
        self.config = config
        self.log = log
        self._made: dict[str, Executor] = dict(made or {})

    def get(self, name: str) -> Executor:
        if name not in self._made:
            self._made[name] = self._make(name)
        return self._made[name]

    @property
    def default(self) -> Executor:
        """The executor new attempts go to."""
        return self.get(self.config.executor)

    def made(self) -> list[Executor]:
        return list(self._made.values())

    def for_status(self, status: Status) -> Executor:
        """The executor whose attempt may be working on this run (adoption after a restart)."""
        name = next((name for name, kind in KINDS.items() if name != FALLBACK and kind.claims(status)), FALLBACK)
        return self.get(name)

    def _make(self, name: str) -> Executor:
        c = self.config
        common = {
            "runs_root": c.runs_root.absolute(),
            "python": c.python,
            "registry": c.registry,
            "allow_remote_code": c.allow_remote_code,
            "log": self.log,
        }
        if name == "slurm":
            return SlurmExecutor(poll=c.slurm_poll, **common)  # type: ignore[arg-type]
        return KINDS[name](**common)
