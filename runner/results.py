"""A finished run's result, used: find it, load it, complete a prompt, export it, embed with it.

`find_result` picks a job's run (the latest successful one unless a run id is given) and returns
its adapter folder; `runner_adapter.json` in it says how the result was trained and on which base
model. Loading goes through the training side (`runner.train`), so a QLoRA adapter sits on a base
quantised exactly as it was during training.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.data.embedding import Item
from runner.fsutil import atomic_dir
from runner.outputs.runs import latest_run, list_runs, run_paths
from runner.outputs.status import JobState

if TYPE_CHECKING:
    import torch

__all__ = [
    "ResultError",
    "base_model_path",
    "embed_items",
    "export_result",
    "find_result",
    "generate_text",
    "load_result",
    "read_embed_inputs",
]

EMBED_BATCH = 32


class ResultError(RuntimeError):
    """A result that cannot be found or used as asked; the message says why and what to do."""


def _job_name(job: str) -> str:
    """Accept a job name or a job file (its name, or the file stem)."""
    if job.endswith(".toml") and Path(job).is_file():
        from runner.spec import load_job

        return load_job(job).name
    return job


def find_result(job: str, runs_root: Path, run_id: str | None = None) -> Path:
    """The adapter folder of a job's run: the given run id, or the latest successful run."""
    name = _job_name(job)
    if run_id:
        matches = [r for r in list_runs(runs_root, name) if r.name == run_id]
        if not matches:
            raise ResultError(f"no run '{run_id}' of job '{name}' under {runs_root}")
        run = matches[0]
    else:
        found = latest_run(runs_root, name, state=JobState.SUCCEEDED)
        if found is None:
            raise ResultError(f"no successful run of job '{name}' under {runs_root}; run it first (runner run)")
        run = found
    adapter = run_paths(run).adapter
    if not (adapter / "runner_adapter.json").is_file():
        raise ResultError(f"{adapter} has no finished adapter")
    return adapter


def _info(adapter_dir: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((adapter_dir / "runner_adapter.json").read_text(encoding="utf-8"))
    return info


def base_model_path(info: dict[str, Any]) -> Path:
    """The base model folder of a result (runner_adapter.json): where it was, or resolved again."""
    base_path = Path(info["base_model"]["path"])
    if not base_path.is_dir():
        import runner.lineage  # noqa: F401  (registers the resolver for job: sources)
        from runner.registry.sources import resolve_source

        base_path = Path(resolve_source(info["base_model"]["source"]).path)
    return base_path


# ------------------------------------------------------------------------------ causal LMs


def load_result(adapter_dir: Path) -> tuple[Any, Any]:
    """The trained model (base + adapter, or the full model) and its tokenizer."""
    from transformers import AutoTokenizer

    from runner.train.model import load_for_inference

    info = _info(adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    base = None if info["method"] == "full" else base_model_path(info)
    return load_for_inference(adapter_dir, base, device="cpu"), tokenizer


def generate_text(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int = 64) -> str:
    """A greedy completion of `prompt` (as a user turn when the tokenizer has a chat template)."""
    import torch

    model.eval()
    if tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    new_tokens = out[0, ids["input_ids"].shape[1] :]
    text: str = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    # a completion of special tokens only would read as nothing; show them rather than a blank
    return text or str(tokenizer.decode(new_tokens, skip_special_tokens=False).strip())


def export_result(adapter_dir: Path, target: Path, *, merge: bool) -> None:
    """Write the result as a model folder (safetensors + tokenizer); `merge` folds LoRA into the base.
    Complete or absent: written under a temporary name, then renamed."""
    model, tokenizer = load_result(adapter_dir)
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with atomic_dir(target, replace=True) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))


# ------------------------------------------------------------------------------ embedding models


def read_embed_inputs(texts: list[str], images: list[str], input_file: str | None) -> list[Item]:
    """Texts, then images, then the inputs of a file: .txt (one text per line) or .jsonl / .json
    ({"text"} / {"image": PATH} records, image paths relative to the file)."""
    items = [Item(text=t) for t in texts] + [Item(image=Path(p)) for p in images]
    if input_file:
        path = Path(input_file)
        if not path.is_file():
            raise ResultError(f"input file not found: {path}")
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            items.extend(_input_records(path))
        else:
            items.extend(Item(text=line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip())
    if not items:
        raise ResultError("nothing to embed: give --text, --image or --input")
    for item in items:
        if item.image is not None and not item.image.is_file():
            raise ResultError(f"image not found: {item.image}")
    return items


def _input_records(path: Path) -> list[Item]:
    """{"text": ...} / {"image": PATH} records, read like training data (with their locations)."""
    from runner.data.reading import read_file
    from runner.data.report import DataError

    try:
        read = read_file(path)
    except DataError as exc:
        raise ResultError(str(exc)) from None
    problems = [str(bad) for bad in read.bad]
    items = []
    for record in read.records:
        text, image = record.data.get("text"), record.data.get("image")
        if (text is None) == (image is None) or not isinstance(text if image is None else image, str):
            problems.append(f"{record.location}: expected an object with either a 'text' or an 'image' string")
        else:
            items.append(Item(image=path.parent / image) if image is not None else Item(text=text))
    if problems:
        raise ResultError("\n".join(problems))
    return items


def embed_items(
    adapter_dir: Path,
    items: list[Item],
    *,
    dim: int | None,
    task: str | None,
    note: Callable[[str], None] = lambda message: None,
) -> torch.Tensor:
    """[len(items), dim] float32 unit vectors; `dim` truncates (Matryoshka) and re-normalises;
    `task` picks a multi-task model's adapter. `note` hears about a dim the model was not trained for."""
    import torch
    import torch.nn.functional as F

    from runner.train.embedder import load_trained_embedder

    info = _info(adapter_dir)
    _check_embed_request(adapter_dir, info, dim=dim, task=task, note=note)
    model, preprocess = load_trained_embedder(adapter_dir, base_model_path(info))
    if task is not None:
        model.set_task(task)
    vectors = []
    with torch.no_grad():
        for start in range(0, len(items), EMBED_BATCH):
            vectors.append(model.encode(preprocess(items[start : start + EMBED_BATCH])))
    out = torch.cat(vectors).float()
    return F.normalize(out[:, :dim], dim=-1) if dim is not None else out


def _check_embed_request(
    adapter_dir: Path, info: dict[str, Any], *, dim: int | None, task: str | None, note: Callable[[str], None]
) -> None:
    if "embedder" not in info:
        raise ResultError(f"{adapter_dir} is not an embedding model's result; use `runner generate` for causal LMs")
    tasks, size = info["embedder"].get("tasks") or [], info["embedder"]["dim"]
    if tasks and task not in tasks:
        raise ResultError(f"this model has one adapter per task: pass --task with one of {', '.join(tasks)}")
    if not tasks and task is not None:
        raise ResultError("--task applies to multi-task models only")
    if dim is not None and not 1 <= dim <= size:
        raise ResultError(f"--dim must be between 1 and the embedding size {size}")
    trained_dims = info.get("matryoshka_dims") or [size]
    if dim is not None and dim not in trained_dims:
        note(f"note: {dim} is not a dimension the model was trained for ({', '.join(map(str, trained_dims))})")
