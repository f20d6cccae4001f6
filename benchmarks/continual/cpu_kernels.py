"""Does a merge come out the same bytes when the CPU's kernels change?

A committed benchmark cell rebuilt on a machine of another make (docs/benchmarks.md, "On a machine
of another make") matched task arithmetic to the bit and RECALL to within one test item. This
script isolates the cause on one machine: it runs the same merge twice, once with torch's and
MKL's kernels at the CPU's own instruction set and once forced to AVX2
(``ATEN_CPU_CAPABILITY=avx2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``), each in its own process with one
thread, and compares the merged weights' bytes and, for RECALL, its per-layer similarities and α
— RECALL at its float32 default and with ``compute_dtype: float64``, and task arithmetic.

    python benchmarks/continual/cpu_kernels.py --base BASE --models EXPERT... --samples FILE.jsonl

Writes ``benchmarks/results/cpu_kernels.json`` (per variant: equal bytes or not, the native run's
seconds; RECALL: the largest
|Δ similarity| and |Δ α|, how many α differ; the machine, versions, command, seed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

RESULTS = Path(__file__).resolve().parents[1] / "results"
OUT = RESULTS / "cpu_kernels.json"
FORCED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
# name: the merge config's method, parameters and compute_dtype
VARIANTS = {"recall": {"method": "recall"},
            "recall_float64": {"method": "recall", "compute_dtype": "float64"},
            "task_arithmetic": {"method": "task_arithmetic", "parameters": {"lambda": 0.25}}}


def merge(config: dict, output: Path, forced: bool) -> None:
    """``recall merge`` of ``config`` into ``output`` in a fresh process (kernel choice is read at
    import), one thread, the kernels forced to AVX2 if ``forced``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    path = output.parent / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump({**config, "output": str(output)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(FORCED if forced else {})}
    subprocess.run([sys.executable, "-m", "recall_merge.cli", "merge", str(path), "--quiet"],
                   env=env, check=True, stdout=subprocess.DEVNULL)


def weight_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for shard in sorted(folder.glob("*.safetensors")):
        digest.update(shard.read_bytes())
    return digest.hexdigest()


def report_differences(first: Path, second: Path) -> dict:
    """Largest |Δ| of RECALL's per-layer similarities and α between two reports, and how many α
    differ at all."""
    a = json.loads((first / "recall_report.json").read_text())["layers"]
    b = json.loads((second / "recall_report.json").read_text())["layers"]
    pairs = [(x, y) for la, lb in zip(a, b, strict=True)
             for x, y in zip(la["alpha"], lb["alpha"], strict=True)]
    similarities = [(x, y) for la, lb in zip(a, b, strict=True)
                    for x, y in zip(la["similarity"], lb["similarity"], strict=True)]
    return {"max_abs_alpha_difference": max(abs(x - y) for x, y in pairs),
            "alphas_differing": sum(x != y for x, y in pairs), "alphas": len(pairs),
            "max_abs_similarity_difference": max(abs(x - y) for x, y in similarities)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--models", nargs="+", required=True, help="the experts (LoRA or full)")
    parser.add_argument("--samples", required=True, help="the newest task's samples (JSONL)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from recall_merge.provenance import machine, versions

    rows = {}
    with tempfile.TemporaryDirectory(prefix="recall-cpu-kernels-") as root:
        for name, variant in VARIANTS.items():
            config = {**variant, "base": args.base, "models": args.models,
                      "samples": args.samples, "seed": args.seed}
            native, forced = Path(root) / f"{name}_native", Path(root) / f"{name}_avx2"
            started = time.perf_counter()
            merge(config, native, forced=False)
            seconds = time.perf_counter() - started
            merge(config, forced, forced=True)
            row = {**variant, "equal_bytes": weight_digest(native) == weight_digest(forced),
                   "seconds_native": round(seconds, 1)}
            if variant["method"] == "recall":
                row.update(report_differences(native, forced))
            rows[name] = row
            print(name, json.dumps(row), flush=True)
    OUT.write_text(json.dumps({
        "variants": rows, "forced_environment": FORCED, "threads": 1, "seed": args.seed,
        "inputs": {"base": Path(args.base).name, "models": [Path(m).name for m in args.models],
                   "samples": Path(args.samples).name},
        "machine": machine(), "versions": versions(),
        "command": "python benchmarks/continual/cpu_kernels.py --base BASE --models EXPERT... "
                   "--samples FILE.jsonl"}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
