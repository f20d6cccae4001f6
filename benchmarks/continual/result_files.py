"""Where the continual benchmark's results live and how one sequence's are read back: the result
file of each (sequence, training seed), which model and reference strategy a sequence uses, and
the per-strategy summary over task orders. Shared by ``run.py`` (which writes the files) and
``benchmark_tables.py`` (which turns them into the docs' tables, needing nothing from run.py).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from sequences import OFFLINE_SEQUENCES, SEQUENCES, chosen_default

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = REPO / "benchmarks" / "results"


def result_file(name: str) -> Path:
    """A file in ``benchmarks/results`` (read through here, so one RESULTS serves every reader)."""
    return RESULTS / name


def sequence_model(sequence: str) -> str:
    """The packaged model a sequence runs on (SmolLM2 unless the sequence names another)."""
    return SEQUENCES[sequence].get("model", "smollm2")


def reference(sequence: str) -> str:
    """The strategy every other is compared with in a sequence's pooled intervals: on the offline
    sequences the default the development sequence chose, once every candidate has all its orders,
    and RECALL's default (``recall``) until then; the paper form on the historical ones."""
    return (chosen_default() or "recall") if sequence in OFFLINE_SEQUENCES else "recall_paper"


def results_path(sequence: str, seed: int = 0) -> Path:
    """Where a sequence's continual runs at ``seed`` go: seed 0 (the main tables) in
    ``continual_SEQUENCE.json``, another seed in a file of its own, so neither overwrites the other."""
    return RESULTS / (f"continual_{sequence}.json" if seed == 0
                      else f"continual_{sequence}_seed{seed}.json")


def other_seed_results(sequence: str) -> dict[int, Path]:
    """seed -> file, for the continual runs of ``sequence`` at seeds other than 0."""
    found = {}
    for path in RESULTS.glob(f"continual_{sequence}_seed*.json"):
        suffix = path.stem.removeprefix(f"continual_{sequence}_seed")
        if suffix.isdigit():
            found[int(suffix)] = path
    return dict(sorted(found.items()))


def sequences_with_results() -> list[str]:
    """The sequences whose ``benchmarks/results/continual_SEQUENCE.json`` exists, in SEQUENCES order."""
    return [s for s in SEQUENCES if (RESULTS / f"continual_{s}.json").exists()]


def order_stats(values: list[float | None]) -> dict:
    """Mean and sample standard deviation of one metric over the task orders run (None: an order
    without it), with the values themselves."""
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "values": values}
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return {"mean": statistics.fmean(present), "std": std, "values": values}


def summarise(runs: list[dict]) -> dict:
    """Per strategy: AP, BWT, FWT over the orders run (mean, sample std, values)."""
    runs = [run for run in runs if run["results"]]
    names = list(dict.fromkeys(name for run in runs for name in run["results"]["methods"]))
    summary = {}
    for name in names:
        entries = [run["results"]["methods"].get(name, {}) for run in runs]
        summary[name] = {metric: order_stats([entry.get(metric) for entry in entries])
                         for metric in ("AP", "BWT", "FWT", "average_forgetting")}
        summary[name]["orders"] = len([e for e in entries if "R" in e])
        for key in ("perplexity", "zero_shot_mean"):
            summary[name][key] = order_stats([run.get("generalisation", {}).get(name, {}).get(key)
                                         for run in runs])
        summary[name]["wall_seconds"] = order_stats([run.get("wall_seconds", {}).get(name) for run in runs])
    return summary


def sequence_scores(entry: dict, zero_shot: dict | list) -> dict:
    """A generalisation entry restricted to one sequence's zero-shot tasks, its mean over those:
    the base's stored entry holds the tasks of every sequence scored so far (it is shared), and a
    mean over another sequence's set is not comparable with the strategies' means."""
    if "zero_shot" not in entry:
        return dict(entry)
    scores = {task: entry["zero_shot"][task] for task in zero_shot if task in entry["zero_shot"]}
    restricted = {key: value for key, value in entry.items()
                  if key not in ("zero_shot", "zero_shot_mean")}
    if scores:
        restricted["zero_shot"] = scores
        if len(scores) == len(zero_shot):
            restricted["zero_shot_mean"] = statistics.fmean(scores.values())
    return restricted
