"""A run's stop request: a signal asks for "checkpoint now, then stop", the trainer obeys at the
next step boundary.

Kept apart from the trainer (runner.train.trainers) so that what a recipe is handed
(runner.train.context) does not depend on the Trainer, and the processes that only forward signals
(the torchrun parent in runner.train.launch) never import it.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runner.train import distributed


@dataclass
class StopRequest:
    """Set from a signal handler; read by the Trainer loop at the next step boundary."""

    requested: bool = False
    signal_name: str | None = None

    def install(self) -> Callable[[], None]:
        """Route SIGTERM/SIGINT here for the duration of training; returns an undo function."""
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum: int, _frame: Any) -> None:
            if self.requested and signum == signal.SIGINT:  # a second Ctrl-C means "now"
                raise KeyboardInterrupt
            self.requested = True
            self.signal_name = signal.Signals(signum).name
            print(f"\n{self.signal_name} received: saving a checkpoint, then stopping", file=sys.stderr, flush=True)

        for sig in previous:
            signal.signal(sig, handler)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    def agreed(self) -> bool:
        """Whether any rank was asked to stop; every rank must call it at the same point (one
        all-reduce when several processes train, a plain read otherwise)."""
        if distributed.any_rank(self.requested) and not self.requested:
            self.requested = True
            self.signal_name = self.signal_name or "SIGTERM (on another rank)"
        return self.requested
