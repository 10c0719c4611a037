"""metrics.jsonl: an append-only log that survives a crash mid-line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.outputs.metrics import MetricsFormatError, MetricsLog


def write_steps(path: Path, steps: range) -> None:
    with MetricsLog(path) as log:
        for s in steps:
            log.append({"step": s, "loss": 1.0 / s})


def test_records_come_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_steps(path, range(1, 4))
    assert [r["step"] for r in MetricsLog(path).read()] == [1, 2, 3]
    assert all(json.loads(line) for line in path.read_text().splitlines()), "one JSON object per line"


def test_each_append_is_visible_to_readers_without_closing(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    writer = MetricsLog(path)
    writer.append({"step": 1, "loss": 2.0})
    assert MetricsLog(path).read() == [{"step": 1, "loss": 2.0}]
    writer.close()


def test_missing_log_reads_as_empty(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    assert log.read() == [] and log.last_step() is None


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_steps(path, range(1, 3))
    with open(path, "ab") as f:
        f.write(b'{"step": 3, "lo')  # the process died here
    log = MetricsLog(path)
    assert [r["step"] for r in log.read()] == [1, 2]
    assert log.last_step() == 2


def test_resumed_writer_trims_the_torn_line_so_the_log_stays_valid(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_steps(path, range(1, 3))
    with open(path, "ab") as f:
        f.write(b'{"step": 3, "lo')
    with MetricsLog(path) as log:
        log.append({"step": 3, "loss": 0.3})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_record_whose_newline_was_lost_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}')
    assert MetricsLog(path).last_step() == 2
    with MetricsLog(path) as log:
        log.append({"step": 3})
    assert [r["step"] for r in MetricsLog(path).read()] == [1, 2, 3]


def test_corruption_before_the_last_line_is_an_error_not_silently_skipped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nGARBAGE\n{"step": 3}\n')
    with pytest.raises(MetricsFormatError, match=":2:"):
        MetricsLog(path).read()


def test_since_step_returns_only_newer_steps(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        for rec in ({"step": 1}, {"event": "eval-start"}, {"step": 2}, {"step": 3}):
            log.append(rec)
    log = MetricsLog(path)
    assert [r.get("step") for r in log.read(since_step=1)] == [2, 3]
    assert log.read(since_step=3) == []
    assert {"event": "eval-start"} in log.read(), "records without a step are kept in a full read"


def test_last_step_is_the_highest_step(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        for rec in ({"step": 5}, {"step": 9}, {"event": "done"}):
            log.append(rec)
    assert MetricsLog(path).last_step() == 9


def test_unserialisable_record_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        log.append({"step": 1})
        with pytest.raises(TypeError):
            log.append({"step": 2, "tensor": object()})
    assert MetricsLog(path).read() == [{"step": 1}]


def test_nan_loss_is_logged_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        log.append({"step": 1, "loss": float("nan")})
    loss = MetricsLog(path).read()[0]["loss"]
    assert loss != loss  # NaN


def test_rewind_drops_steps_after_the_resume_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_steps(path, range(1, 8))
    log = MetricsLog(path)
    assert log.rewind_to(4) == 3
    assert log.last_step() == 4
    log.append({"step": 5, "loss": 0.1})
    log.close()
    assert [r["step"] for r in MetricsLog(path).read()] == [1, 2, 3, 4, 5]


def test_tensor_like_scalars_are_logged_as_numbers(tmp_path: Path) -> None:
    class FakeScalar:  # what torch.Tensor / numpy scalars look like to us
        def item(self) -> float:
            return 0.25

    with MetricsLog(tmp_path / "metrics.jsonl") as log:
        log.append({"step": 1, "grad_norm": FakeScalar()})
    assert MetricsLog(tmp_path / "metrics.jsonl").read() == [{"step": 1, "grad_norm": 0.25}]
