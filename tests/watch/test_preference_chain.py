"""The classic pipeline as two job files under `runner watch`: an SFT job, then a DPO job whose
model is the SFT job's result (`job:<sft job>`); the DPO job waits for the SFT job, trains on its
merged result (which is also its reference, with the new adapter switched off) and shows its
preference metrics in `runner status`."""

from __future__ import annotations

import json
import signal

from runner.outputs.status import JobState

from .conftest import Project

PAIRS = [
    {
        "instruction": f"What is {i} + {i}?",
        "input": "",
        "chosen": f"{i} + {i} = {2 * i}.",
        "rejected": f"I cannot answer questions about {i}.",
    }
    for i in range(24)
]


def test_an_sft_job_then_a_dpo_job_on_its_result_run_one_after_the_other(project: Project) -> None:
    (project.root / "data" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    project.write("sft.toml", project.spec(steps=3))
    project.write(
        "dpo.toml",
        project.spec(
            steps=3,
            source="job:sft",
            data={"train": "../data/pairs.jsonl", "eval_fraction": 0.25},
            loss={"type": "dpo", "beta": 0.2},
        ),
    )
    daemon = project.start().wait_ready()
    project.wait_for(
        lambda: project.state("dpo") in (JobState.SUCCEEDED, JobState.FAILED), timeout=400, why="the DPO job to finish"
    )
    sft, dpo = project.latest("sft"), project.latest("dpo")
    assert sft.state is JobState.SUCCEEDED and dpo.state is JobState.SUCCEEDED, dpo.error
    assert sft.finished and dpo.started and dpo.started >= sft.finished
    manifest = json.loads((project.run_dirs("dpo")[-1] / "manifest.json").read_text())
    assert manifest["model"]["source"] == "job:sft"
    assert manifest["model"]["lineage"]["job"] == "sft"  # trained on the SFT run's merged result
    assert project.metrics_steps("dpo") == [1, 2, 3]
    assert dpo.extra["eval_metric"] == "reward_accuracy" and "reward_accuracy" in dpo.extra["eval_after"]

    shown = project.cli("status", "dpo")
    assert shown.returncode == 0, shown.stderr
    assert "reward accuracy" in shown.stdout
    daemon.signal_group(signal.SIGTERM)
    assert daemon.wait() == 0
