"""A small continual grid serially and on k local Ray workers: per-cell and total wall times, and
whether the results match (docs/scale.md).

    python benchmarks/continual/ray_grid.py --workers 2        # writes benchmarks/results/continual_ray_grid.json

The grid: the tiny random Llama of the tests, two SYNTHETIC tasks in both orders, four strategies
(expert, RECALL and TIES merges of the experts, sequential fine-tuning), each (order, strategy)
its own run folder sharing one expert cache, as ``benchmarks/continual/run.py`` lays out the real
benchmark. Serial: ``run_continual`` cell after cell in this process. Ray: ``run_cells`` (experts
first, one task each, then one task per cell) on ``ray.init(num_cpus=k)``. Both are warmed up
first on a grid of their own (imports, worker start), so the times are of the work, not of
start-up; Ray's start-up is reported on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[1] / "benchmarks" / "results" / "continual_ray_grid.json"
TASKS = ["synthetic:alpha", "synthetic-gen:gamma"]
STRATEGIES = ["expert", "merge:recall", "merge:ties", "sequential"]


SEED = 3  # every cell's continual seed (splits, training, merges); the tiny base is seed 0

def cell_config(base: Path, root: Path, order: list[int], strategy: str) -> dict:
    label = "-".join(map(str, order))
    return {
        "model": str(base), "tasks": [TASKS[i] for i in order], "max_train": 16, "max_dev": 4,
        "max_test": 8, "seed": SEED, "run_dir": str(root / f"order_{label}" / strategy.replace(":", "_")),
        "expert_cache": str(root / "experts"), "strategies": [strategy],
        "training": {"mode": "full", "epochs": 2, "batch_size": 8, "learning_rate": 0.003,
                     "max_length": 48, "progress": False},
        "evaluation": {"batch_size": 16, "max_length": 48, "max_new_tokens": 3},
        "merge_samples": 8, "merge_parameters": {"recall": {"num_typical": 4, "max_length": 48}},
    }


def grid(base: Path, root: Path) -> list[tuple[str, dict]]:
    return [(f"{order} {strategy}", cell_config(base, root, order, strategy))
            for order in ([0, 1], [1, 0]) for strategy in STRATEGIES]


def comparable(results: dict) -> dict:
    return {name: entry.get("R") for name, entry in results["methods"].items()}


def serial(cells: list[tuple[str, dict]]) -> tuple[float, dict[str, float], dict[str, dict]]:
    from recall_merge.continual.runner import run_continual

    started = time.perf_counter()
    seconds, results = {}, {}
    for label, config in cells:
        cell_started = time.perf_counter()
        results[label] = comparable(run_continual(config, quiet=True))
        seconds[label] = time.perf_counter() - cell_started
    return time.perf_counter() - started, seconds, results


def on_ray(cells: list[tuple[str, dict]]) -> tuple[float, dict[str, float], dict[str, dict]]:
    from recall_merge.continual.distributed import run_cells

    started = time.perf_counter()
    outcomes = run_cells([config for _, config in cells], quiet=True)
    total = time.perf_counter() - started
    return (total, {label: s for (label, _), (_, s) in zip(cells, outcomes, strict=True)},
            {label: comparable(r) for (label, _), (r, _) in zip(cells, outcomes, strict=True)})


def lpt_makespan(seconds: list[float], workers: int) -> float:
    """Longest-processing-time-first schedule of independent cells on ``workers`` equal workers."""
    loads = [0.0] * workers
    for cost in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += cost
    return max(loads)


def projection(workers: list[int]) -> dict[str, dict]:
    """Each recorded benchmark sequence's serial wall time (sum of its cells' wall seconds over
    the orders run) and its makespan on k workers of the machine that recorded it (one cell per
    worker at a time, LPT order). The recorded cells include the shared experts' training in
    whichever cell first needed them, so the projection keeps that cost inside one cell rather
    than spreading it over wave 1: it errs on the slow side."""
    projected = {}
    every: list[float] = []
    for path in sorted(RESULTS.parent.glob("continual_*.json")):
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "runs" not in data or "sequence" not in data:
            continue
        cells = [s for run in data["runs"] for s in run.get("wall_seconds", {}).values()]
        if not cells:
            continue
        every += cells
        projected[path.stem.removeprefix("continual_")] = {
            "cells": len(cells), "serial_h": sum(cells) / 3600, "longest_cell_h": max(cells) / 3600,
            "makespan_h": {str(k): lpt_makespan(cells, k) / 3600 for k in workers}}
    projected["all of the above"] = {
        "cells": len(every), "serial_h": sum(every) / 3600, "longest_cell_h": max(every) / 3600,
        "makespan_h": {str(k): lpt_makespan(every, k) / 3600 for k in workers}}
    return projected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray (k)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    import ray
    import torch

    from recall_merge.provenance import versions
    from recall_merge.testing import make_tiny_llama

    load_at_start = os.getloadavg()  # other jobs on the machine slow both modes, unevenly
    work = Path(tempfile.mkdtemp(prefix="ray_grid_"))
    try:
        base = make_tiny_llama(work / "base", seed=0)
        serial(grid(base, work / "warm_serial"))  # imports and first-use costs, not counted
        serial_total, serial_cells, serial_results = serial(grid(base, work / "serial"))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each Ray task runs: tells parallelism from thread contention
        one_total, one_cells, one_results = serial(grid(base, work / "serial_1"))
        torch.set_num_threads(threads)

        started = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - started
        on_ray(grid(base, work / "warm_ray"))  # starts and warms the k workers, not counted
        ray_total, ray_cells, ray_results = on_ray(grid(base, work / "ray"))
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    record = {
        "grid": {"tasks": TASKS, "orders": 2, "strategies": STRATEGIES, "cells": len(serial_cells),
                 "model": "tiny-random Llama (tests), full fine-tuning, 16 train / 8 test items"},
        "workers": args.workers, "cpu_count": os.cpu_count(),
        "load_average": {"start": load_at_start, "end": os.getloadavg()},
        "serial": {"total_s": serial_total, "cells_s": serial_cells, "torch_threads": threads},
        "serial_one_thread": {"total_s": one_total, "cells_s": one_cells, "torch_threads": 1},
        "ray": {"start_s": ray_start, "total_s": ray_total, "cells_s": ray_cells,
                "note": "cells_s: each cell's task, the shared experts excluded (built first, "
                        "one task each); total_s: experts, cells and the driver's preparation"},
        "speedup": serial_total / ray_total, "speedup_vs_one_thread": one_total / ray_total,
        "results_equal": serial_results == ray_results == one_results,
        "projection": projection([1, 2, 4, 8, 16, 32]),
        "seed": SEED,
        "versions": versions(),
        "command": "python benchmarks/continual/ray_grid.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps(record, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
