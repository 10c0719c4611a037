"""Embedding data: formats, field mapping, bad records with their locations, batches."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.data_loader import BatchSamplerShard

from runner.data.embedding import EmbeddingBatchSampler, Item, prepare_embedding_data, retrieval_set
from runner.data.report import BadRecordsError

from .helpers import write_jsonl


def test_formats_are_detected_and_aliases_accepted(tmp_path: Path) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": "a", "positive": "b"}] * 3)
    triplets = write_jsonl(tmp_path / "triplets.jsonl", [{"query": "a", "positive": "b", "negatives": ["c", "d"]}] * 3)
    scored = write_jsonl(tmp_path / "scored.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 4}] * 3)
    assert prepare_embedding_data([pairs]).train_report.format == "pairs"
    data = prepare_embedding_data([triplets])
    assert data.train_report.format == "triplets"
    assert data.train[0].negatives == (Item(text="c"), Item(text="d"))  # many hard negatives per record
    data = prepare_embedding_data([scored])
    assert data.train_report.format == "scored-pairs" and data.train[0].score == 4.0


def test_field_mapping_renames_columns(tmp_path: Path) -> None:
    rows = write_jsonl(tmp_path / "t.jsonl", [{"q_text": "where", "doc": "here", "neg": "there"}])
    data = prepare_embedding_data(
        [rows], format="triplets", fields={"query": "q_text", "positive": "doc", "negative": "neg"}
    )
    assert (data.train[0].query.text, data.train[0].positive.text, data.train[0].negatives[0].text) == (
        "where",
        "here",
        "there",
    )


def test_every_bad_record_is_reported_with_its_line(tmp_path: Path) -> None:
    rows = [
        {"query": "a", "positive": "b", "task": "search"},
        {"query": "a"},
        {"query": 3, "positive": "b", "task": "search"},
        {"query": "a", "positive": "b", "task": "chat"},
        {"query": "a", "positive": "b"},
    ]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(BadRecordsError) as caught:
        prepare_embedding_data([path], format="pairs", tasks=["search"])
    lines = str(caught.value).splitlines()
    assert lines[1].startswith(f"{path}:2: missing field") and "(positive)" in lines[1]
    assert lines[2] == f"{path}:3: 'query' is a int; expected a string"
    assert lines[3] == f"{path}:4: task 'chat' is not one of loss.tasks (search)"
    assert lines[4].startswith(f"{path}:5: missing 'task' label")
    skipped = prepare_embedding_data([path], format="pairs", tasks=["search"], on_bad_record="skip")
    assert len(skipped.train) == 1 and skipped.summary()["bad_records_skipped"] == 4 and skipped.tasks == {"search": 1}


def test_images_resolve_under_image_root_and_bad_ones_name_file_line_and_path(tmp_path: Path) -> None:
    from PIL import Image

    images = tmp_path / "pics"
    images.mkdir()
    Image.new("RGB", (8, 8), "red").save(images / "ok.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    path = write_jsonl(
        tmp_path / "it.jsonl",
        [
            {"image": "ok.png", "text": "red"},
            {"query_image": "ok.png", "caption": "red"},
            {"image": "broken.png", "text": "x"},
            {"image": "gone.png", "text": "y"},
            {"image": "ok.png"},
        ],
    )
    data = prepare_embedding_data([path], image_root=images, on_bad_record="skip")
    assert data.train_report.format == "image-text"
    text_to_image, image_to_text = data.train
    assert text_to_image.query == Item(text="red") and text_to_image.positive == Item(image=images / "ok.png")
    assert image_to_text.query == Item(image=images / "ok.png") and image_to_text.positive == Item(text="red")
    reasons = [str(b) for b in data.train_report.bad_records]
    assert reasons[0].startswith(f"{path}:3: 'image': image cannot be read: 'broken.png'")
    assert reasons[1] == f"{path}:4: 'image': image not found: 'gone.png'"
    assert reasons[2].startswith(f"{path}:5: an image-text record needs a text field")


def test_eval_fraction_and_retrieval_set(tmp_path: Path) -> None:
    rows = [{"query": f"q{i % 3}", "positive": f"d{i}", "negative": "shared"} for i in range(6)]
    data = prepare_embedding_data([write_jsonl(tmp_path / "t.jsonl", rows)], eval_fraction=0.5, seed=1)
    assert len(data.train) == 3 and len(data.eval) == 3
    full = retrieval_set(prepare_embedding_data([tmp_path / "t.jsonl"]).train)
    assert [q.text for q in full.queries] == ["q0", "q1", "q2"]
    assert [d.text for d in full.corpus] == ["d0", "shared", "d1", "d2", "d3", "d4", "d5"]  # negatives join the corpus
    assert full.relevant == [{0, 4}, {2, 5}, {3, 6}]  # q0 <- d0, d3; q1 <- d1, d4; q2 <- d2, d5


def _examples(tmp_path: Path, rows: list[dict[str, str]], tasks: list[str] | None = None):
    return prepare_embedding_data([write_jsonl(tmp_path / "s.jsonl", rows)], tasks=tasks).train


def test_batches_avoid_repeated_texts_and_keep_their_count(tmp_path: Path) -> None:
    rows = [{"query": f"q{i % 4}", "positive": f"d{i}"} for i in range(16)]  # each query 4 times
    examples = _examples(tmp_path, rows)
    sampler = EmbeddingBatchSampler(examples, 4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    assert sorted(i for b in batches for i in b) == list(range(16))
    for batch in batches:
        assert len({examples[i].query.text for i in batch}) == 4  # no query twice: no false negatives
    sampler.set_epoch(1)
    assert list(sampler) != batches and sorted(i for b in sampler for i in b) == list(range(16))


def test_each_batch_holds_one_task_and_all_ranks_share_the_task_of_a_step(tmp_path: Path) -> None:
    rows = [{"query": f"q{i}", "positive": f"d{i}", "task": "a" if i % 3 else "b"} for i in range(30)]
    examples = _examples(tmp_path, rows, tasks=["a", "b"])
    sampler = EmbeddingBatchSampler(examples, 3, world_size=2, seed=0)
    shards = [list(BatchSamplerShard(sampler, num_processes=2, process_index=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(sampler) // 2
    for step in zip(*shards, strict=True):
        tasks = [{examples[i].task for i in batch} for batch in step]
        assert all(len(t) == 1 for t in tasks) and tasks[0] == tasks[1]
    seen = sorted(i for shard in shards for batch in shard for i in batch)
    assert seen == list(range(30))


def test_data_validate_checks_an_embedding_job_with_the_recipe_checks(
    write_job, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.commands import main

    rows = [{"query": "a", "positive": "b", "task": "search"}, {"query": "c", "positive": "d", "task": "chat"}]
    job = write_job(rows=rows, loss={"type": "multi-task", "tasks": {"search": {}}})
    assert main(["data", "validate", "--job", str(job)]) == 1
    out = capsys.readouterr().out
    assert "format: pairs" in out and "2 read, 1 usable, 1 bad" in out
    assert f"{tmp_path / 'train.jsonl'}:2: task 'chat' is not one of loss.tasks (search)" in out


def test_embedding_records_no_format_fits_are_refused_naming_their_keys_and_the_fix() -> None:
    from runner.data.embedding import detect_format
    from runner.data.report import DataError

    with pytest.raises(DataError, match=r"cannot detect the embedding data format: .*\['body', 'id'\].*data.fields"):
        detect_format([{"id": 1, "body": "x"}])
    fmt, reason = detect_format([{"query": "q", "positive": "p"}] * 2 + [{"sentence1": "a", "sentence2": "b"}])
    assert fmt == "pairs" and reason.endswith("(2 of 3 sampled records)")
