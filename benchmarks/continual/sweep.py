"""RECALL's choices on the DEVELOPMENT sequence only (domain-incremental MultiEmo, first order):
every point merges the four experts of the last step with one setting and scores the merged model
on every task (AP of the last row of R). The defaults of ``sequences.py`` come from this table.

    python benchmarks/continual/sweep.py                 # every point (cached: reruns are free)
    python benchmarks/continual/sweep.py --points paper tau_0.1

Writes ``benchmarks/results/continual_sweep.json`` (per point: parameters, per-task scores, AP,
merge time; seed, versions, config).

With ``--sequence task|classify5|paper`` the points of HELD_OUT_POINTS (the settings fixed here) run
unchanged on a held-out sequence, in every task order, into
``benchmarks/results/continual_variants.json``; points already scored for an order are kept.

    python benchmarks/continual/sweep.py --sequence task --max-test 30
    python benchmarks/continual/sweep.py --sequence classify5 --max-test 30
    python benchmarks/continual/sweep.py --sequence paper --max-test 24

With ``--seed S`` (S ≠ 0) on the development sequence, SEED_POINTS (the chosen default, the
baselines at their development settings and two variants) run again at seed S: other splits,
other experts (LoRA initialisation and batch order), nothing tuned. They go to
``benchmarks/results/continual_seeds.json`` by seed, never into the seed-0 sweep the defaults came
from.

    python benchmarks/continual/sweep.py --seed 1

With ``--seed S`` (S ≠ 0) on a held-out sequence, SEED_POINTS run the same way on that sequence's
last step, first order only unless ``--orders`` says otherwise, into ``continual_seeds.json``
under ``held_out`` (never into ``continual_variants.json``, which is seed 0's).

    python benchmarks/continual/sweep.py --sequence task --max-test 30 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import RESULTS, continual_config, run_folder  # noqa: E402
from sequences import (  # noqa: E402
    RECALL_PAPER,
    RECALL_TIES_DEV,
    RECALL_TIES_REDUNDANCY,
    RECALL_TV_DEV,
    RECALL_TV_REDUNDANCY,
    SEQUENCES,
    TIES_DEV,
    orders,
)

SEQUENCE = "domain"
P = RECALL_PAPER
# name -> (method, parameters, what the point asks)
POINTS: dict[str, tuple[str, dict, str]] = {  # in the order they run (most telling first)
    "paper": ("recall", P, "the paper's form with our defaults (16 k-means samples, τ=1, RBF, "
              "median bandwidth over all pairs, aligned, per layer, base included)"),
    "task_arithmetic_1.0": ("task_arithmetic", {"lambda": 1.0}, "baseline λ"),
    "ties_1.0": ("ties", {"density": 0.2, "lambda": 1.0}, "baseline"),
    "task_vector": ("recall", {**P, "variant": "task_vector"}, "variant: task vectors, mass kept"),
    "ties_variant": ("recall", {**P, "variant": "ties"}, "variant: TIES under RECALL's weights"),
    "task_arithmetic_0.5": ("task_arithmetic", {"lambda": 0.5}, "baseline λ"),
    "task_arithmetic_0.25": ("task_arithmetic", {"lambda": 0.25}, "baseline λ"),
    "task_vector_0.25": ("recall", RECALL_TV_DEV, "variant: task vectors at TA's tuned λ"),
    "task_vector_std_0.25": ("recall", {**P, "variant": "task_vector", "scale": 0.25,
                                        "standardize": True},
                             "variant: task vectors at TA's λ, standardised scores"),
    "tau_0.1": ("recall", {**P, "temperature": 0.1}, "temperature"),
    "no_base": ("recall", {**P, "include_base": False}, "without the base in the merge"),
    "task_vector_std_tau1": ("recall", {**P, "variant": "task_vector", "standardize": True},
                             "variant: task vectors, standardised scores"),
    "task_vector_share_0.4": ("recall", {**P, "variant": "task_vector", "newest_share": 0.4,
                                         "standardize": True}, "variant: fixed share for M_N"),
    "samples_4": ("recall", {**P, "num_typical": 4}, "number of typical samples"),
    "random_samples": ("recall", {**P, "selection": "random"}, "clustered vs random samples"),
    "bandwidth_aligned": ("recall", {**P, "bandwidth": "median_aligned"}, "bandwidth rule"),
    "all_pairs": ("recall", {**P, "aggregation": "all_pairs"}, "aligned vs all-pairs"),
    "cosine": ("recall", {**P, "kernel": "cosine"}, "RBF vs cosine"),
    "cka": ("recall", {**P, "kernel": "cka"}, "RBF vs linear CKA"),
    "global_weight": ("recall", {**P, "per_layer": False}, "per-layer vs one global weight"),
    "magmax": ("magmax", {}, "baseline"),
    "task_vector_agreement": ("recall", {**P, "variant": "task_vector", "strength": "agreement"},
                              "variant: per-layer strength from agreement"),
    "average": ("linear", {}, "plain average of the experts and the base"),
    "tau_10": ("recall", {**P, "temperature": 10.0}, "temperature"),
    "samples_32": ("recall", {**P, "num_typical": 32}, "number of typical samples"),
    "task_vector_shifts": ("recall", {**P, "variant": "task_vector", "similarity_space": "shifts",
                                      "standardize": True}, "variant: similarity of shifts"),
    # the variants above at full strength overshoot like task arithmetic at λ = 1; the same at the
    # development λ (0.25), so that each is compared at its best-known strength
    "task_vector_share_0.4_0.25": ("recall", {**P, "variant": "task_vector", "newest_share": 0.4,
                                              "standardize": True, "scale": 0.25},
                                   "variant: fixed share for M_N, at TA's λ"),
    "task_vector_shifts_0.25": ("recall", {**P, "variant": "task_vector",
                                           "similarity_space": "shifts", "standardize": True,
                                           "scale": 0.25},
                                "variant: similarity of shifts, at TA's λ"),
    "task_vector_agreement_0.25": ("recall", {**P, "variant": "task_vector",
                                              "strength": "agreement", "scale": 0.25},
                                   "variant: strength from agreement, at TA's λ"),
    # TIES and the TIES variant at full strength overshoot on this sequence like task arithmetic
    # at λ = 1; the same at lower λ, so that both are compared at their best-known strength
    "ties_0.5": ("ties", TIES_DEV, "baseline λ"),
    "ties_0.25": ("ties", {"density": 0.2, "lambda": 0.25}, "baseline λ"),
    "ties_variant_0.5": ("recall", RECALL_TIES_DEV, "variant: TIES under RECALL's weights, λ 0.5"),
    "ties_variant_0.25": ("recall", {**P, "variant": "ties", "scale": 0.25},
                          "variant: TIES under RECALL's weights, λ 0.25"),
    # per-layer strength of the task-vector sum from the overlap of the experts' representation
    # shifts on the typical samples: no λ to tune (N redundant experts averaged, orthogonal summed)
    "task_vector_redundancy": ("recall", RECALL_TV_REDUNDANCY,
                               "variant: task vectors, strength from the overlap of representation "
                               "shifts (no λ)"),
    "ties_variant_redundancy": ("recall", RECALL_TIES_REDUNDANCY,
                                "variant: TIES under RECALL's weights, strength from the overlap of "
                                "representation shifts (no λ)"),
    # the representation pass cuts a long sample at its start instead of its end: the paper-shaped
    # science task's 64 samples share a 212-token instruction, so at 96 tokens cut at the right
    # they are one input (sample_truncation.py); added after the held-out runs had shown it there
    "truncate_left": ("recall", {**P, "truncation_side": "left"},
                      "representation pass keeps each sample's end, not its start"),
    # the strategy recall_guarded at the last step: the paper form over the experts that beat the
    # base on their own task's dev split, with the typical samples of the last one kept
    "guarded": ("recall", P, "variant: paper form without experts that do not beat the base on "
                "their task's dev split"),
}


# The variants of the issue "RECALL variants beyond the paper", each at the setting the development
# sweep fixed (the task-vector forms at task arithmetic's tuned λ 0.25, the TIES variant at its
# best λ 0.5, the redundancy strength with no λ), run unchanged on the held-out sequences
# (``--sequence task|classify5|paper``); the paper form and the baselines (task arithmetic and
# TIES at their development λ, TIES at λ 1 too, MagMax) run next to them on the same experts, as
# the reference.
# In the order they run: the ones that lost to the paper form on the development sequence last.
HELD_OUT_POINTS = ["paper", "task_arithmetic_0.25", "ties_1.0", "ties_0.5", "magmax",
                   "task_vector_redundancy", "ties_variant_0.5", "ties_variant_redundancy",
                   "task_vector_0.25", "guarded", "task_vector_std_0.25",
                   "task_vector_share_0.4_0.25", "task_vector_shifts_0.25",
                   "task_vector_agreement_0.25", "truncate_left"]


# The development sweep's points re-run at other seeds (``--seed S``, S ≠ 0): does the chosen
# default's lead over the baselines on the development sequence hold beyond seed 0?
SEED_POINTS = ["paper", "task_arithmetic_0.25", "ties_0.5", "ties_1.0", "magmax", "average",
               "ties_variant_redundancy", "guarded"]


def score_points(sequence: str, order_index: int, names: list[str], max_test: int, seed: int,
                 run_dir: Path, on_point, known: dict | None = None,
                 other_orders: dict[str, dict] | None = None) -> dict:
    """Merge the experts of ``sequence``'s last step (task order ``order_index``) once per point and
    score each merged model on every task. ``on_point(summary)`` gets the running summary (base and
    own-expert scores, points so far) after each point, so a long sweep can be saved as it goes.

    ``known``: points of this order scored before (kept, not run again). ``other_orders``: label ->
    points of the same sequence in other orders; a baseline found there (task arithmetic, TIES,
    MagMax, the plain average: sums over the same experts, whatever their order) is that same
    merged model and is taken over, marked ``same_as``, instead of being made and scored again."""
    from recall_merge.continual.config import expand_strategies, load_continual_config
    from recall_merge.continual.runner import ContinualRun, ModelState, remove_model_weights

    order = orders(len(SEQUENCES[sequence]["tasks"]))[order_index]
    raw = continual_config(sequence, order, ["expert"], max_test, "full", seed)
    raw["run_dir"] = str(run_dir)
    config = load_continual_config(raw)
    run = ContinualRun(config)
    run.prepare()
    expert_strategy = expand_strategies(config)[0]
    steps = len(run.tasks)
    task_names = [task.name for task in run.tasks]
    expert_states = [run.expert_from_base(expert_strategy, step) for step in range(1, steps + 1)]
    experts = [state.merge_ref for state in expert_states]
    base_scores = run.evaluate(ModelState(run.base), run._base_eval_path())
    # each expert on its own task (the other cells are not needed here)
    own_scores = {task.name: run.evaluate(state, run._eval_path(state), [step])[step]
                  for step, (task, state) in enumerate(zip(run.tasks, expert_states, strict=True))}
    # The guarded variant (strategy recall_guarded) leaves out an expert that does not beat the
    # base on its own task's dev split; where every expert does, it is the paper form exactly.
    beats_base = {task.name: run.beats_base_on_dev(state, step)
                  for step, (task, state) in enumerate(zip(run.tasks, expert_states, strict=True),
                                                       start=1)}
    summary = {"sequence": sequence, "order": task_names, "newest_task": task_names[-1],
               "max_test": max_test, "seed": seed,
               "base": dict(zip(task_names, base_scores, strict=True)),
               "own_expert": own_scores, "expert_beats_base_on_dev": beats_base,
               "points": dict(known or {}), "config": raw}
    for name in names:
        method, parameters, question = POINTS[name]
        if name in summary["points"]:
            continue
        earlier = [(label, points[name]) for label, points in (other_orders or {}).items()
                   if name in points and "same_as" not in points[name]]
        if method != "recall" and earlier:
            label, point = earlier[0]
            summary["points"][name] = {**point, "same_as": label}
            on_point(summary)
            continue
        strategy = expand_strategies(load_continual_config(
            {**raw, "strategies": [{"kind": "merge", "method": method, "name": name,
                                    "parameters": parameters}]}))[0]
        kept = [step for step, task in enumerate(task_names, start=1) if beats_base[task]]
        if name == "guarded" and len(kept) == steps and "paper" in summary["points"]:
            # every expert passes the guard: the same merge as the paper form, not made twice
            summary["points"][name] = {**summary["points"]["paper"], "question": question,
                                       "same_as": "paper"}
            on_point(summary)
            continue
        started = time.perf_counter()
        if name == "guarded" and not kept:
            folder = run.base
        elif name == "guarded":
            folder = run.merge_stage(f"points/{name}", strategy,
                                     [experts[step - 1] for step in kept], kept[-1])
        else:
            folder = run.merge_stage(f"points/{name}", strategy, experts, steps)
        merge_seconds = time.perf_counter() - started
        scores = run.evaluate(ModelState(folder), run.root / "evals" / f"{name}.json")
        if folder != run.base:  # scored: its weights (0.5 GB) are not needed again
            remove_model_weights(folder, "benchmarks/continual/sweep.py, once scored")
        summary["points"][name] = {
            "method": method, "parameters": parameters, "question": question,
            "scores": dict(zip(task_names, scores, strict=True)), "AP": sum(scores) / len(scores),
            # a cached merge takes < 1 s; keep the time measured when it was made
            "merge_seconds": round(merge_seconds, 1) if merge_seconds >= 1 else None}
        print(f"{sequence} order {order_index} {name:28s} AP {summary['points'][name]['AP']:.3f}  "
              f"{scores}", flush=True)
        on_point(summary)
    return summary


def keep_measured_times(points: dict, previous: dict) -> dict:
    """A point whose merge came from the cache keeps the merge time stored before."""
    for name, point in points.items():
        if point["merge_seconds"] is None:
            point["merge_seconds"] = previous.get(name, {}).get("merge_seconds")
    return points


def stored_points(out: Path, keys: tuple[str, ...]) -> dict:
    """The points kept in ``out`` under ``keys`` (the top level where ``keys`` is empty)."""
    node = json.loads(out.read_text()) if out.exists() else {}
    for key in keys:
        node = node.get(key, {})
    return dict(node.get("points", {}))


def saver(out: Path, keys: tuple[str, ...], stamp: dict):
    """``save(summary)`` for :func:`score_points`: read ``out`` again and replace only the part
    under ``keys`` (another sequence's or seed's run may have saved since this one started), keep
    the merge times measured before, and stamp the file with ``stamp`` and the versions. With
    empty ``keys`` the summary is the whole file (the development sweep)."""
    from recall_merge.engine import versions

    def save(summary: dict) -> None:
        current = json.loads(out.read_text()) if out.exists() and keys else {}
        previous = stored_points(out, keys)
        entry = {**summary, "points": keep_measured_times(dict(summary["points"]), previous)}
        node = current
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if keys:
            node[keys[-1]] = entry
        else:
            current = entry
        current.update({**stamp, "versions": versions()})
        out.write_text(json.dumps(current, indent=2) + "\n")

    return save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="+", choices=list(POINTS),
                        help="default: every point (development), HELD_OUT_POINTS (held out)")
    parser.add_argument("--sequence", choices=sorted(SEQUENCES), default=SEQUENCE,
                        help="a held-out sequence runs the chosen points unchanged, per order")
    parser.add_argument("--orders", type=int, nargs="+",
                        help="held-out sequences only (default: all three at seed 0, the first at "
                             "other seeds); the development sweep uses the first order")
    parser.add_argument("--max-test", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    seeds_file = RESULTS / "continual_seeds.json"

    if args.sequence == SEQUENCE:
        # seed 0 is the sweep the defaults came from; other seeds go beside it, never into it
        out, keys, stamp = (
            (RESULTS / "continual_sweep.json", (), {"command": "python benchmarks/continual/sweep.py"})
            if args.seed == 0 else
            (seeds_file, ("seeds", str(args.seed)),
             {"seed": "by seed, under seeds", "command": "python benchmarks/continual/sweep.py --seed S"}))
        score_points(SEQUENCE, 0, args.points or (list(POINTS) if args.seed == 0 else SEED_POINTS),
                     args.max_test, args.seed, run_folder() / f"sweep_t{args.max_test}_s{args.seed}",
                     saver(out, keys, stamp), known=stored_points(out, keys))
        return

    variants_file = RESULTS / "continual_variants.json"
    for order_index in args.orders or ([0, 1, 2] if args.seed == 0 else [0]):
        label = f"order_{order_index}"
        other_orders = None
        if args.seed == 0:
            out, keys = variants_file, ("sequences", args.sequence, label)
            stamp = {"seed": 0, "command": "python benchmarks/continual/sweep.py --sequence SEQUENCE "
                                           "--max-test N (N as in the sequence's benchmark run)"}
            runs = (json.loads(out.read_text()) if out.exists() else {}).get(
                "sequences", {}).get(args.sequence, {})
            # a baseline merged in another order is the same model: taken over, not made again
            other_orders = {other: run["points"] for other, run in runs.items() if other != label}
        else:
            out, keys = seeds_file, ("held_out", args.sequence, str(args.seed), label)
            stamp = {"seed": "by seed, under seeds (development) and held_out",
                     "command": "python benchmarks/continual/sweep.py --seed S "
                                "[--sequence SEQUENCE --max-test N]"}
        score_points(args.sequence, order_index,
                     args.points or (HELD_OUT_POINTS if args.seed == 0 else SEED_POINTS),
                     args.max_test, args.seed,
                     run_folder() / f"variants_{args.sequence}_t{args.max_test}_s{args.seed}" / label,
                     saver(out, keys, stamp), known=stored_points(out, keys),
                     other_orders=other_orders)


if __name__ == "__main__":
    main()
