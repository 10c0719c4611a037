"""What the pipeline hands a training recipe, and what a recipe hands back.

Every recipe (runner.train.recipes lists them) takes a RunContext and returns a TrainOutcome, so
the pipeline drives them all the same way and owns the state transitions around them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.outputs.metrics import MetricsLog
from runner.outputs.status import StatusFile
from runner.spec.loader import LoadedJob
from runner.train.model import DeviceChoice
from runner.train.stop import StopRequest


@dataclass
class RunContext:
    """What the pipeline hands a recipe: the job, where to write, and how to stop."""

    job: LoadedJob
    run_dir: Path
    model_path: Path
    model_info: dict[str, Any]
    status: StatusFile
    metrics: MetricsLog
    stop: StopRequest
    resume_from: Path | None = None
    plain_logs: bool = field(default_factory=lambda: not sys.stderr.isatty())


@dataclass
class TrainOutcome:
    interrupted: bool
    global_step: int
    total_steps: int
    eval_loss_before: float | None
    eval_loss_after: float | None
    trainable_params: int
    total_params: int
    device: DeviceChoice
    data: dict[str, Any]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
