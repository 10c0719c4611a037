"""`runner embed`: vectors from a finished embedding job (base model + its adapter(s)).

    runner embed jobs/quickstart-embed.toml --text "capital city of Peru" --text "Lima is ..."
    runner embed JOB --image photo.png --dim 128            # Matryoshka truncation (re-normalised)
    runner embed JOB --task retrieval --input queries.txt --out queries.npy

Inputs: --text and --image (repeatable, in that order), and/or --input FILE: a .txt file (one
text per line) or a .jsonl / .json file of {"text": ...} / {"image": PATH} objects (image paths
relative to the file; bad lines are listed with their locations). Without --out, one JSON line per input is printed: {"input", "embedding"}; --out
writes a float32 .npy matrix (one row per input) or a .jsonl file of the same lines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from runner.data.embedding import Item

BATCH = 32


class EmbedError(RuntimeError):
    pass


def read_inputs(texts: list[str], images: list[str], input_file: str | None) -> list[Item]:
    items = [Item(text=t) for t in texts] + [Item(image=Path(p)) for p in images]
    if input_file:
        path = Path(input_file)
        if not path.is_file():
            raise EmbedError(f"input file not found: {path}")
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            items.extend(_records(path))
        else:
            items.extend(Item(text=line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip())
    if not items:
        raise EmbedError("nothing to embed: give --text, --image or --input")
    for item in items:
        if item.image is not None and not item.image.is_file():
            raise EmbedError(f"image not found: {item.image}")
    return items


def _records(path: Path) -> list[Item]:
    """{"text": ...} / {"image": PATH} records, read like training data (with their locations)."""
    from runner.data.records import read_file
    from runner.data.report import DataError

    try:
        read = read_file(path)
    except DataError as exc:
        raise EmbedError(str(exc)) from None
    problems = [str(bad) for bad in read.bad]
    items = []
    for record in read.records:
        text, image = record.data.get("text"), record.data.get("image")
        if (text is None) == (image is None) or not isinstance(text if image is None else image, str):
            problems.append(f"{record.location}: expected an object with either a 'text' or an 'image' string")
        else:
            items.append(Item(image=path.parent / image) if image is not None else Item(text=text))
    if problems:
        raise EmbedError("\n".join(problems))
    return items


def embed_items(adapter_dir: Path, items: list[Item], *, dim: int | None, task: str | None) -> Any:
    """[len(items), dim] float32 unit vectors (a torch tensor)."""
    import torch
    import torch.nn.functional as F

    from runner.train.embedder import load_trained_embedder
    from runner.commands.results import base_model_path

    info = json.loads((adapter_dir / "runner_adapter.json").read_text(encoding="utf-8"))
    if "embedder" not in info:
        raise EmbedError(f"{adapter_dir} is not an embedding model's result; use `runner generate` for causal LMs")
    tasks, size = info["embedder"].get("tasks") or [], info["embedder"]["dim"]
    if tasks and task not in tasks:
        raise EmbedError(f"this model has one adapter per task: pass --task with one of {', '.join(tasks)}")
    if not tasks and task is not None:
        raise EmbedError("--task applies to multi-task models only")
    if dim is not None and not 1 <= dim <= size:
        raise EmbedError(f"--dim must be between 1 and the embedding size {size}")
    trained_dims = info.get("matryoshka_dims") or [size]
    if dim is not None and dim not in trained_dims:
        print(f"note: {dim} is not a dimension the model was trained for ({', '.join(map(str, trained_dims))})",
              file=sys.stderr)
    model, preprocess = load_trained_embedder(adapter_dir, base_model_path(info))
    if task is not None:
        model.set_task(task)
    vectors = []
    with torch.no_grad():
        for start in range(0, len(items), BATCH):
            vectors.append(model.encode(preprocess(items[start:start + BATCH])))
    out = torch.cat(vectors).float()
    return F.normalize(out[:, :dim], dim=-1) if dim is not None else out


def embed_command(job: str, runs_root: Path, *, texts: list[str], images: list[str], input_file: str | None,
                  out: str | None, dim: int | None, task: str | None, run_id: str | None) -> int:
    from runner.commands.results import TryoutError, find_result

    try:
        if out is not None and Path(out).suffix.lower() not in (".npy", ".jsonl"):
            raise EmbedError(f"--out {out}: write a .npy (float32 matrix) or a .jsonl file")
        adapter_dir = find_result(job, runs_root, run_id)
        items = read_inputs(texts, images, input_file)
        vectors = embed_items(adapter_dir, items, dim=dim, task=task)
    except (TryoutError, EmbedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lines = (json.dumps({"input": str(item), "embedding": [round(v, 7) for v in row]})
             for item, row in zip(items, vectors.tolist()))
    if out is None:
        for line in lines:
            print(line)
        return 0
    target = Path(out)
    if target.suffix.lower() == ".npy":
        import numpy as np

        np.save(target, vectors.numpy().astype("float32"))
    else:
        target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print(f"wrote {len(items)} embeddings of {vectors.shape[1]} dims to {target}", file=sys.stderr)
    return 0
