"""Where a merge stage spends its time, stage by stage, without RECALL's planning pass.

    python benchmarks/merge_speed/merge_stages.py --shape tinyllama-1.1b --case lora --repeat 3
    PYTHONPATH=OTHER_CHECKOUT/src python benchmarks/merge_speed/merge_stages.py ... --label before

The merge runs alone on the checkpoints of ``scale.py`` (synthetic random weights with a real
config, bfloat16 output). ``--case lora`` (base + 3 rank-16 LoRA experts): RECALL's paper and
task-vector forms merge LoRA experts from their factors (``Σ_i c_i θ_i`` as one low-rank product
per tensor, ``io.lora.low_rank_combination``), and which coefficients they use does not change
the work, so task arithmetic is told it is linear (coefficients ``1 − Nλ, λ, …``), which sends it
down the same path. ``--case full`` (base + 2 full experts): task arithmetic as it is, the same
elementwise path as RECALL's merge of full checkpoints with its α fixed. Each stage is timed per
call in its own thread (reader: base rows, factors or expert rows, input check, product; main:
input check, merge arithmetic, output check; writer: file writes): the threads overlap, so the
stages add up to more than the wall time.
Every repeat starts from a dropped page cache where the machine allows it, and is preceded by
the disk floor of ``scale.py`` (read every full checkpoint once, write one model's bytes; LoRA
adapters are small and left out), so each merge stage has a floor measured at the same load. Results append to
``benchmarks/results/merge_stages.json`` with the load average, versions and the label
(run it from another checkout's ``src`` on ``PYTHONPATH`` to compare code on the same inputs).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import FLOOR_SCRIPT, drop_caches, measure  # noqa: E402
from scale import SHAPES, scale_inputs, scale_root  # noqa: E402

RESULTS = HERE.parent / "results" / "merge_stages.json"
LAMBDA = 0.3


def timed_merge(base: Path, experts: list[Path], output: Path, case: str) -> dict:
    """One merge with every stage's time summed over its calls."""
    import recall_merge.engine as engine
    from recall_merge.io.pool import ModelPool
    from recall_merge.io.writer import StreamingShardWriter
    from recall_merge.methods.classic import TaskArithmetic

    totals: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    originals = []
    labels: list[str] = []  # every stage wrapped, called or not

    def wrap(owner, attribute: str, label: str) -> None:
        function = getattr(owner, attribute)  # an AttributeError: the engine renamed it
        originals.append((owner, attribute, function))
        labels.append(label)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - started
                calls[label] += 1
        setattr(owner, attribute, timed)

    count = len(experts)
    wrap(ModelPool, "base_tensor", "reader: base rows")
    if case == "lora":
        originals.append((TaskArithmetic, "linear_coefficients", TaskArithmetic.linear_coefficients))
        TaskArithmetic.linear_coefficients = (
            lambda self, position: [1 - count * LAMBDA] + [LAMBDA] * count)
        wrap(ModelPool, "lora_factors", "reader: factors")
        wrap(engine, "check_finite", "reader: input check")
        wrap(engine, "low_rank_combination", "reader: product")
    else:
        wrap(ModelPool, "expert_tensor", "reader: expert rows")
        wrap(engine, "_check_finite", "main: input check")
        wrap(TaskArithmetic, "merge_tensor", "main: merge arithmetic")
    wrap(engine, "check_output_finite", "main: output check")
    wrap(StreamingShardWriter, "write_part", "writer: write")
    try:
        started = time.perf_counter()
        result = engine.merge({"method": "task_arithmetic", "base": str(base),
                               "models": [str(e) for e in experts], "parameters": {"lambda": LAMBDA},
                               "output": str(output), "dtype": "bfloat16"}, quiet=True)
        wall = time.perf_counter() - started
    finally:
        for owner, attribute, function in reversed(originals):
            setattr(owner, attribute, function)
    # The stages are the engine's call sites by name: a refactor that stops calling one (or takes
    # another path, e.g. no from-factors merge) would leave its time uncounted, not fail.
    uncalled = [label for label in labels if calls[label] == 0]
    if uncalled:
        raise SystemExit(f"merge_stages.py: the merge never called {', '.join(sorted(uncalled))}; "
                         "its stage list no longer matches the engine (update timed_merge)")
    return {"wall_s": round(wall, 2), "merge_s": round(result.report["run"]["timings"]["merge_s"], 2),
            "stages_s": {label: round(seconds, 2) for label, seconds in totals.items()},
            "calls": dict(calls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama-1.1b")
    parser.add_argument("--case", choices=["lora", "full"], default="lora")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--label", default="", help="which code (e.g. a commit), kept in the record")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    import recall_merge
    from recall_merge.provenance import machine, versions

    base, experts = scale_inputs(scale_root(), args.shape, args.case)
    runs = []
    for _ in range(args.repeat):
        work = Path(tempfile.mkdtemp(dir=base.parent))
        try:
            drop_caches()
            floor = measure([sys.executable, "-c", FLOOR_SCRIPT, str(work / "floor.bin"), str(base),
                             *[str(e) for e in experts if args.case == "full"]])
            floor_s = json.loads(floor["stdout"].strip().splitlines()[-1])["total_s"]
            (work / "floor.bin").unlink()
            drop_caches()
            runs.append({**timed_merge(base, experts, work / "merged", args.case),
                         "disk_floor_s": round(floor_s, 2)})
            runs[-1]["merge_stage_over_floor"] = round(runs[-1]["merge_s"] / floor_s, 2)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(runs[-1]), flush=True)
    record = {"shape": args.shape, "case": args.case, "experts": len(experts),
              **({"rank": 16} if args.case == "lora" else {}),
              "label": args.label, "code": str(Path(recall_merge.__file__).parent),
              "runs": runs, "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
              "machine": machine(), "versions": versions(), "seed": 0,
              "command": "python benchmarks/merge_speed/merge_stages.py " + " ".join(sys.argv[1:])}
    document = json.loads(args.results.read_text()) if args.results.exists() else {"runs": []}
    document["runs"].append(record)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
