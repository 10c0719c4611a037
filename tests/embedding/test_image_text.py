"""Image-text embedders end to end through `runner run`: a CLIP-style dual encoder and a Qwen2.5-VL
single tower (processor built without torchvision), 448 x 448 images, and bad images reported."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from runner.commands import main

from .helpers import metrics_of, only_run, status_of

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}


def _images(folder: Path) -> list[dict[str, str]]:
    """448 x 448 PNGs of coloured squares, text -> image and image -> text records."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        image = Image.new("RGB", (448, 448), "white")
        ImageDraw.Draw(image).rectangle((100, 100, 348, 348), fill=rgb)
        image.save(folder / f"{name}.png")
        rows.append({"image": f"{name}.png", "text": f"a {name} square"})
        rows.append({"query_image": f"{name}.png", "text": f"{name} square {i}"})
    return rows


@pytest.fixture
def image_job(write_job: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    def write(model_dir: Path, rows: list[dict[str, Any]] | None = None, **sections: dict[str, Any]) -> Path:
        good = _images(tmp_path / "images")
        spec: dict[str, dict[str, Any]] = {
            "model": {"source": f"local:{model_dir}", "kind": "image-text-embedding"},
            "data": {"format": "image-text", "image_root": "images", "image_size": 448},
            "train": {"max_steps": 2, "batch_size": 4, "save_every": 100},
        }
        for section, values in sections.items():
            spec.setdefault(section, {}).update(values)
        return write_job(rows=rows if rows is not None else good, eval_rows=good, **spec)

    return write


@pytest.mark.parametrize("model", ["tiny_clip", "tiny_qwen_vl"])
def test_image_text_job_runs_end_to_end(
    model: str,
    image_job: Callable[..., Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir = request.getfixturevalue(model)
    job = image_job(model_dir, loss={"symmetric": True})
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    run = only_run(runs)
    status = status_of(run)
    family = "dual" if model == "tiny_clip" else "vlm"
    assert status["extra"]["embedder"]["family"] == family and status["extra"]["data"]["format"] == "image-text"
    assert status["extra"]["embedder"]["pooling"] == ("tower" if family == "dual" else "mean")
    evals = [m for m in metrics_of(run) if "eval_ndcg@10" in m]
    assert [m["step"] for m in evals] == [0, 2]
    assert status["extra"]["data"]["train_examples"] == 8
    assert (run / "adapter" / "preprocessor_config.json").is_file()  # the processor travels with the adapter

    capsys.readouterr()
    image = tmp_path / "images" / "red.png"
    assert main(["embed", "tiny-embed", "--runs-dir", str(runs), "--text", "a red square", "--image", str(image)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["input"] for line in lines] == ["a red square", f"<image {image}>"]
    vectors = torch.tensor([line["embedding"] for line in lines])
    dim = 24 if family == "dual" else 32
    assert vectors.shape == (2, dim) and torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)


def test_the_vlm_sees_the_image_as_expanded_pad_tokens(
    tiny_qwen_vl: Path, write_job: Callable[..., Path], tmp_path: Path
) -> None:
    from runner.data.embedding import Item
    from runner.spec.loader import load_job
    from runner.train.embedder import build_embedder
    from runner.train.model import choose_device

    rows = _images(tmp_path / "images")
    job = load_job(
        write_job(
            rows=rows,
            model={"source": f"local:{tiny_qwen_vl}", "kind": "image-text-embedding"},
            data={"format": "image-text", "image_root": "images"},
        )
    )
    embedder, preprocess = build_embedder(tiny_qwen_vl, job.spec, choose_device(job.spec.model, job.spec.resources))
    features = preprocess([Item(image=tmp_path / "images" / "red.png"), Item(text="a red square")])
    image = features["image"]
    assert image["image_grid_thw"].tolist() == [[1, 32, 32]]  # 448 / 14 patches a side
    config = embedder.backbone.get_base_model().config
    assert int((image["input_ids"] == config.image_token_id).sum()) == 32 * 32 // 4  # 2 x 2 patches merged
    assert torch.equal(image["mm_token_type_ids"].bool(), image["input_ids"] == config.image_token_id)
    with torch.no_grad():
        both = embedder.encode(features)
        alone = embedder.encode(preprocess([Item(image=tmp_path / "images" / "red.png")]))
    assert torch.allclose(both[0], alone[0], atol=1e-5)  # mixed sides keep the items' order


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_a_corrupt_or_missing_image_is_a_row_error_with_file_line_and_path(
    policy: str, image_job: Callable[..., Path], tiny_clip: Path, tmp_path: Path
) -> None:
    good = _images(tmp_path / "images")
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    rows = [
        *good[:3],
        {"image": "corrupt.png", "text": "broken"},
        *good[3:],
        {"query_image": "nowhere.png", "text": "x"},
    ]
    job = image_job(tiny_clip, rows=rows, data={"on_bad_record": policy})
    runs = tmp_path / "runs"
    code = main(["run", str(job), "--runs-dir", str(runs)])
    status = status_of(only_run(runs))
    train = tmp_path / "train.jsonl"
    if policy == "error":
        assert code == 1 and status["reason"] == "data"
        assert f"{train}:4: 'image': image cannot be read: 'corrupt.png'" in status["error"]
        assert f"{train}:10: 'query_image': image not found: 'nowhere.png'" in status["error"]
    else:
        assert code == 0 and status["extra"]["data"]["bad_records_skipped"] == 2
        assert status["extra"]["data"]["train_examples"] == 8
