"""Confidence intervals for continual-learning metrics, from per-item scores.

Every continual metric here is a macro-average over tasks of a per-item quantity:

- AP of a strategy: per item, its score on the final model (task i's test items), averaged within
  each task, then over tasks.
- BWT: per item of task i < T, the score after the last step minus the score right after learning
  task i (the same items, so the difference is paired), averaged within task, then over tasks.
- A difference between two strategies (ΔAP, ΔBWT): per item, strategy A's value minus B's on the
  same item — a paired comparison, which is far tighter than two separate intervals.

So one estimator serves all of them: ``runs`` is a list of runs (task orders × training seeds),
each a list of per-task arrays of per-item values. The statistic is the mean over runs of the
macro mean over tasks. The bootstrap resamples runs first, then items within each task of each
drawn run (a two-stage, stratified bootstrap: tasks are never resampled, since the task set is
fixed by design; orders and seeds are, since they are a sample of the ones a user could run).

With one run, it reduces to the stratified item bootstrap. 10,000 resamples by default; seeded.

Runs that score the same test items (the task orders of one training seed: the split depends on
the seed, not the order) are not independent samples of items: items are crossed with those runs,
not nested in them, and a symmetric merge of the same experts ends in the same model in every
order. Resampling each run's items on its own would count the same items once per run and shrink
the interval by about √runs. ``item_groups`` names, per run, the set of items it scores; runs of
one group get one shared draw of item positions per task in each resample (a crossed bootstrap),
runs of different groups independent draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

RunValues = Sequence[Sequence[float]]  # one run: per task, the per-item values


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    level: float
    resamples: int
    p_value: float  # two-sided bootstrap p for "the mean is 0" (meaningful for differences)
    runs: int
    items: int  # items per run, summed over tasks (of the first run)

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def macro_mean(run: RunValues) -> float:
    """Mean over tasks of the mean over each task's items."""
    return float(np.mean([np.mean(np.asarray(task, dtype=np.float64)) for task in run]))


def bootstrap_interval(runs: Sequence[RunValues], *, resamples: int = 10_000, seed: int = 0,
                       level: float = 0.95, item_groups: Sequence[object] | None = None,
                       task_keys: Sequence[Sequence[object]] | None = None) -> Interval:
    """Percentile interval of the mean over runs of each run's macro mean over tasks.

    ``item_groups``: per run, a key of the items it scores (runs with one key score the same items
    of each task: their item draws are shared); None treats every run's items as its own.
    ``task_keys``: per run, a key for each of its tasks, naming which task of its item group it is
    (runs of a group may hold different subsets of tasks, as BWT's do: the last task trained has
    no term); None: the tasks' positions, so every run of a group lists the same tasks in the same
    order."""
    runs = [[np.asarray(task, dtype=np.float64) for task in run] for run in runs]
    if item_groups is not None and len(set(item_groups)) < len(runs):
        if task_keys is None:
            for group in set(item_groups):
                if len({len(run) for run, key in zip(runs, item_groups, strict=True)
                        if key == group}) > 1:
                    raise ValueError("runs of one item group must have the same tasks and items "
                                     "(or name their tasks with task_keys)")
        keys = ([list(range(len(run))) for run in runs] if task_keys is None
                else [list(run_keys) for run_keys in task_keys])
        return _crossed_interval(runs, list(item_groups), keys, resamples=resamples, seed=seed,
                                 level=level)
    _check(runs, level, resamples)
    rng = np.random.default_rng(seed)
    count = len(runs)
    # Stage 1: which run fills each of the `count` slots of each resample.
    chosen = rng.integers(0, count, size=(resamples, count)) if count > 1 else np.zeros(
        (resamples, 1), dtype=np.int64)
    totals = np.zeros(resamples)
    # Stage 2: for each slot, resample the items of the run it drew, task by task.
    for slot in range(count):
        for index, run in enumerate(runs):
            rows = np.flatnonzero(chosen[:, slot] == index)
            if rows.size == 0:
                continue
            task_means = np.empty((rows.size, len(run)))
            for position, task in enumerate(run):
                draws = rng.integers(0, task.size, size=(rows.size, task.size))
                task_means[:, position] = task[draws].mean(axis=1)
            totals[rows] += task_means.mean(axis=1)
    return _interval(runs, totals / count, level, resamples)


def _check(runs: list[list[np.ndarray]], level: float, resamples: int) -> None:
    if not runs or any(not run for run in runs):
        raise ValueError("need at least one run, each with at least one task")
    if any(task.size == 0 for run in runs for task in run):
        raise ValueError("every task needs at least one scored item")
    if any(not np.isfinite(task).all() for run in runs for task in run):
        raise ValueError("per-item values must be finite")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError("level must lie in (0, 1) and resamples be positive")


def _interval(runs: list[list[np.ndarray]], statistics: np.ndarray, level: float,
              resamples: int) -> Interval:
    """The percentile interval and two-sided p of the resampled ``statistics`` (one per resample)."""
    estimate = float(np.mean([macro_mean(run) for run in runs]))
    tail = (1 - level) / 2
    low, high = np.quantile(statistics, [tail, 1 - tail])
    p_value = min(1.0, 2 * min(float(np.mean(statistics <= 0)), float(np.mean(statistics >= 0))))
    return Interval(estimate=estimate, low=float(low), high=float(high), level=level,
                    resamples=resamples, p_value=p_value, runs=len(runs),
                    items=int(sum(task.size for task in runs[0])))


def _crossed_interval(runs: list[list[np.ndarray]], item_groups: list[object],
                      task_keys: list[list[object]], *, resamples: int, seed: int,
                      level: float) -> Interval:
    """bootstrap_interval with shared item draws inside each item group (see the module's
    docstring): runs are resampled as before; then, per group and task key, one draw of item
    positions serves every run of the group that holds that task."""
    _check(runs, level, resamples)
    if [len(keys) for keys in task_keys] != [len(run) for run in runs]:
        raise ValueError("task_keys: one key per task of each run")
    if any(len(set(keys)) < len(keys) for keys in task_keys):
        raise ValueError("task_keys: a run names each task once")
    rng = np.random.default_rng(seed)
    count = len(runs)
    chosen = rng.integers(0, count, size=(resamples, count))  # which run fills each slot
    macro = np.zeros((resamples, count))  # per resample, each run's macro mean under its draws
    for group in dict.fromkeys(item_groups):
        members = [index for index, key in enumerate(item_groups) if key == group]
        for task in dict.fromkeys(key for index in members for key in task_keys[index]):
            holders = [(index, task_keys[index].index(task)) for index in members
                       if task in task_keys[index]]
            sizes = {runs[index][position].size for index, position in holders}
            if len(sizes) > 1:
                raise ValueError("runs of one item group must have the same tasks and items "
                                 "(the same number of items per task key)")
            size = sizes.pop()
            draws = rng.integers(0, size, size=(resamples, size))  # shared by the group's runs
            for index, position in holders:
                macro[:, index] += runs[index][position][draws].mean(axis=1) / len(runs[index])
    statistics = np.take_along_axis(macro, chosen, axis=1).mean(axis=1)
    return _interval(runs, statistics, level, resamples)


def paired_differences(first: Sequence[RunValues], second: Sequence[RunValues]) -> list[list[np.ndarray]]:
    """Per item, ``first`` minus ``second``: the same runs, tasks and items in the same order."""
    if len(first) != len(second):
        raise ValueError("paired runs: both strategies need the same runs")
    out = []
    for run_a, run_b in zip(first, second, strict=True):
        if len(run_a) != len(run_b):
            raise ValueError("paired runs: both strategies need the same tasks")
        tasks = []
        for task_a, task_b in zip(run_a, run_b, strict=True):
            a, b = np.asarray(task_a, dtype=np.float64), np.asarray(task_b, dtype=np.float64)
            if a.shape != b.shape:
                raise ValueError("paired runs: both strategies need the same items per task")
            tasks.append(a - b)
        out.append(tasks)
    return out


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment: adjusted p-values, monotone, controlling the family-wise
    error over the comparisons given (reject where adjusted p < α)."""
    ordered = sorted(p_values.items(), key=lambda item: item[1])
    total = len(ordered)
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, (name, p) in enumerate(ordered):
        running = max(running, min(1.0, (total - rank) * p))
        adjusted[name] = running
    return adjusted
