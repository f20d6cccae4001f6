"""The benchmark's per-item data and the intervals pooled over task orders and training seeds.

Each (sequence, seed, order, strategy) run folder leaves ``items.json`` (the harness writes it: per
step row, per task, the per-item scores of every scored cell). ``record_run`` copies what AP and
BWT need of it into one compressed file per sequence, committed beside the tables:

    benchmarks/results/items/continual_SEQUENCE.json.gz
    {"tasks": [task names, in the sequence's listed order],
     "runs": {"s0/o0-1-2-3": {"seed": 0, "order": [0, 1, 2, 3],
                              "strategies": {"recall": {"final": [[...] per task],
                                                        "learned": [[...] per task]}}}}}

``final`` holds, per task (in the sequence's listed order, whatever order the run trained in), the
per-item scores of the model after the last step; ``learned`` the scores right after that task's
own step (None for the last task trained, whose BWT term does not exist). Scores are rounded to 4
decimals (0/1 for accuracy and exact match), so a recomputed interval matches the table to the
printed precision.

``pooled_intervals`` reads that file and computes, per strategy, the 95 % intervals of AP and BWT
over every run present, and for every strategy the paired interval of its AP minus the reference
strategy's on the runs both have, with Holm's correction over the strategies compared: the
two-stage bootstrap of :mod:`recall_merge.continual.statistics` (resample runs, then items within
each task; tasks macro-averaged; 10,000 resamples, seed 0).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np

from recall_merge.continual.intervals import ALPHA, LEVEL, RESAMPLES, verdict
from recall_merge.continual.statistics import (
    bootstrap_interval,
    holm,
    macro_mean,
    paired_differences,
)

ITEMS = Path(__file__).resolve().parents[1] / "results" / "items"
BOOTSTRAP_SEED = 0  # one seed for every pooled interval, so the tables are reproducible


def items_path(sequence: str) -> Path:
    return ITEMS / f"continual_{sequence}.json.gz"


def run_key(seed: int, order: list[int]) -> str:
    return f"s{seed}/o{'-'.join(str(i) for i in order)}"


def load_items(sequence: str) -> dict[str, Any]:
    path = items_path(sequence)
    if not path.exists():
        return {"tasks": None, "runs": {}}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return json.load(handle)


def save_items(sequence: str, data: dict[str, Any]) -> Path:
    """Written deterministically (sorted keys, no gzip timestamp), so an unchanged file stays
    byte-identical in git."""
    path = items_path(sequence)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
        handle.write(text.encode("utf-8"))
    temporary.replace(path)
    return path


def _rounded(values: list[float] | None) -> list[float] | None:
    return None if values is None else [round(float(v), 4) for v in values]


def record_run(sequence: str, seed: int, order: list[int], strategy: str,
               run_items: dict[str, Any]) -> None:
    """Copy AP's and BWT's per-item scores of ``strategy`` out of one run's ``items.json``
    (``run_items``; tasks in training order: the k-th trained is the sequence's ``order[k]``-th)
    into the sequence's file, tasks in the sequence's listed order."""
    rows = run_items["items"].get(strategy)
    if rows is None:
        return
    trained = run_items["tasks"]
    listed: list[str | None] = [None] * len(order)
    final: list[list[float] | None] = [None] * len(order)
    learned: list[list[float] | None] = [None] * len(order)
    for position, listed_index in enumerate(order):
        listed[listed_index] = trained[position]
        final[listed_index] = _rounded(rows[-1][position])
        if position < len(order) - 1:
            learned[listed_index] = _rounded(rows[position][position])
    data = load_items(sequence)
    if data["tasks"] not in (None, listed):
        raise ValueError(f"{sequence}: this run's tasks {listed} differ from the recorded "
                         f"{data['tasks']} (the sequence changed: start a new items file)")
    data["tasks"] = listed
    entry = data["runs"].setdefault(run_key(seed, order), {"seed": seed, "order": order,
                                                           "strategies": {}})
    entry["strategies"][strategy] = {"final": final, "learned": learned}
    save_items(sequence, data)


def _ap_values(cells: dict[str, Any]) -> list[list[float]] | None:
    final = cells["final"]
    return None if any(task is None for task in final) else final


def _bwt_values(cells: dict[str, Any]) -> tuple[list[np.ndarray], list[int]] | None:
    """Per task with a BWT term, its per-item final − learned scores, and the task's position in
    the sequence's listed order (its key: which tasks have a term depends on the order)."""
    values, keys = [], []
    for listed, (final, learned) in enumerate(zip(cells["final"], cells["learned"], strict=True)):
        if learned is None:
            continue  # the last task trained in this order: no BWT term
        if final is None or len(final) != len(learned):
            return None
        values.append(np.asarray(final) - np.asarray(learned))
        keys.append(listed)
    return (values, keys) if values else None


def _interval(runs: list, item_groups: list[int], task_keys: list[list[int]] | None = None
              ) -> dict[str, Any] | None:
    """``item_groups``: the training seed of each run. The orders of one seed score the same test
    items, so they share item draws per task (statistics.bootstrap_interval); AP's runs list every
    task in the sequence's order, BWT's name theirs with ``task_keys`` (the last trained has no
    term, and it differs by order)."""
    if not runs or any(run is None for run in runs):
        return None
    return bootstrap_interval(runs, resamples=RESAMPLES, seed=BOOTSTRAP_SEED, level=LEVEL,
                              item_groups=item_groups, task_keys=task_keys).as_dict()


def _paired_ap(runs: dict[str, Any], name: str, reference: str
               ) -> tuple[list[str], list[list[np.ndarray]], list[int]] | None:
    """The runs (keys, in ``runs``' order) that hold both strategies, ``name``'s final per-item
    scores minus ``reference``'s on each, and each run's training seed; None where there is no
    such run or one lacks a final score."""
    keys = [key for key, entry in runs.items() if {name, reference} <= set(entry["strategies"])]
    own = [_ap_values(runs[key]["strategies"][name]) for key in keys]
    ref = [_ap_values(runs[key]["strategies"][reference]) for key in keys]
    if not keys or any(v is None for v in own + ref):
        return None
    return keys, paired_differences(own, ref), [runs[key]["seed"] for key in keys]


def pooled_intervals(data: dict[str, Any], reference: str, seeds: list[int] | None = None) -> dict:
    """Per strategy: ``AP``, ``BWT`` (intervals over its runs), ``runs`` (their keys) and
    ``vs_reference`` (paired ΔAP on the runs both have, with ``p_holm`` and ``verdict``).
    ``seeds`` restricts the pool to those training seeds."""
    runs = {key: entry for key, entry in sorted(data["runs"].items())
            if seeds is None or entry["seed"] in seeds}
    names = list(dict.fromkeys(name for entry in runs.values() for name in entry["strategies"]))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        keys = [key for key, entry in runs.items() if name in entry["strategies"]]
        cells = [runs[key]["strategies"][name] for key in keys]
        seeds_of = [runs[key]["seed"] for key in keys]
        bwt = [_bwt_values(c) for c in cells]
        bwt_interval = None if any(b is None for b in bwt) else _interval(
            [values for values, _ in bwt], seeds_of, [keys for _, keys in bwt])
        out[name] = {"runs": keys, "AP": _interval([_ap_values(c) for c in cells], seeds_of),
                     "BWT": bwt_interval, "vs_reference": None}
    compared = {}
    for name in names:
        if name == reference or reference not in names:
            continue
        paired = _paired_ap(runs, name, reference)
        if paired is None:
            continue
        keys, differences, seeds = paired
        compared[name] = bootstrap_interval(differences, resamples=RESAMPLES, seed=BOOTSTRAP_SEED,
                                            level=LEVEL, item_groups=seeds).as_dict()
        compared[name]["run_keys"] = keys
    adjusted = holm({name: entry["p_value"] for name, entry in compared.items()})
    for name, entry in compared.items():
        entry["p_holm"] = adjusted[name]
        entry["verdict"] = verdict(entry, adjusted[name])
        out[name]["vs_reference"] = entry
    return {"reference": reference, "strategies": out,
            "method": {"resamples": RESAMPLES, "level": LEVEL, "seed": BOOTSTRAP_SEED,
                       "alpha": ALPHA, "holm_over": sorted(compared),
                       "description": "two-stage percentile bootstrap: runs (task orders × "
                                      "training seeds) resampled, then items within each task, "
                                      "one draw per task shared by the orders of a training "
                                      "seed (they score the same items); tasks "
                                      "macro-averaged; ΔAP paired by run and item"}}


def _ci(interval: dict[str, Any] | None, signed: bool = False) -> str:
    if interval is None:
        return "n/a"
    form = "+.3f" if signed else ".3f"
    return (f"{interval['estimate']:{form}} [{interval['low']:{form}}, "
            f"{interval['high']:{form}}]")


def _p(value: float, resamples: int) -> str:
    """A bootstrap p-value as printed: below the resampling's resolution it is ``< 1/resamples``
    (no resample crossed zero), never a bare 0."""
    return f"< {1 / resamples:g}" if value == 0 else f"{value:.3g}"


def pooled_table(sequence: str, reference: str, description: str, command: str,
                 walls: dict[str, list[float]], legend: dict[str, str]) -> str:
    """The markdown table of a sequence's pooled intervals (every strategy with items), with the
    settings a reader needs next to it: n, seeds, orders, resamples, reference, command, wall."""
    data = load_items(sequence)
    pooled = pooled_intervals(data, reference)
    lines = [f"**{description}** — 95 % intervals pooled over every (training seed, task order) run "
             f"of each strategy; ΔAP is paired with `{reference}` on the same runs and items, Holm "
             f"over {len(pooled['method']['holm_over'])} comparisons.", "",
             f"| strategy | AP [95 % CI] | BWT [95 % CI] | ΔAP vs {reference} [95 % CI] | "
             "p (Holm) | verdict | runs | items / run | wall min / run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in pooled["strategies"].items():
        versus = entry["vs_reference"]
        wall = walls.get(name) or []
        lines.append(
            f"| {name} | {_ci(entry['AP'])} | {_ci(entry['BWT'], True)} | "
            + ("reference | | |" if name == reference else
               f"{_ci(versus, True)} | {_p(versus['p_holm'], pooled['method']['resamples'])} | "
               f"{versus['verdict']} |"
               if versus else "n/a | | |")
            + f" {len(entry['runs'])} | {entry['AP']['items'] if entry['AP'] else ''} | "
            + (f"{sum(wall) / len(wall) / 60:.1f}" if wall else "") + " |")
    seeds = sorted({entry["seed"] for entry in data["runs"].values()})
    orders = sorted({tuple(entry["order"]) for entry in data["runs"].values()})
    lines += ["", f"Tasks: {', '.join(f'`{t}`' for t in data['tasks'])}; training seeds "
              f"{', '.join(map(str, seeds))}; orders "
              + "; ".join("→".join(str(i) for i in order) for order in orders)
              + f"; {pooled['method']['resamples']:,} bootstrap resamples (seed "
              f"{pooled['method']['seed']}). A verdict other than `tie` needs the interval to "
              f"exclude 0 and Holm's p < {pooled['method']['alpha']:g}. Command: `{command}`."]
    present = {name: text for name, text in legend.items() if name in pooled["strategies"]}
    if present:
        lines += ["", "; ".join(f"`{name}`: {text}" for name, text in present.items()) + "."]
    return "\n".join(lines)


def per_task_differences(data: dict[str, Any], reference: str) -> dict[str, list[dict] | None]:
    """Per strategy, per task (the sequence's listed order): the paired ΔAP interval against
    ``reference`` on that task alone, over the runs both have (crossed draws per training seed).
    Where a sequence's AP difference comes from; not corrected for the tasks × strategies tested."""
    runs = dict(sorted(data["runs"].items()))
    names = list(dict.fromkeys(name for entry in runs.values() for name in entry["strategies"]))
    out: dict[str, list[dict] | None] = {}
    for name in names:
        if name == reference:
            continue
        paired = _paired_ap(runs, name, reference)
        if paired is None:
            out[name] = None
            continue
        _, differences, seeds = paired
        out[name] = [bootstrap_interval([[run[task]] for run in differences], resamples=RESAMPLES,
                                        seed=BOOTSTRAP_SEED, level=LEVEL,
                                        item_groups=seeds).as_dict()
                     for task in range(len(data["tasks"]))]
    return out


def per_task_table(sequence: str, reference: str) -> str:
    """Markdown: each strategy's ΔAP against ``reference`` task by task (per_task_differences),
    an interval that excludes 0 in bold."""
    data = load_items(sequence)
    per_task = per_task_differences(data, reference)
    tasks = data["tasks"]
    lines = [f"Where the ΔAP comes from: each strategy minus `{reference}` on each task's final "
             "score alone, paired by run and item (95 % intervals, the same bootstrap; **bold**: the "
             "interval excludes 0). Not corrected for the "
             f"{len(tasks)} tasks × {sum(v is not None for v in per_task.values())} strategies "
             "tested: it shows where a sequence-level difference comes from, not a claim of its own.",
             "", "| strategy | runs | " + " | ".join(f"`{task}`" for task in tasks) + " |",
             "|---|---|" + "---|" * len(tasks)]
    for name, intervals in per_task.items():
        if intervals is None:
            continue
        cells = [f"**{_ci(iv, True)}**" if iv["low"] > 0 or iv["high"] < 0 else _ci(iv, True)
                 for iv in intervals]
        lines.append(f"| {name} | {intervals[0]['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ranked_candidates(data: dict[str, Any], candidates: list[str],
                       seed: int) -> tuple[str, list[str], dict[str, Any]] | None:
    """(the candidate with the highest pooled AP, the candidates run in every order at ``seed``,
    those runs), or None while no candidate has every order. AP's point estimate alone ranks them
    (the mean over runs of the macro mean over tasks, as the interval's estimate); an exact tie
    goes to the candidate listed first."""
    runs = {key: entry for key, entry in data["runs"].items() if entry["seed"] == seed}
    complete = [name for name in candidates if runs and all(
        name in entry["strategies"] and _ap_values(entry["strategies"][name]) is not None
        for entry in runs.values())]
    if not complete:
        return None
    estimates = {name: float(np.mean([macro_mean(_ap_values(entry["strategies"][name]))
                                      for entry in runs.values()])) for name in complete}
    return max(complete, key=estimates.__getitem__), complete, runs


def final_choice(data: dict[str, Any], candidates: list[str], seed: int = 0) -> str | None:
    """The development sequence's choice once every candidate has every order (None before: a
    leader among some candidates is not a choice)."""
    ranked = _ranked_candidates(data, candidates, seed)
    return ranked[0] if ranked is not None and set(ranked[1]) == set(candidates) else None


def development_choice(data: dict[str, Any], candidates: list[str], seed: int = 0) -> dict | None:
    """The default the development sequence chooses: among ``candidates`` (the data-free merges)
    run in every task order present at training ``seed``, the one with the highest AP pooled over
    those runs, with every other candidate's paired ΔAP against it (so a reader sees which gaps an
    interval can tell from zero). None until some candidate has every order."""
    ranked = _ranked_candidates(data, candidates, seed)
    if ranked is None:
        return None
    chosen, complete, runs = ranked
    restricted = {"tasks": data["tasks"], "runs": {
        key: {**entry, "strategies": {name: entry["strategies"][name] for name in complete}}
        for key, entry in runs.items()}}
    pooled = pooled_intervals(restricted, chosen)  # the paired comparisons: against the one chosen
    return {"chosen": chosen, "seed": seed, "runs": sorted(runs),
            "AP": pooled["strategies"][chosen]["AP"],
            "others": {name: {"AP": entry["AP"], "vs_chosen": entry["vs_reference"]}
                       for name, entry in pooled["strategies"].items() if name != chosen},
            "method": pooled["method"]}
