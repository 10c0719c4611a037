"""Speed switches are job settings ([train.speed]): in the schema, the spec hash and the manifest;
they change how fast a run trains, never what it learns; the environment no longer decides them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from runner.commands import main
from runner.machine import machine_switch, retired_settings
from runner.outputs.runs import list_runs
from runner.spec import load_job
from runner.spec.model import SpeedSection
from runner.spec.schema import job_schema

ALL_OFF = {
    "packed_attention": False,
    "loss_positions_only": False,
    "token_budget": 0,
    "data_cache": False,
    "shared_prompt": False,
    "lora_fold": False,
    "fused_optimizer": False,
    "padding_free_embeddings": False,
}


def _only_run(runs: Path) -> Path:
    (run,) = list_runs(runs, "tiny")
    return run


def test_the_speed_switches_default_to_on_and_are_documented_in_the_schema() -> None:
    assert SpeedSection().model_dump() == {
        "packed_attention": True,
        "loss_positions_only": True,
        "token_budget": 1024,
        "data_cache": True,
        "shared_prompt": True,
        "lora_fold": True,
        "fused_optimizer": True,
        "padding_free_embeddings": True,
    }
    speed = job_schema()["$defs"]["SpeedSection"]
    assert set(speed["properties"]) == set(ALL_OFF) and speed["additionalProperties"] is False
    assert all(p["description"] for p in speed["properties"].values())
    train = job_schema()["$defs"]["TrainSection"]["properties"]
    assert train["speed"]["$ref"] == "#/$defs/SpeedSection"


def test_a_speed_switch_changes_the_spec_hash(write_job: Callable[..., Path]) -> None:
    plain = load_job(write_job(name="plain"))
    switched = load_job(write_job(name="switched", train={"speed": {"token_budget": 512}}))
    assert switched.spec.train.speed.token_budget == 512 and plain.spec.train.speed.token_budget == 1024
    assert switched.sha256 != plain.sha256


def test_switched_off_the_run_learns_the_same_and_the_manifest_says_how_it_ran(
    write_job: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A packed run with every switch on and one with every switch off: same losses, same adapter."""
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))  # a data cache of this test's own
    results = {}
    for name, speed in (("on", {"token_budget": 8}), ("off", ALL_OFF)):  # a budget small enough to cut
        job = write_job(data={"packing": True}, train={"speed": speed}, adapter={"dropout": 0.0})
        runs = tmp_path / name
        cache = tmp_path / "home" / "data-cache"
        entries_before = set(cache.glob("*.npz")) if cache.exists() else set()
        assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
        run = _only_run(runs)
        manifest = json.loads((run / "manifest.json").read_text())
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        results[name] = (
            [m["loss"] for m in metrics if "loss" in m],
            load_file(run / "adapter" / "adapter_model.safetensors"),
        )
        assert manifest["spec"]["train"]["speed"] == {**SpeedSection().model_dump(), **speed}
        entries_after = set(cache.glob("*.npz")) if cache.exists() else set()
        if name == "on":
            assert manifest["runtime"]["packed_attention"] and len(entries_after - entries_before) == 1
            assert manifest["runtime"]["lora_fold"] == 2 * 7  # every linear layer of the 2-layer model
        else:
            assert "packed_attention" not in manifest["runtime"] and entries_after == entries_before
            assert "lora_fold" not in manifest["runtime"]
    (losses_on, adapter_on), (losses_off, adapter_off) = results["on"], results["off"]
    assert losses_on == pytest.approx(losses_off, rel=1e-4)
    assert adapter_on.keys() == adapter_off.keys()
    for key in adapter_on:
        assert torch.allclose(adapter_on[key], adapter_off[key], atol=1e-5), key


@pytest.mark.parametrize("checkpointing", [False, True], ids=["budget", "checkpointing"])
def test_the_recipe_passes_the_job_speed_settings_to_the_trainer_constructor(
    write_job: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpointing: bool
) -> None:
    import runner.train.causal_lm as recipe

    seen: dict[str, Any] = {}

    class Recording(recipe.CausalTrainer):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.update({k: kwargs[k] for k in ("loss_positions_only", "token_budget", "require_sharded")})
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(recipe, "CausalTrainer", Recording)
    job = write_job(
        data={"packing": True},
        train={
            "max_steps": 1,
            "gradient_checkpointing": checkpointing,
            "speed": {"loss_positions_only": False, "token_budget": 300},
        },
    )
    assert main(["run", str(job), "--runs-dir", str(tmp_path / "runs")]) == 0
    # gradient checkpointing bounds the memory already: no cut then
    assert seen == {
        "loss_positions_only": False,
        "token_budget": None if checkpointing else 300,
        "require_sharded": False,
    }


def test_a_retired_environment_switch_is_ignored_and_named_with_its_job_setting(
    write_job: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNNER_PACKED_ATTENTION", "0")
    job = write_job(data={"packing": True}, train={"max_steps": 1})
    assert main(["run", str(job), "--runs-dir", str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err
    assert (
        "RUNNER_PACKED_ATTENTION is no longer read: speed switches are job settings now; set "
        "train.speed.packed_attention in the job file"
    ) in err
    manifest = json.loads((_only_run(tmp_path / "runs") / "manifest.json").read_text())
    assert manifest["runtime"]["packed_attention"]  # the job decides, and it kept the default


def test_machine_settings_are_read_one_way() -> None:
    assert machine_switch("X", {}) is None and machine_switch("X", {"X": "  "}) is None
    assert machine_switch("X", {"X": "Off"}) is False and machine_switch("X", {"X": "0"}) is False
    assert machine_switch("X", {"X": "yes"}) is True
    assert machine_switch("X", {"X": " /usr/lib/libjemalloc.so.2 "}) == "/usr/lib/libjemalloc.so.2"
    assert retired_settings({"RUNNER_HOME": "/x", "RUNNER_JEMALLOC": "0"}) == []
    (line,) = retired_settings({"RUNNER_TOKEN_BUDGET": "0"})
    assert line.startswith("RUNNER_TOKEN_BUDGET is no longer read") and "train.speed.token_budget" in line


def test_the_throughput_benchmark_switches_speed_features_through_job_files_only() -> None:
    import importlib.util

    from runner.spec import parse_job

    path = Path(__file__).resolve().parents[2] / "bench" / "throughput.py"
    spec = importlib.util.spec_from_file_location("bench_throughput", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    off = {}
    for variant, (env, _) in bench.RUNNER_ABLATIONS.items():
        assert set(env) <= {"RUNNER_JEMALLOC"}, variant  # only the machine's allocator is an environment switch
        job = parse_job(bench.runner_job(variant).encode(), display=f"{variant}.toml", default_name="bench")
        off[variant] = {k for k, v in job.spec.train.speed.model_dump().items() if v != getattr(SpeedSection(), k)}
    assert off["runner"] == set() and off["runner-all-off"] == set(ALL_OFF)
    assert off["runner-dense-attention"] == {"packed_attention"} and off["runner-no-token-budget"] == {"token_budget"}
    assert off["runner-no-lora-fold"] == {"lora_fold"}
