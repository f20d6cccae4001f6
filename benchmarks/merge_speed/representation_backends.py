"""Wall time and peak memory of RECALL's representation pass on SmolLM2-135M-Instruct, per backend:
``streamed`` (transformers' decoder, one block's weights at a time; the default), ``fast`` (the
pure-torch Llama forward over whole memory-mapped models) and ``transformers`` (one whole model).

    python benchmarks/merge_speed/representation_backends.py            # writes the JSON below

Two passes, as RECALL runs them: the newest expert over every sample (clustering), then base and
every expert over the typical samples. Each backend runs in its own process (peak RSS is per
process), ``--repeats`` times, alternating; the table keeps every run and the minimum.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[1] / "benchmarks" / "results" / "representation_backends.json"

_CHILD = """
import json, resource, sys, time
from pathlib import Path
import torch
torch.manual_seed(0)
from recall_merge.io.pool import ModelPool
from recall_merge.recall.representations import states_for_all_models
args = json.loads(sys.argv[1])
pool = ModelPool.open(args["base"], args["experts"])
texts = args["texts"]
options = dict(max_length=args["max_length"], batch_size=args["batch_size"], use_chat_template=True,
               backend=args["backend"])
started = time.perf_counter()
newest = len(args["experts"])
states_for_all_models(pool, texts, model_indices=[newest], **options)
clustering = time.perf_counter() - started
started = time.perf_counter()
states_for_all_models(pool, texts[: args["typical"]], **options)
typical = time.perf_counter() - started
print(json.dumps({"clustering_s": clustering, "typical_s": typical,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--typical", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    from recall_merge.data.registry import load_task
    from recall_merge.io.cache import cache_dir
    from recall_merge.io.packaged import materialise_smollm2
    from recall_merge.provenance import versions
    from recall_merge.testing import make_tiny_lora

    base = materialise_smollm2(quiet=True)
    experts = []
    for seed in (1, 2):
        folder = cache_dir() / "benchmark_inputs" / f"smollm2_lora_{seed}"
        if not (folder / "adapter_config.json").exists():
            make_tiny_lora(folder, base, seed=seed, rank=8, scale=0.02,
                           target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                           "up_proj", "down_proj"))
        experts.append(str(folder))
    texts = load_task("bbc", seed=0, n_train=args.samples, n_dev=0, n_test=1).inputs("train")[: args.samples]
    runs = []
    for repeat in range(args.repeats):
        for backend in ("streamed", "fast", "transformers"):
            payload = {"base": str(base), "experts": experts, "texts": texts, "typical": args.typical,
                       "max_length": args.max_length, "batch_size": args.batch_size, "backend": backend}
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(payload)], capture_output=True,
                                  text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            record = json.loads(done.stdout.strip().splitlines()[-1])
            record.update(backend=backend, repeat=repeat, process_s=time.perf_counter() - started)
            runs.append(record)
            print(json.dumps(record), flush=True)
    best = {}
    for backend in ("streamed", "fast", "transformers"):
        mine = [run for run in runs if run["backend"] == backend]
        best[backend] = {key: min(run[key] for run in mine)
                         for key in ("clustering_s", "typical_s", "peak_rss_mb", "process_s")}
    document = {"command": "python benchmarks/merge_speed/representation_backends.py "
                + " ".join(sys.argv[1:]),
                "settings": {"model": "SmolLM2-135M-Instruct", "experts": "2 LoRA adapters, rank 8, every "
                             "linear layer (random, seeded)", "samples": args.samples,
                             "typical": args.typical, "max_length": args.max_length,
                             "batch_size": args.batch_size, "repeats": args.repeats},
                "seed": 0, "machine": {"cpus": os.cpu_count()}, "versions": versions(),
                "load_average_at_end": os.getloadavg(), "runs": runs, "best": best}
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(best, indent=2))


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
