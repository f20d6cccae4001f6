"""The continual-learning benchmark: each sequence of ``sequences.py`` in three task orders, every
strategy on the same splits, seeds and fine-tuning budget, on SmolLM2-135M-Instruct.

    python benchmarks/continual/run.py --sequence domain              # all strategies, 3 orders
    python benchmarks/continual/run.py --sequence task --orders 0 --strategies expert recall
    python benchmarks/continual/run.py --table                        # README tables from the JSON

Each (sequence, order) is one `recall continual` run folder under
``$RECALL_MERGE_CACHE/benchmark_runs/`` (durable: an interrupted command continues where it
stopped); experts fine-tuned from the base are trained once per task and shared by every order and
sequence (``expert_cache``). ``--cells summary`` scores only the R cells AP, BWT and FWT read.
Writes ``benchmarks/results/continual_SEQUENCE.json`` (every R matrix, AP/BWT/FWT per order, mean
and standard deviation over the orders run, wall times, seed, versions, configs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(HERE))

from sequences import EVALUATION, SEQUENCES, STRATEGIES, TRAINING, orders  # noqa: E402


def run_folder() -> Path:
    from recall_merge.checkpoints.packaged import cache_dir

    return cache_dir() / "benchmark_runs"


def continual_config(sequence: str, order: list[int], strategies: list[str], max_test: int,
                     cells: str, seed: int) -> dict:
    spec = SEQUENCES[sequence]
    label = "-".join(str(i) for i in order)
    return {
        "model": "smollm2",
        "tasks": [spec["tasks"][i] for i in order],
        "max_train": 240, "max_dev": 16, "max_test": max_test, "seed": seed,
        "run_dir": str(run_folder() / f"{sequence}_t{max_test}_s{seed}" / f"order_{label}"),
        "expert_cache": str(run_folder() / f"experts_t{max_test}_s{seed}"),
        "cells": cells,
        "training": dict(TRAINING),
        "evaluation": dict(EVALUATION),
        "merge_samples": 64,
        "strategies": [{"name": name, **STRATEGIES[name]} for name in strategies],
    }


def _stats(values: list[float | None]) -> dict:
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "values": values}
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return {"mean": statistics.fmean(present), "std": std, "values": values}


def summarise(runs: list[dict]) -> dict:
    """Per strategy: AP, BWT, FWT over the orders run (mean, sample std, values)."""
    names = list(dict.fromkeys(name for run in runs for name in run["results"]["methods"]))
    summary = {}
    for name in names:
        entries = [run["results"]["methods"].get(name, {}) for run in runs]
        summary[name] = {metric: _stats([entry.get(metric) for entry in entries])
                         for metric in ("AP", "BWT", "FWT", "average_forgetting")}
        summary[name]["orders"] = len([e for e in entries if "R" in e])
    return summary


def expert_gains(runs: list[dict]) -> dict:
    """Each task's base score and its own expert's score (the expert rows' diagonal)."""
    gains: dict[str, dict] = {}
    for run in runs:
        results = run["results"]
        entry = results["methods"].get("expert")
        if not entry or "R" not in entry:
            continue
        for j, task in enumerate(results["tasks"]):
            gains[task["spec"] if isinstance(task["spec"], str) else task["name"]] = {
                "base": entry["R"][0][j], "expert": entry["R"][j + 1][j],
                "gain": entry["R"][j + 1][j] - entry["R"][0][j], "metric": task["metric"]}
    return gains


def run_sequence(args: argparse.Namespace) -> Path:
    from recall_merge.continual.runner import print_summary, run_continual
    from recall_merge.engine import versions

    spec = SEQUENCES[args.sequence]
    out = RESULTS / f"continual_{args.sequence}.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    runs = {tuple(r["order"]): r for r in previous.get("runs", [])
            if r["max_test"] == args.max_test and r["seed"] == args.seed}
    all_orders = orders(len(spec["tasks"]))
    for index in args.orders:
        order = all_orders[index]
        config = continual_config(args.sequence, order, args.strategies, args.max_test, args.cells,
                                  args.seed)
        started = time.perf_counter()
        results = run_continual(config, quiet=args.quiet)
        seconds = time.perf_counter() - started
        print(f"\n== {args.sequence} order {order} ({seconds:.0f} s)")
        print_summary(results)
        old = runs.get(tuple(order))
        # wall time of the run that did the work: a rerun that found every stage on disk keeps
        # the earlier figure
        timing = old["wall_seconds"] if old and seconds < 0.5 * old.get("wall_seconds", 0) else seconds
        runs[tuple(order)] = {"order": order, "tasks": config["tasks"], "max_test": args.max_test,
                              "seed": args.seed, "cells": args.cells, "wall_seconds": round(timing, 1),
                              "results": results}
        ordered = sorted(runs.values(), key=lambda r: all_orders.index(r["order"]))
        data = {"sequence": args.sequence, **spec, "seed": args.seed, "max_test": args.max_test,
                "training": TRAINING, "evaluation": EVALUATION,
                "command": f"python benchmarks/continual/run.py --sequence {args.sequence}",
                "runs": ordered, "summary": summarise(ordered), "expert_gains": expert_gains(ordered),
                "versions": versions()}
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2) + "\n")
    return out


def _fmt(stat: dict, signed: bool = True) -> str:
    if stat["mean"] is None:
        return "n/a"
    text = f"{stat['mean']:+.3f}" if signed else f"{stat['mean']:.3f}"
    return text + (f" ± {stat['std']:.3f}" if len([v for v in stat["values"] if v is not None]) > 1 else "")


def table(sequence: str) -> str:
    """The README table of one sequence (markdown)."""
    data = json.loads((RESULTS / f"continual_{sequence}.json").read_text())
    lines = [f"**{data['description']}** ({data['role']}; {len(data['runs'])} order(s), "
             f"{data['max_test']} test items per task)", "",
             "| strategy | AP | BWT | FWT | orders |", "|---|---|---|---|---|"]
    for name, stat in data["summary"].items():
        lines.append(f"| {name} | {_fmt(stat['AP'], False)} | {_fmt(stat['BWT'])} | "
                     f"{_fmt(stat['FWT'])} | {stat['orders']} |")
    gains = data.get("expert_gains", {})
    if gains:
        lines += ["", "| task | base | own expert |", "|---|---|---|"]
        lines += [f"| {task} | {g['base']:.3f} | {g['expert']:.3f} |" for task, g in gains.items()]
    walls = [f"order {'-'.join(map(str, r['order']))}: {r['wall_seconds'] / 60:.1f} min" for r in data["runs"]]
    lines += ["", "Wall time on 2 CPU cores: " + ", ".join(walls)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence", choices=sorted(SEQUENCES))
    parser.add_argument("--orders", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--max-test", type=int, default=40)
    parser.add_argument("--cells", choices=["full", "summary"], default="summary")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--table", action="store_true", help="print the README tables and exit")
    args = parser.parse_args()
    if args.table:
        for sequence in SEQUENCES:
            if (RESULTS / f"continual_{sequence}.json").exists():
                print(table(sequence) + "\n")
        return
    if not args.sequence:
        parser.error("--sequence is required (or --table)")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"wrote {run_sequence(args)}")


if __name__ == "__main__":
    main()
