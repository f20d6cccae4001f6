"""95 % intervals of one run's metrics, from the per-item scores its evaluation files keep.

Per strategy, ``results.json`` gets ``intervals``: AP (per item of every task, the score of the
final model) and BWT (per item of every task i < T, the score after the last step minus the score
right after learning task i — the same items, so paired). At the top level, ``vs_reference`` holds,
for every other strategy, the paired interval of its AP minus the reference strategy's, a
Holm-adjusted p-value over all the strategies compared and a verdict. Every interval is the
stratified bootstrap of :mod:`~recall_merge.continual.statistics` (items resampled within each
task, tasks macro-averaged) with the run's seed, so a rerun writes the same numbers. One run is one
task order and one seed: ``runs`` has one element here; the benchmark pools runs with the same
functions.

A cell scored before per-item scores were kept has no ``items``: whatever needs it is null.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recall_merge.continual.config import ContinualConfig, Strategy
from recall_merge.continual.statistics import bootstrap_interval, holm, paired_differences
from recall_merge.data.task import Task
from recall_merge.errors import ConfigError, excerpt

RESAMPLES = 10_000
LEVEL = 0.95
ALPHA = 0.05  # a difference counts where its Holm-adjusted p is below this

# per strategy: per step row 1..T, per task, the per-item scores of that cell (None: not kept)
CellItems = list[list[list[float] | None]]


def reference_strategy(config: ContinualConfig, strategies: Sequence[Strategy]) -> str:
    """The strategy the others are compared with: ``reference_strategy`` when set (refused when
    no strategy has that name), else the first RECALL merge, else the first strategy."""
    names = [strategy.name for strategy in strategies]
    if config.reference_strategy is not None:
        if config.reference_strategy not in names:
            raise ConfigError(
                f"reference_strategy {excerpt(config.reference_strategy, 80)} is not one of the "
                f"strategies ({excerpt(', '.join(names), 160)})",
                "name one of the strategies (as results.json names them), or leave "
                "reference_strategy out for the first RECALL merge")
        return config.reference_strategy
    recall = [s.name for s in strategies if s.kind == "merge" and s.method == "recall"]
    return (recall or names)[0]


def cell_items(tasks: Sequence[Task], paths: Sequence[Path]) -> CellItems:
    """The per-item scores of each task in each of the evaluation files ``paths`` (rows 1..T)."""
    rows: CellItems = []
    for path in paths:
        stored = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        rows.append([_items(stored.get(task.name)) for task in tasks])
    return rows


def _items(cell: Any) -> list[float] | None:
    items = cell.get("items") if isinstance(cell, dict) else None
    return [float(value) for value in items] if isinstance(items, list) and items else None


def ap_values(rows: CellItems) -> list[list[float]] | None:
    """One run's per-task item values of AP: the last row (None when a cell lacks items)."""
    last = rows[-1]
    return None if any(items is None for items in last) else [list(items) for items in last]


def bwt_values(rows: CellItems) -> list[np.ndarray] | None:
    """One run's per-task item values of BWT: R[T][i] − R[i][i] per item of task i < T (None
    with one task, or when a cell lacks items or the two cells hold other items)."""
    count = len(rows)
    if count < 2:
        return None
    values = []
    for task in range(count - 1):
        final, learned = rows[-1][task], rows[task][task]
        if final is None or learned is None or len(final) != len(learned):
            return None
        values.append(np.asarray(final) - np.asarray(learned))
    return values


def _interval(values: Sequence[Sequence[float]] | None, seed: int) -> dict[str, Any] | None:
    if values is None:
        return None
    return bootstrap_interval([values], resamples=RESAMPLES, seed=seed, level=LEVEL).as_dict()


def verdict(interval: dict[str, Any], p_holm: float) -> str:
    """better / worse than the reference, or tie (the interval holds 0, or p_holm ≥ α)."""
    if interval["low"] <= 0 <= interval["high"] or p_holm >= ALPHA:
        return "tie"
    return "better" if interval["estimate"] > 0 else "worse"


def add_intervals(results: dict[str, Any], items: dict[str, CellItems], reference: str,
                  tasks: Sequence[Task]) -> None:
    """Write ``intervals`` into every scored strategy of ``results`` and the top-level
    ``reference_strategy``, ``vs_reference`` and ``interval_method``."""
    from recall_merge.continual.scoring import item_metric

    seed = int(results["seed"])
    methods = results["methods"]
    for name, entry in methods.items():
        if "R" in entry:
            rows = items.get(name)
            entry["intervals"] = {
                "AP": _interval(ap_values(rows), seed) if rows else None,
                "BWT": _interval(bwt_values(rows), seed) if rows else None}
    reference_ap = ap_values(items[reference]) if reference in items else None
    compared: dict[str, dict[str, Any] | None] = {}
    for name in methods:
        if name == reference:
            continue
        own = ap_values(items[name]) if name in items else None
        compared[name] = None
        if own is not None and reference_ap is not None and \
                [len(t) for t in own] == [len(t) for t in reference_ap]:
            compared[name] = bootstrap_interval(
                paired_differences([own], [reference_ap]), resamples=RESAMPLES, seed=seed,
                level=LEVEL).as_dict()
    adjusted = holm({name: entry["p_value"] for name, entry in compared.items() if entry})
    for name, entry in compared.items():
        if entry is not None:
            entry["p_holm"] = adjusted[name]
            entry["verdict"] = verdict(entry, adjusted[name])
    results["reference_strategy"] = reference
    results["vs_reference"] = compared
    results["interval_method"] = {
        "resamples": RESAMPLES, "level": LEVEL, "seed": seed, "alpha": ALPHA,
        "per_item": {task.name: item_metric(task) for task in tasks},
        "description": (
            "percentile bootstrap over the test items, resampled within each task, tasks "
            "macro-averaged; vs_reference: per item, AP of the strategy minus AP of the reference "
            "strategy (paired), p-values Holm-adjusted over the strategies compared, verdict tie "
            "where the interval holds 0 or p_holm >= alpha; null where a scored cell has no "
            "per-item scores (an evaluation file written before they were kept)"),
    }
