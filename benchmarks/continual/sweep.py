"""RECALL's choices on the DEVELOPMENT sequence only (domain-incremental MultiEmo, first order):
every point merges the four experts of the last step with one setting and scores the merged model
on every task (AP of the last row of R). The defaults of ``sequences.py`` come from this table.

    python benchmarks/continual/sweep.py                 # every point (cached: reruns are free)
    python benchmarks/continual/sweep.py --points paper tau_0.1

Writes ``benchmarks/results/continual_sweep.json`` (per point: parameters, per-task scores, AP,
merge time; seed, versions, config).
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
from sequences import RECALL_PAPER, SEQUENCES, orders  # noqa: E402

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
    "task_vector_0.25": ("recall", {**P, "variant": "task_vector", "scale": 0.25},
                         "variant: task vectors at TA's tuned λ"),
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
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="+", default=list(POINTS), choices=list(POINTS))
    parser.add_argument("--max-test", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from recall_merge.continual.config import expand_strategies, load_continual_config
    from recall_merge.continual.runner import ContinualRun, ModelState
    from recall_merge.engine import versions

    order = orders(len(SEQUENCES[SEQUENCE]["tasks"]))[0]
    raw = continual_config(SEQUENCE, order, ["expert"], args.max_test, "full", args.seed)
    raw["run_dir"] = str(run_folder() / f"sweep_t{args.max_test}_s{args.seed}")
    config = load_continual_config(raw)
    run = ContinualRun(config)
    run.prepare()
    expert_strategy = expand_strategies(config)[0]
    steps = len(run.tasks)
    expert_states = [run.expert_from_base(expert_strategy, step) for step in range(1, steps + 1)]
    experts = [state.merge_ref for state in expert_states]
    base_scores = run.evaluate(ModelState(run.base), run._base_eval_path())
    # each expert on its own task (the other cells are not needed here)
    own_scores = {task.name: run.evaluate(state, run._eval_path(state), [step])[step]
                  for step, (task, state) in enumerate(zip(run.tasks, expert_states, strict=True))}

    out = RESULTS / "continual_sweep.json"
    data = json.loads(out.read_text()) if out.exists() else {}
    points = data.get("points", {})
    for name in args.points:
        method, parameters, question = POINTS[name]
        strategy = expand_strategies(load_continual_config(
            {**raw, "strategies": [{"kind": "merge", "method": method, "name": name,
                                    "parameters": parameters}]}))[0]
        started = time.perf_counter()
        folder = run.merge_stage(f"points/{name}", strategy, experts, steps)
        merge_seconds = time.perf_counter() - started
        scores = run.evaluate(ModelState(folder), run.root / "evals" / f"{name}.json")
        previous = points.get(name, {})
        points[name] = {"method": method, "parameters": parameters, "question": question,
                        "scores": dict(zip([t.name for t in run.tasks], scores, strict=True)),
                        "AP": sum(scores) / len(scores),
                        "merge_seconds": previous.get("merge_seconds", round(merge_seconds, 1))
                        if merge_seconds < 1 else round(merge_seconds, 1)}
        print(f"{name:28s} AP {points[name]['AP']:.3f}  {scores}", flush=True)
        data = {"sequence": SEQUENCE, "order": [run.tasks[i].name for i in range(steps)],
                "newest_task": run.tasks[-1].name, "max_test": args.max_test, "seed": args.seed,
                "base": dict(zip([t.name for t in run.tasks], base_scores, strict=True)),
                "own_expert": own_scores,
                "points": points, "config": raw, "versions": versions(),
                "command": "python benchmarks/continual/sweep.py"}
        out.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
