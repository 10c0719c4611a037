"""`runner embed`: vectors from a finished embedding job (base model + its adapter(s)).

    runner embed jobs/quickstart-embed.toml --text "capital city of Peru" --text "Lima is ..."
    runner embed JOB --image photo.png --dim 128            # Matryoshka truncation (re-normalised)
    runner embed JOB --task retrieval --input queries.txt --out queries.npy

Inputs: --text and --image (repeatable, in that order), and/or --input FILE: a .txt file (one
text per line) or a .jsonl / .json file of {"text": ...} / {"image": PATH} objects (image paths
relative to the file; bad lines are listed with their locations). Without --out, one JSON line
per input is printed: {"input", "embedding"}; --out writes a float32 .npy matrix (one row per
input) or a .jsonl file of the same lines. The work is in runner.results.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runner.commands.common import EXIT_OK, Subparsers, error


def add_embed(sub: Subparsers) -> None:
    emb = sub.add_parser("embed", help="embed texts and images with a finished embedding job")
    emb.add_argument("job", help="job name or job file")
    emb.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    emb.add_argument("--image", action="append", default=[], help="an image file to embed (repeatable)")
    emb.add_argument("--input", help='a file of inputs: .txt (one text per line) or .jsonl ({"text"} / {"image"})')
    emb.add_argument("--out", help="write a .npy matrix or .jsonl lines instead of printing")
    emb.add_argument("--dim", type=int, help="Matryoshka: truncate to this many dimensions (re-normalised)")
    emb.add_argument("--task", help="multi-task models: the task whose adapter embeds")
    emb.add_argument("--run", help="run id (default: the latest successful run)")
    emb.add_argument("--runs-dir")
    emb.set_defaults(func=embed_command)


def embed_command(args: argparse.Namespace) -> int:
    from runner.outputs.runs import runs_root
    from runner.results import ResultError, embed_items, find_result, read_embed_inputs

    try:
        if args.out is not None and Path(args.out).suffix.lower() not in (".npy", ".jsonl"):
            raise ResultError(f"--out {args.out}: write a .npy (float32 matrix) or a .jsonl file")
        adapter_dir = find_result(args.job, runs_root(args.runs_dir), args.run)
        items = read_embed_inputs(args.text, args.image, args.input)
        vectors = embed_items(
            adapter_dir, items, dim=args.dim, task=args.task, note=lambda message: print(message, file=sys.stderr)
        )
    except ResultError as exc:
        return error(str(exc))
    lines = (
        json.dumps({"input": str(item), "embedding": [round(v, 7) for v in row]})
        for item, row in zip(items, vectors.tolist(), strict=True)
    )
    if args.out is None:
        for line in lines:
            print(line)
        return EXIT_OK
    target = Path(args.out)
    if target.suffix.lower() == ".npy":
        import numpy as np

        np.save(target, vectors.numpy().astype("float32"))
    else:
        target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print(f"wrote {len(items)} embeddings of {vectors.shape[1]} dims to {target}", file=sys.stderr)
    return EXIT_OK
