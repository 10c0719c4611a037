"""What a killed attempt leaves half-written in a run folder is found and removed; results stay."""

from __future__ import annotations

from pathlib import Path

from runner.outputs.checkpoints import list_checkpoints, new_checkpoint
from runner.outputs.leftovers import find_leftovers, remove_leftovers
from runner.outputs.runs import new_run_dir, run_paths
from runner.outputs.status import StatusFile, new_status


def test_staging_and_temp_names_are_removed_and_results_are_kept(tmp_path: Path) -> None:
    run = new_run_dir(tmp_path, "job")
    StatusFile(run_paths(run).status).create(new_status("job", run.name))
    with new_checkpoint(run / "checkpoints", 4) as folder:
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"final")
    (run / ".slurm").mkdir()
    (run / ".slurm" / "attempt-1.sh").write_text("#!/bin/sh\n")
    debris = [
        ".trainer/checkpoint-8/optimizer.pt",
        ".tmp-adapter-1a2b3c4d/adapter_model.safetensors",
        ".tmp-adapter-old-5e6f7a8b/adapter_config.json",
        ".tmp-status.json-0badc0de",
        "checkpoints/.tmp-step-8-12345678/model.bin",
        ".slurm/.tmp-attempt-2.sh-abcdef12",
    ]
    for name in debris:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(b"half")

    assert sorted(p.relative_to(run).as_posix() for p in find_leftovers(run)) == sorted(
        [
            ".tmp-adapter-1a2b3c4d",
            ".tmp-adapter-old-5e6f7a8b",
            ".tmp-status.json-0badc0de",
            ".trainer",
            ".slurm/.tmp-attempt-2.sh-abcdef12",
            "checkpoints/.tmp-step-8-12345678",
        ]
    )
    removed = remove_leftovers(run)
    assert ".trainer" in removed and ".tmp-adapter-1a2b3c4d" in removed
    kept = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    assert not [p for p in kept if ".tmp-" in p or p.startswith(".trainer")]
    assert "adapter/adapter_model.safetensors" in kept and ".slurm/attempt-1.sh" in kept and "status.json" in kept
    assert [c.step for c in list_checkpoints(run / "checkpoints") if c.complete] == [4]
    assert remove_leftovers(run) == [], "nothing left to remove the second time"
