"""Does a committed benchmark cell come out the same when it is built again from nothing?

Runs some (order, strategy) cells of a sequence in a fresh run folder — experts trained again,
merges and scores made again, nothing taken from the benchmark's own runs — serially or as Ray
tasks on local workers (``--ray``, ``--workers``), and compares every scored cell of R with the
committed ``benchmarks/results/continual_SEQUENCE[_seedS].json``.

    python benchmarks/continual/reproduce.py --sequence development --orders 0 \\
        --strategies expert task_arithmetic recall
    python benchmarks/continual/reproduce.py --sequence development --orders 0 \\
        --strategies expert task_arithmetic recall --ray --workers 2

Writes ``benchmarks/results/continual_reproduce.json`` (one record per (sequence, seed, mode),
replaced by a rerun: per cell the largest |difference| in R, whether every cell is equal, wall
time; versions, command). The fresh run folder is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402
from sequences import SEQUENCES, orders  # noqa: E402

OUT = bench.RESULTS / "continual_reproduce.json"


def committed_rows(sequence: str, seed: int, order: list[int], strategy: str) -> list | None:
    """The committed R matrix of one cell (None when that cell was never committed)."""
    path = bench.results_path(sequence, seed)
    if not path.exists():
        return None
    for entry in json.loads(path.read_text())["runs"]:
        if entry["order"] == order and entry["results"]:
            method = entry["results"]["methods"].get(strategy)
            return method.get("R") if method else None
    return None


def largest_difference(first: list, second: list) -> float | None:
    """max |a − b| over the cells both matrices scored; None when the scored cells differ."""
    worst = 0.0
    for row_a, row_b in zip(first, second, strict=True):
        for a, b in zip(row_a, row_b, strict=True):
            if (a is None) != (b is None):
                return None
            if a is not None:
                worst = max(worst, abs(a - b))
    return worst


def reproduce(sequence: str, seed: int, order_indices: list[int], strategies: list[str],
              ray: str | None, workers: int, root: Path) -> dict:
    from recall_merge.continual.runner import run_continual
    from recall_merge.engine import versions
    from recall_merge.provenance import machine

    bench.run_folder = lambda: root  # every config below lives in the fresh folder
    max_test = bench.OFFLINE_TEST_ITEMS if sequence in bench.OFFLINE_SEQUENCES else 40
    all_orders = orders(len(SEQUENCES[sequence]["tasks"]))
    cells = [(index, name) for index in order_indices for name in strategies]
    configs = []
    for index, name in cells:
        config = bench.continual_config(sequence, all_orders[index], [name], max_test, "summary",
                                        seed)
        configs.append({**config, "run_dir": str(Path(config["run_dir"]) / name)})
    started = time.perf_counter()
    if ray is None:
        outcomes = [run_continual(config, quiet=True) for config in configs]
    else:
        import ray as ray_module

        from recall_merge.continual.distributed import run_cells

        if not ray:  # a local cluster of `workers` CPUs, started here
            ray_module.init(num_cpus=workers, include_dashboard=False)
        outcomes = [results for results, _ in run_cells(configs, address=ray, quiet=True)]
    wall = time.perf_counter() - started
    rows = []
    for (index, name), results in zip(cells, outcomes, strict=True):
        order = all_orders[index]
        rebuilt = results["methods"][name].get("R")
        committed = committed_rows(sequence, seed, order, name)
        difference = (largest_difference(rebuilt, committed)
                      if rebuilt is not None and committed is not None else None)
        rows.append({"order": order, "strategy": name, "committed": committed is not None,
                     "max_abs_difference": difference, "equal": difference == 0.0,
                     "R": rebuilt})
        print(f"order {order} {name:20s} max |ΔR| {difference}", flush=True)
    mode = "serial" if ray is None else f"ray, {workers} local workers" if not ray else f"ray {ray}"
    return {"sequence": sequence, "seed": seed, "mode": mode, "cells": rows,
            "all_equal": all(row["equal"] for row in rows), "wall_seconds": round(wall, 1),
            "versions": versions(), "machine": machine(),
            "command": "python " + " ".join(sys.argv)}


def with_record(records: list[dict], record: dict) -> list[dict]:
    """``records`` with ``record`` added: one record per (sequence, seed, mode, CPU), so a rerun on
    the same kind of machine replaces its own record and one on another CPU stays beside it
    (float32 kernels may round differently between CPUs)."""
    def key(r: dict) -> tuple:
        return r["sequence"], r["seed"], r["mode"], r.get("machine", {}).get("cpu")

    return [r for r in records if key(r) != key(record)] + [record]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence", required=True, choices=sorted(SEQUENCES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--orders", type=int, nargs="+", default=[0])
    parser.add_argument("--strategies", nargs="+", default=["expert", "task_arithmetic"])
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run the cells as Ray tasks: alone a local Ray of --workers CPUs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the fresh run folder")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="recall-reproduce-"))
    try:
        record = reproduce(args.sequence, args.seed, args.orders, args.strategies, args.ray,
                           args.workers, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    stored = json.loads(OUT.read_text()) if OUT.exists() else {"records": []}
    stored["records"] = with_record(stored["records"], record)
    # every result file names its seed, versions and command at the top (each record keeps its own)
    stored.update(seed=record["seed"], versions=record["versions"], command=record["command"])
    OUT.write_text(json.dumps(stored, indent=1) + "\n")
    print(f"all equal: {record['all_equal']} ({record['wall_seconds']} s); wrote {OUT}")


if __name__ == "__main__":
    main()
