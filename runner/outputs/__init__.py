"""A run's on-disk outputs: status, metrics, checkpoints, manifest, run folders.

Light on purpose (no torch): ``runner status`` imports this to read runs.
"""

from runner.outputs.checkpoints import (
    COMPLETE_MARKER,
    CheckpointInfo,
    find_resume_point,
    latest_complete,
    list_checkpoints,
    mark_complete,
    new_checkpoint,
    prune,
)
from runner.outputs.manifest import (
    build_manifest,
    git_info,
    package_versions,
    read_manifest,
    sha256_json,
    write_manifest,
)
from runner.outputs.metrics import MetricsFormatError, MetricsLog
from runner.outputs.runs import (
    RunPaths,
    find_interrupted_run,
    is_pid_alive,
    latest_run,
    list_runs,
    new_run_dir,
    new_run_id,
    read_status,
    run_paths,
    runs_root,
)
from runner.outputs.status import (
    TERMINAL_STATES,
    TRANSITIONS,
    FailureClass,
    IllegalTransition,
    JobState,
    Status,
    StatusFile,
    StatusFormatError,
    new_status,
    transition,
    with_progress,
)

__all__ = [
    "COMPLETE_MARKER",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "CheckpointInfo",
    "FailureClass",
    "IllegalTransition",
    "JobState",
    "MetricsFormatError",
    "MetricsLog",
    "RunPaths",
    "Status",
    "StatusFile",
    "StatusFormatError",
    "build_manifest",
    "find_interrupted_run",
    "find_resume_point",
    "git_info",
    "is_pid_alive",
    "latest_complete",
    "latest_run",
    "list_checkpoints",
    "list_runs",
    "mark_complete",
    "new_checkpoint",
    "new_run_dir",
    "new_run_id",
    "new_status",
    "package_versions",
    "prune",
    "read_manifest",
    "read_status",
    "run_paths",
    "runs_root",
    "sha256_json",
    "transition",
    "with_progress",
    "write_manifest",
]
