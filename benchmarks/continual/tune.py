"""Tuning on the DEVELOPMENT sequence only, with the same budget for every merge method.

Each family below (a method, or a RECALL candidate of the issue "Make a data-free merge win") gets
four settings of its strength knobs (λ, density, α, τ, β: ``BUDGET``), except where one merge
costs too much to try four (WUDI, DOP: their papers' defaults, one point each, said in the table),
plus one by the same edge rule for every family: when the best of the four has the grid's lowest
(highest) strength, that strength halved (doubled) is tried too (``edge_point`` in sequences.py).
Every point builds the final model of task order 0 at training seed 0 — the merge of all the
experts (``library: experts``), or the step-by-step chain (``library: previous``: OPCM, DOP) —
and scores it on every task's 300 test items; the family's setting is the point with the highest
AP. Nothing here reads a held-out sequence; the held-out runs use the chosen settings unchanged.

    python benchmarks/continual/tune.py                          # every point (durable)
    python benchmarks/continual/tune.py --families ties tsv_m    # some families
    python benchmarks/continual/tune.py --table                  # print the table

Two processes with different ``--families`` can run at once (one per core).

Writes ``benchmarks/results/continual_tuning.json`` (per point: method, parameters, library,
per-task scores, AP with its 95 % item-bootstrap interval, merge seconds; seed, versions, config).
Merged weights are deleted once scored; the experts are the development run's (``run.py``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import RESULTS, continual_config, run_folder  # noqa: E402
from sequences import SEQUENCES, edge_point, orders, tuned_points  # noqa: E402
from sequences import TUNING_BUDGET as BUDGET  # noqa: E402
from sequences import TUNING_GRID as GRID  # noqa: E402

SEQUENCE = "development"
OUT = RESULTS / "continual_tuning.json"


def build_point(run, experts: list[str], name: str, method: str, parameters: dict,
                library: str) -> Path:
    """The final model of one point: the merge of every expert, or the chain of merges (the
    previous merge with each new expert) for ``library: previous``."""
    from recall_merge.continual.config import expand_strategies, load_continual_config

    strategy = expand_strategies(load_continual_config(
        {**run.raw_config, "strategies": [{"kind": "merge", "method": method, "name": name,
                                           "parameters": parameters, "library": library}]}))[0]
    if library == "experts":
        return run.merge_stage(f"tuning/{name}", strategy, experts, len(experts))
    from recall_merge.continual.runner import remove_model_weights

    folders: list[Path] = []
    for step in range(1, len(experts) + 1):
        models = [experts[0]] if step == 1 else [str(folders[-1]), experts[step - 1]]
        folders.append(run.merge_stage(f"tuning/{name}/step{step}", strategy, models, step))
    for folder in folders[:-1]:  # each step's merge was only the next step's input
        remove_model_weights(folder, "benchmarks/continual/tune.py, merged into the next step")
    return folders[-1]


def ap_interval(per_task_items: list[list[float]], seed: int) -> dict:
    """AP (macro mean over tasks) with its 95 % percentile interval over resampled items."""
    from recall_merge.continual.statistics import bootstrap_interval

    interval = bootstrap_interval([per_task_items], seed=seed)
    return {"AP": interval.estimate, "low": interval.low, "high": interval.high,
            "resamples": interval.resamples}


def tune(families: list[str], seed: int = 0) -> dict:
    from recall_merge.continual.config import expand_strategies, load_continual_config
    from recall_merge.continual.runner import ContinualRun, ModelState, remove_model_weights
    from recall_merge.engine import versions
    from recall_merge.errors import RecallError

    order = orders(len(SEQUENCES[SEQUENCE]["tasks"]))[0]
    raw = continual_config(SEQUENCE, order, ["expert"], 300, "full", seed)
    raw["run_dir"] = str(run_folder() / f"{SEQUENCE}_t300_s{seed}" / "tuning")
    config = load_continual_config(raw)
    run = ContinualRun(config)
    run.raw_config = raw
    run.prepare()
    expert_strategy = expand_strategies(config)[0]
    names = [task.name for task in run.tasks]
    experts = [run.expert_from_base(expert_strategy, step).merge_ref
               for step in range(1, len(names) + 1)]
    stored = json.loads(OUT.read_text()) if OUT.exists() else {}
    points = stored.get("points", {})
    failed: dict[str, str] = {}
    data = {"sequence": SEQUENCE, "order": names, "seed": seed, "max_test": 300,
            "budget": BUDGET, "selection": "highest AP on the development sequence's test items, "
            "task order 0, training seed 0", "versions": versions(), "config": raw,
            "command": "python benchmarks/continual/tune.py", "points": points, "failed": failed,
            "superseded": stored.get("superseded", {})}
    for family in families:
        # the grid, then the edge rule's extra point once the grid is scored (sequences.py)
        for point in [*GRID[family], None]:
            if point is None and (point := edge_point(family, points)) is None:
                break
            name, method, parameters, library = point
            if name in points:
                continue
            started = time.perf_counter()
            # the stage's key holds the parameters with every default filled in: a method whose
            # default changes gets new stages, not the old merge and scores of the same name
            stage = f"{name}-{stage_digest(method, parameters, library)}"
            try:
                folder = build_point(run, experts, stage, method, parameters, library)
                merge_seconds = time.perf_counter() - started
                path = run.root / "evals" / f"tuning_{stage}.json"
                scores = run.evaluate(ModelState(folder), path)
            except RecallError as error:  # one refused point must not stop the others
                print(f"{family:22s} {name:26s} failed: {error}", flush=True)
                failed[name] = str(error)
                save(data)
                continue
            items = json.loads(path.read_text())
            remove_model_weights(folder, "benchmarks/continual/tune.py, once scored")
            points[name] = {
                "family": family, "method": method, "parameters": parameters, "library": library,
                "scores": dict(zip(names, scores, strict=True)),
                **ap_interval([items[task]["items"] for task in names], seed),
                "merge_seconds": round(merge_seconds, 1)}
            print(f"{family:22s} {name:26s} AP {points[name]['AP']:.3f}  {scores}", flush=True)
            save(data)
    return data


def stage_digest(method: str, parameters: dict, library: str) -> str:
    """8 hex digits of the method, its parameters with every default resolved, and the library."""
    import hashlib

    from recall_merge.methods.registry import parameters_model

    resolved = parameters_model(method).model_validate(parameters).model_dump(mode="json")
    text = json.dumps([method, resolved, library], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def save(data: dict) -> None:
    """Write this process's points into the results file, keeping the points another tuning
    process (other families, in parallel on another core) wrote meanwhile."""
    with open(OUT.with_name(".continual_tuning.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        stored = json.loads(OUT.read_text()) if OUT.exists() else {}
        # in place: tune() keeps adding to these same dicts
        data["points"].update({name: point for name, point in stored.get("points", {}).items()
                               if name not in data["points"]})
        data["superseded"].update(stored.get("superseded", {}))
        failed = {**stored.get("failed", {}), **data["failed"]}
        data["failed"].clear()
        data["failed"].update({name: error for name, error in failed.items()
                               if name not in data["points"]})
        partial = OUT.with_name(OUT.name + ".partial")
        partial.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        partial.replace(OUT)  # a reader never sees half a file


def chosen() -> dict[str, str]:
    """family -> the point with the highest AP (ties: the first in GRID order)."""
    return {family: name for family, (name, _) in tuned_points(OUT).items()}


def tuning_table() -> str:
    """Every family's points (AP), the one chosen, and its AP with its item-bootstrap interval."""
    data = json.loads(OUT.read_text())
    points, best = data["points"], chosen()
    lines = ["| family | settings tried (AP) | chosen | AP [95 % CI] | merge s |",
             "|---|---|---|---|---|"]
    for family, name in best.items():
        edge = edge_point(family, points)
        tried = ", ".join(f"{point} {points[point]['AP']:.3f}"
                          for point, *_ in [*GRID[family], *([edge] if edge else [])]
                          if point in points)
        entry = points[name]
        lines.append(f"| {family} | {tried} | `{name}` | {entry['AP']:.3f} "
                     f"[{entry['low']:.3f}, {entry['high']:.3f}] | {entry['merge_seconds']} |")
    lines += ["", f"Development sequence, task order {' → '.join(data['order'])}, training seed "
              f"{data['seed']}, {data['max_test']} test items per task; {data['budget']} "
              "settings per family (WUDI and DOP: one, their papers' defaults, for cost), plus one "
              "when the best has the grid's lowest (highest) strength: that strength halved "
              "(doubled), the name ending _x0.5 (_x2); the "
              "interval resamples items within tasks (10,000 resamples). A family's setting is "
              "its highest AP here; gaps between families inside these intervals are ties. "
              f"Command: `{data['command']}`."]
    unfinished = [family for family in GRID if family not in best or edge_pending(family, points)
                  or any(point not in points for point, *_ in GRID[family])]
    if unfinished:
        lines += ["", f"**Partial:** {len(unfinished)} of {len(GRID)} families not fully scored "
                  f"yet ({', '.join(unfinished)}); their chosen points may still change, and "
                  "no FAMILY_tuned result of them is final."]
    return "\n".join(lines)


def edge_pending(family: str, points: dict) -> bool:
    """The edge rule asks for a point that is not scored yet."""
    edge = edge_point(family, points)
    return edge is not None and edge[0] not in points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", choices=sorted(GRID), default=list(GRID))
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if not args.table:
        # two processes may tune different families at once (one per core); each point is
        # saved under a lock, so neither loses the other's points
        tune(args.families)
    print(tuning_table())


if __name__ == "__main__":
    main()
