"""A continual run's results: ``results.json`` (tasks, the matrix R and the metrics of every
strategy, the config and versions), ``results.csv`` in long format, and the printed summary."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from recall_merge.continual import metrics
from recall_merge.continual.config import ContinualConfig
from recall_merge.data.task import Task
from recall_merge.io.atomic import atomic_open, write_json
from recall_merge.provenance import versions


def build_results(config: ContinualConfig, tasks: list[Task], num_eval: list[int],
                  methods: dict[str, Any]) -> dict[str, Any]:
    """The content of results.json (``num_eval``: how many items each task is scored on)."""
    return {
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
    """A small table: method, AP, BWT, FWT, mean forgetting, old data used."""
    def fmt(value: Any) -> str:
        return "   n/a" if value is None else f"{value:+.3f}"

    print(f"tasks: {', '.join(t['name'] for t in results['tasks'])}   ({results['normalisation']})",
          file=stream)
    print(f"{'method':34s} {'AP':>7s} {'BWT':>7s} {'FWT':>7s} {'forget':>7s}  old data", file=stream)
    for name, entry in results["methods"].items():
        if "R" not in entry:
            print(f"{name:34s} failed: {entry['error'].splitlines()[0]}", file=stream)
            continue
        print(f"{name:34s} {entry['AP']:7.3f} {fmt(entry['BWT']):>7s} {fmt(entry['FWT']):>7s} "
              f"{fmt(entry['average_forgetting']):>7s}  {'yes' if entry['uses_old_data'] else 'no'}",
              file=stream)
