"""A continual run's results: ``results.json`` (tasks, the matrix R and the metrics of every
strategy, the config and versions), ``results.csv`` in long format, and the printed summary."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from recall_merge.continual import metrics
from recall_merge.continual.config import ContinualConfig
from recall_merge.continual.intervals import CellItems, add_intervals
from recall_merge.data.task import Task
from recall_merge.io.atomic import atomic_open, write_json
from recall_merge.provenance import versions


def build_results(config: ContinualConfig, tasks: list[Task], num_eval: list[int],
                  methods: dict[str, Any], items: dict[str, CellItems] | None = None,
                  reference: str | None = None) -> dict[str, Any]:
    """The content of results.json (``num_eval``: how many items each task is scored on); with
    ``items`` (per strategy, the per-item scores of its cells) and ``reference``, the intervals
    of :func:`~recall_merge.continual.intervals.add_intervals` too."""
    results = {
        "tasks": [{"spec": spec, "name": t.name, "kind": t.kind, "metric": t.metric,
                   "synthetic": bool(t.meta.get("synthetic")),
                   "num_train": len(t.train), "num_eval": count}
                  for spec, t, count in zip(config.tasks, tasks, num_eval, strict=True)],
        "rows": ["base"] + [f"after step {i} ({t.name})" for i, t in enumerate(tasks, 1)],
        "normalisation": metrics.NORMALISATION,
        "methods": methods,
        "seed": config.seed,
        "config": config.model_dump(mode="json"),
        "versions": versions(),
    }
    if items is not None and reference is not None:
        add_intervals(results, items, reference, tasks)
    return results


def write_results(run_dir: Path, results: dict[str, Any]) -> None:
    write_json(run_dir / "results.json", results)
    write_csv(run_dir / "results.csv", results)


def write_csv(path: Path, results: dict[str, Any]) -> None:
    """Long format: one line per R cell and per metric (method, quantity, row, task, value)."""
    names = [t["name"] for t in results["tasks"]]
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "quantity", "row", "task", "value"])
        for method, entry in results["methods"].items():
            if "R" not in entry:
                writer.writerow([method, "error", "", "", entry.get("error", "")])
                continue
            for row_index, row in enumerate(entry["R"]):
                for name, value in zip(names, row, strict=True):
                    writer.writerow([method, "R", results["rows"][row_index], name, value])
            for quantity in ("AP", "BWT", "FWT", "average_forgetting"):
                writer.writerow([method, quantity, "", "", entry[quantity]])
            for name, value in zip(names, entry["forgetting"], strict=False):
                writer.writerow([method, "forgetting", "", name, value])


def print_summary(results: dict[str, Any], stream=sys.stdout) -> None:
    """A small table: method, AP with its 95 % interval, BWT, FWT, mean forgetting, old data used,
    and the verdict of the paired AP comparison with the reference strategy."""
    def fmt(value: Any) -> str:
        return "   n/a" if value is None else f"{value:+.3f}"

    reference = results.get("reference_strategy")  # absent from results of older versions
    compared = results.get("vs_reference") or {}
    print(f"tasks: {', '.join(t['name'] for t in results['tasks'])}   ({results['normalisation']})",
          file=stream)
    print(f"{'method':34s} {'AP  [95% interval]':>19s} {'BWT':>7s} {'FWT':>7s} {'forget':>7s}  "
          f"old data{'  vs reference (ΔAP)' if reference else ''}", file=stream)
    for name, entry in results["methods"].items():
        if "R" not in entry:
            print(f"{name:34s} failed: {entry['error'].splitlines()[0]}", file=stream)
            continue
        ap = (entry.get("intervals") or {}).get("AP")
        band = f"[{ap['low']:.2f}, {ap['high']:.2f}]" if ap else ""
        line = (f"{name:34s} {entry['AP']:6.3f} {band:>12s} {fmt(entry['BWT']):>7s} "
                f"{fmt(entry['FWT']):>7s} {fmt(entry['average_forgetting']):>7s}  "
                f"{'yes' if entry['uses_old_data'] else 'no':8s}")
        if reference:
            line += "  " + _versus(name, reference, compared.get(name))
        print(line.rstrip(), file=stream)
    if reference:
        method = results.get("interval_method", {})
        print(f"[95% interval]: bootstrap over the test items ({method.get('resamples', '?')} "
              f"resamples); vs reference: paired AP difference with {reference}, Holm-adjusted "
              f"over {sum(1 for value in compared.values() if value)} strategies (tie: the "
              f"interval holds 0 or p_holm >= 0.05)", file=stream)
        stand_ins = sorted(task for task, metric in method.get("per_item", {}).items()
                           if metric == "sentence_bleu")
        if stand_ins:
            print(f"(intervals of {', '.join(stand_ins)}: mean sentence BLEU, the per-item "
                  f"stand-in for corpus BLEU)", file=stream)


def _versus(name: str, reference: str, comparison: dict[str, Any] | None) -> str:
    if name == reference:
        return "reference"
    if comparison is None:
        return "n/a"
    return f"{comparison['verdict']:6s} {comparison['estimate']:+.3f}"
