"""Use a finished run: `runner generate` (base + adapter, one completion) and `runner export`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from runner.fsutil import atomic_dir
from runner.outputs.runs import latest_run, list_runs, run_paths
from runner.outputs.status import JobState


class TryoutError(RuntimeError):
    pass


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
            raise TryoutError(f"no run '{run_id}' of job '{name}' under {runs_root}")
        run = matches[0]
    else:
        found = latest_run(runs_root, name, state=JobState.SUCCEEDED)
        if found is None:
            raise TryoutError(f"no successful run of job '{name}' under {runs_root}; run it first (runner run)")
        run = found
    adapter = run_paths(run).adapter
    if not (adapter / "runner_adapter.json").is_file():
        raise TryoutError(f"{adapter} has no finished adapter")
    return adapter


def load_result(adapter_dir: Path) -> tuple[Any, Any]:
    """The trained model (base + adapter, or the full model) and its tokenizer.

    Loading goes through the training side's `load_for_inference`, so a QLoRA adapter sits on a
    base quantised exactly as it was during training.
    """
    from transformers import AutoTokenizer

    from runner.train.model import load_for_inference

    info = json.loads((adapter_dir / "runner_adapter.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    base = None if info["method"] == "full" else base_model_path(info)
    return load_for_inference(adapter_dir, base, device="cpu"), tokenizer


def base_model_path(info: dict[str, Any]) -> Path:
    """The base model folder of a result (runner_adapter.json): where it was, or resolved again."""
    base_path = Path(info["base_model"]["path"])
    if not base_path.is_dir():
        from runner.registry.sources import resolve_source
        import runner.lineage  # noqa: F401  (registers the resolver for job: sources)

        base_path = Path(resolve_source(info["base_model"]["source"]).path)
    return base_path


def generate(job: str, runs_root: Path, *, prompt: str, max_new_tokens: int = 64, run_id: str | None = None) -> int:
    import torch

    try:
        adapter_dir = find_result(job, runs_root, run_id)
    except TryoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    model, tokenizer = load_result(adapter_dir)
    model.eval()
    if tokenizer.chat_template:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
    else:
        ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    new_tokens = out[0, ids["input_ids"].shape[1]:]
    text = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    # a completion of special tokens only would print nothing; show them rather than a blank line
    print(text or tokenizer.decode(new_tokens, skip_special_tokens=False).strip())
    return 0


def export(job: str, runs_root: Path, *, out: str, merge: bool, run_id: str | None = None) -> int:
    try:
        adapter_dir = find_result(job, runs_root, run_id)
    except TryoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    target = Path(out)
    model, tokenizer = load_result(adapter_dir)
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with atomic_dir(target, replace=True) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    what = "merged model" if merge else "model"
    print(f"wrote the {what} of {adapter_dir.parent} to {target}")
    return 0
