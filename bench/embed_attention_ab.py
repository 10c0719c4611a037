"""In-process A/B of an embedding training step's attention: padding-free rows with attention grouped
by length (the runner's default), padding-free rows with one SDPA call per text (the path before
the grouping), and padded batches (`train.speed.padding_free_embeddings = false`).

    PYTHONPATH=. python bench/embed_attention_ab.py --rounds 4 --threads 2

The same model (the bundled all-MiniLM-L6-v2 with LoRA r8 on query/key/value/dense, dropout 0.05,
as in bench/embed_vs_sentence_transformers.py), the same batches of 32 STS-B train pairs
(anchor/positive with a score >= 3), forward + backward of the contrastive loss, no optimizer;
the variants interleaved per round (in reverse order every other round) so a noisy stretch of the
shared machine hits each alike. Prints pairs/s per round and the medians' ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_vs_sentence_transformers import BATCH, LORA, MAX_LENGTH, minilm_path, training_rows


def one_call_per_text(
    query: Any, key: Any, value: Any, bounds: list[tuple[int, int]], *, dropout: float, scaling: Any, gqa: bool
) -> Any:
    """The per-text attention the grouping replaced: (1, H, T, D) in, (1, T, H, D) out."""
    import torch
    import torch.nn.functional as F

    sizes = [end - start for start, end in bounds]
    return torch.cat(
        [
            F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, enable_gqa=gqa).transpose(1, 2)
            for q, k, v in zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2), strict=True)
        ],
        dim=1,
    )


def build(padding_free: bool, batches: int, work: Path) -> tuple[Any, list[dict[str, Any]], Callable[..., Any]]:
    """(embedder in training mode, its collated batches, the loss)."""
    import tomli_w
    import torch

    from runner.data.embedding import EmbeddingExample, Item
    from runner.spec import load_job
    from runner.train.embedder import EmbeddingCollator, build_embedder
    from runner.train.losses import build_loss
    from runner.train.model import DeviceChoice

    job = work / f"ab-{padding_free}.toml"
    job.write_text(
        tomli_w.dumps(
            {
                "model": {"source": f"local:{minilm_path()}", "kind": "embedding", "pooling": "mean"},
                "data": {"train": "unused.jsonl", "format": "pairs", "max_length": MAX_LENGTH},
                "adapter": {
                    "r": LORA["r"],
                    "alpha": LORA["lora_alpha"],
                    "dropout": LORA["lora_dropout"],
                    "target_modules": LORA["target_modules"],
                },
                "loss": {"type": "contrastive", "temperature": 0.05},
                "train": {"speed": {"padding_free_embeddings": padding_free}},
            }
        )
    )
    spec = load_job(job).spec
    torch.manual_seed(0)
    cpu = DeviceChoice(device="cpu", dtype="float32", precision="fp32", attn_implementation="sdpa")
    embedder, preprocess = build_embedder(Path(minilm_path()), spec, cpu)
    embedder.train()
    rows = training_rows("mnrl", BATCH * batches)
    collate = EmbeddingCollator(preprocess)
    collated = [
        collate(
            [
                EmbeddingExample(query=Item(text=r["query"]), positive=Item(text=r["positive"]))
                for r in rows[i : i + BATCH]
            ]
        )
        for i in range(0, len(rows), BATCH)
    ]
    return embedder, collated, build_loss(spec.loss, "contrastive")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=int, default=8, help="batches of 32 pairs per variant per round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    import runner.train.attention as attention

    torch.set_num_threads(args.threads)
    grouped = attention.grouped_bidirectional
    work = Path(tempfile.mkdtemp(prefix="embed-ab-"))
    variants = {
        "grouped": (*build(True, args.batches, work), grouped),
        "one call per text": (*build(True, args.batches, work), one_call_per_text),
        "padded": (*build(False, args.batches, work), grouped),
    }

    def pairs_per_s(name: str) -> float:
        embedder, batches, loss, attend = variants[name]
        attention.grouped_bidirectional = attend  # the bidirectional packed path calls it by module name
        started = time.perf_counter()
        for batch in batches:
            vectors = embedder(query=batch["query"], positive=batch["positive"])
            loss(vectors["query"], vectors["positive"]).backward()
        return len(batches) * BATCH / (time.perf_counter() - started)

    for name in variants:  # warm-up
        pairs_per_s(name)
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name in list(variants) if round_ % 2 == 0 else list(variants)[::-1]:
            runs[name].append(pairs_per_s(name))
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in runs.items()), flush=True)
    attention.grouped_bidirectional = grouped
    medians = {name: statistics.median(v) for name, v in runs.items()}
    for name, median in medians.items():
        print(
            f"  {name:18s} {median:6.1f} pairs/s  x{median / medians['grouped']:.3f} of grouped  "
            f"(runs {', '.join(f'{v:.0f}' for v in runs[name])})"
        )


if __name__ == "__main__":
    main()
