"""The continual-learning benchmark: each sequence of ``sequences.py`` in three task orders, every
strategy on the same splits, seeds and fine-tuning budget, on SmolLM2-135M-Instruct.

    python benchmarks/continual/run.py --sequence task                # every strategy, 3 orders
    python benchmarks/continual/run.py --sequence task --orders 0 --strategies expert recall_paper
    python benchmarks/continual/run.py --table                        # print the tables from the JSON
    python benchmarks/continual/run.py --docs                         # rewrite them in the docs
    python benchmarks/continual/run.py --status                       # what the grid still lacks

Each (sequence, order, strategy) is one `recall continual` run folder under
``$RECALL_MERGE_CACHE/benchmark_runs/`` (durable: an interrupted command continues where it
stopped, and strategies can be added later); experts fine-tuned from the base are trained once per
task and shared by every order and strategy of a sequence (``expert_cache``). ``--cells summary``
(the default) scores only the R cells AP, BWT and FWT read.
Writes ``benchmarks/results/continual_SEQUENCE.json`` (every R matrix, AP/BWT/FWT per order, mean
and standard deviation over the orders run, wall times, seed, versions, configs) and each cell's
per-item scores (``pooled.py``); ``benchmark_tables.py`` builds the docs' tables from them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # benchmarks/doc_tables.py, read by benchmark_tables.py

from pooled import load_items, pooled_intervals, record_run  # noqa: E402
from result_files import (  # noqa: E402
    RESULTS,
    reference,
    results_path,
    sequence_model,
    sequence_scores,
    summarise,
)
from sequences import (  # noqa: E402
    EVALUATION,
    OFFLINE_SEQUENCES,
    OFFLINE_TEST_ITEMS,
    PROTOCOL_STRATEGIES,
    SEQUENCES,
    STRATEGIES,
    TRAINING,
    ZERO_SHOT,
    default_candidates,
    main_strategies,
    orders,
    tuned_cells,
    zero_shot_tasks,
)


def run_folder() -> Path:
    from recall_merge.io.cache import cache_dir

    return cache_dir() / "benchmark_runs"


def sequence_settings(sequence: str) -> dict:
    """A sequence's fine-tuning and evaluation settings: the shared defaults of ``sequences.py``
    with the sequence's own overrides on top (one place, for the runs and the result file)."""
    spec = SEQUENCES[sequence]
    return {"training": {**TRAINING, **spec.get("training", {})},
            "evaluation": {**EVALUATION, **spec.get("evaluation", {})}}


def continual_config(sequence: str, order: list[int], strategies: list[str], max_test: int,
                     cells: str, seed: int) -> dict:
    spec = SEQUENCES[sequence]
    label = "-".join(str(i) for i in order)
    return {
        "model": sequence_model(sequence),
        "tasks": [spec["tasks"][i] for i in order],
        "max_train": spec.get("max_train", 240), "max_dev": 16, "max_test": max_test, "seed": seed,
        "run_dir": str(run_folder() / f"{sequence}_t{max_test}_s{seed}" / f"order_{label}"),
        "expert_cache": str(run_folder() / f"{sequence}_t{max_test}_s{seed}" / "experts"),
        "cells": cells,
        **sequence_settings(sequence),
        "merge_samples": 64,
        "strategies": [{"name": name, **STRATEGIES[name]} for name in strategies],
    }


def cell_digest(config: dict) -> str:
    """A digest of an (order, strategy) cell's whole definition (tasks, budget, seed, the
    strategy and its parameters; not where it runs): a cell already in the results with the same
    digest is not run again, one whose definition changed since is."""
    defined = {key: value for key, value in config.items() if key not in ("run_dir", "expert_cache")}
    return hashlib.sha256(json.dumps(defined, sort_keys=True).encode()).hexdigest()[:16]


def already_run(run: dict, name: str, digest: str, args: argparse.Namespace) -> bool:
    """The results hold this cell, run with this definition (and --redo was not given)."""
    return (not args.redo and bool(run["results"]) and name in run["results"]["methods"]
            and run.get("digests", {}).get(name) == digest)


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


PERPLEXITY_TEXTS = 32  # BBC article bodies (never trained on), first 256 tokens each


def final_model(run_dir: Path, strategy: str,
                model: str = "smollm2") -> tuple[Path, Path | None] | None:
    """(folder, adapter) of a strategy's model after the last step it built; None for experts,
    and where the strategy's run folder is not on this disk (another machine ran it: scoring the
    base in its place would be a wrong score, not a missing one)."""
    from recall_merge.continual.store import slug as _slug
    from recall_merge.io.packaged import resolve_model_ref

    base = resolve_model_ref(model)
    if strategy == "base":
        return base, None
    folder = run_dir / "strategies" / _slug(strategy)
    if not folder.is_dir():
        return None
    steps = sorted((p for p in folder.glob("step*") if p.name[4:].isdigit()),
                   key=lambda p: int(p.name[4:]))
    if not steps:
        return None if strategy == "expert" else (base, None)  # guarded: every expert left out
    last = steps[-1]
    return (base, last) if (last / "adapter_config.json").exists() else (last, None)


PERPLEXITY_TOKENS = 256
# What a stored generalisation score depends on besides the model: kept in each score file, and a
# file scored under other settings is scored again instead of being mixed with new scores.
GENERALISATION_SETTINGS = {"perplexity_texts": PERPLEXITY_TEXTS, "perplexity_tokens": PERPLEXITY_TOKENS,
                           "zero_shot": ZERO_SHOT, "evaluation": EVALUATION}


def load_scores(file: Path) -> dict:
    """A generalisation score file's entries; empty when it is missing or was scored under other
    settings (files written before settings were recorded are taken as scored under these)."""
    if not file.exists():
        return {}
    stored = json.loads(file.read_text())
    settings = stored.pop("_settings", None)
    if settings is not None and settings != json.loads(json.dumps(GENERALISATION_SETTINGS)):
        print(f"{file}: scored under other settings, scoring again", file=sys.stderr)
        return {}
    return stored


def save_scores(file: Path, stored: dict) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({"_settings": GENERALISATION_SETTINGS, **stored}, indent=2) + "\n")


def remove_final_weights(run_dir: Path, strategy: str, model: str = "smollm2") -> None:
    """Once a strategy's final model is scored on the tasks and for generalisation, its weights
    (0.5 GB for SmolLM2 in fp32) go too: a full benchmark holds ~80 such models. The folder, its
    merge report and the scores stay; the base and LoRA adapters are never removed."""
    from recall_merge.continual.store import remove_model_weights

    state = final_model(run_dir, strategy, model)
    if state is not None and state[1] is None and state[0].is_relative_to(run_dir):
        remove_model_weights(state[0], "benchmarks/continual/run.py, once scored (--keep-weights "
                                       "keeps the final models)")


def generalisation(run_dir: Path, strategies: list[str], zero_shot: dict[str, dict],
                   model: str = "smollm2") -> dict:
    """What the paper calls generalisation, for each strategy's final model (and the base):
    perplexity on general English text and zero-shot scores on never-trained tasks
    (``zero_shot``, the sequence's own set; none leaves perplexity alone). Kept in
    ``run_dir/generalisation.json`` so reruns are free; the base model's entry is the same for
    every run, so it is scored once and kept in ``benchmark_runs/base_generalisation.json``."""
    from functools import cache

    from transformers import AutoTokenizer

    from recall_merge.continual.scoring import perplexity, score_task
    from recall_merge.continual.store import ModelState, refuse_removed_weights
    from recall_merge.continual.training import load_causal_lm
    from recall_merge.data.bbc import article_bodies
    from recall_merge.data.registry import load_task
    from recall_merge.io.packaged import resolve_model_ref

    @cache
    def tokenizer():  # loaded only when something is left to score
        return AutoTokenizer.from_pretrained(resolve_model_ref(model))

    run_path = run_dir / "generalisation.json"
    base_path = run_folder() / ("base_generalisation.json" if model == "smollm2"
                                else f"base_generalisation_{model}.json")
    run_stored, base_stored = load_scores(run_path), load_scores(base_path)
    run_stored.pop("base", None)  # older run folders kept their own copy of the base's scores
    for name in ["base", *strategies]:
        path, stored = (base_path, base_stored) if name == "base" else (run_path, run_stored)
        entry = stored.setdefault(name, {})
        missing = [task for task in zero_shot if task not in entry.get("zero_shot", {})]
        if ("perplexity" in entry and not missing) or \
                (state := final_model(run_dir, name, model)) is None:
            continue
        refuse_removed_weights(ModelState(*state))
        # not `model`: that is the packaged model's name, which tokenizer() reads
        language_model = load_causal_lm(*state)
        if "perplexity" not in entry:
            texts = article_bodies(PERPLEXITY_TEXTS, seed=0)
            entry.update(perplexity=perplexity(language_model, tokenizer(), texts,
                                               PERPLEXITY_TOKENS),
                         texts=f"{PERPLEXITY_TEXTS} BBC article bodies, first {PERPLEXITY_TOKENS} tokens")
        for spec in missing:
            task = load_task(spec, seed=0, **zero_shot[spec])
            entry.setdefault("zero_shot", {})[spec] = score_task(
                language_model, tokenizer(), task, task.test, EVALUATION["batch_size"],
                EVALUATION["max_length"], EVALUATION["max_new_tokens"])["score"]
        if zero_shot:
            entry["zero_shot_mean"] = statistics.fmean(entry["zero_shot"][t] for t in zero_shot)
        save_scores(path, stored)
    merged = {"base": sequence_scores(base_stored.get("base", {}), zero_shot), **run_stored}
    return {name: entry for name, entry in merged.items() if entry}


def single_model(run: dict) -> dict:
    """The paper's single-model scenario read off step 1: the base merged with the first task's
    expert alone, scored on that task (next to the expert's own score)."""
    results = run["results"]
    first = results["tasks"][0]["name"]
    expert = results["methods"].get("expert", {}).get("R")
    out = {"task": first, "expert": expert[1][0] if expert else None}
    for name, entry in results["methods"].items():
        if entry.get("kind") == "merge" and "R" in entry:
            out[name] = entry["R"][1][0]
    return out


def write_results(sequence: str, seed: int, max_test: int, runs: dict, all_orders: list) -> Path:
    """Every run of a sequence, its summary over orders, expert gains and the single-model
    scenario, as one JSON (rewritten after each strategy so an interrupted command loses nothing)."""
    from recall_merge.engine import versions

    spec = SEQUENCES[sequence]
    ordered = sorted(runs.values(), key=lambda r: all_orders.index(r["order"]))
    data = {"sequence": sequence, **spec, "seed": seed, "max_test": max_test,
            **sequence_settings(sequence),
            "zero_shot_tasks": zero_shot_tasks(sequence), "perplexity_texts": PERPLEXITY_TEXTS,
            "strategies": STRATEGIES,
            "command": f"python benchmarks/continual/run.py --sequence {sequence} --max-test {max_test}"
                       + (f" --seed {seed}" if seed else ""),
            "runs": ordered, "summary": summarise(ordered), "expert_gains": expert_gains(ordered),
            "pooled": stored_pooled(sequence, seed, load_items(sequence)),
            "single_model": [single_model(r) for r in ordered if r["results"]],
            "versions": versions()}
    out = results_path(sequence, seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    return out


def stored_pooled(sequence: str, seed: int, items: dict) -> dict | None:
    """The pooled intervals a results JSON of ``sequence`` at ``seed`` stores (None before any
    per-item run)."""
    return pooled_intervals(items, reference(sequence), seeds=[seed]) if items["runs"] else None


def refresh_pooled() -> list[str]:
    """Recompute the ``pooled`` section each offline sequence's results JSON stores, from its
    per-item file, where it differs (a file written by a run that started before the interval
    code changed, or before another strategy's items arrived); the docs' tables are computed
    afresh either way, so this keeps the JSON saying what the docs say."""
    refreshed = []
    for sequence in OFFLINE_SEQUENCES:
        items = load_items(sequence)  # once per sequence, whichever seeds' files it has
        for path in sorted(RESULTS.glob(f"continual_{sequence}.json")) + sorted(
                RESULTS.glob(f"continual_{sequence}_seed*.json")):
            data = json.loads(path.read_text())
            pooled = stored_pooled(sequence, data["seed"], items)
            if data.get("pooled") != json.loads(json.dumps(pooled)):
                data["pooled"] = pooled
                path.write_text(json.dumps(data, indent=2) + "\n")
                refreshed.append(path.name)
    return refreshed


def score_final_model(run: dict, run_dir: Path, name: str, zero_shot: dict[str, dict], model: str,
                      keep_weights: bool) -> None:
    """A strategy's generalisation scores into ``run``; then, unless kept, its final weights go."""
    run["generalisation"].update(generalisation(run_dir, [name], zero_shot, model))
    if not keep_weights:
        remove_final_weights(run_dir, name, model)


def finish_final_model(run: dict, run_dir: Path, name: str, zero_shot: dict[str, dict], model: str,
                       args: argparse.Namespace) -> None:
    """After a cell's task scores: its generalisation scores, then its weights go (the default);
    ``--defer-generalisation`` keeps the weights for a later ``--generalisation`` pass;
    ``--skip-generalisation`` scores nothing more and removes the weights (``--keep-weights``
    keeps them either way)."""
    if args.defer_generalisation:
        return
    if args.skip_generalisation:
        if not args.keep_weights:
            remove_final_weights(run_dir, name, model)
        return
    score_final_model(run, run_dir, name, zero_shot, model, args.keep_weights)


def run_sequence(args: argparse.Namespace) -> Path:
    """Run (or resume) every requested (order, strategy); each is its own run folder, so strategies
    can be added to an order later. Results merge into one JSON per sequence. With
    ``--generalisation`` nothing is trained or merged: the generalisation scores of the final
    models already on disk are completed (e.g. after a zero-shot task was added)."""
    from recall_merge.continual.runner import print_summary, run_continual
    from recall_merge.provenance import machine

    spec = SEQUENCES[args.sequence]
    model = sequence_model(args.sequence)
    zero_shot = zero_shot_tasks(args.sequence)
    out = results_path(args.sequence, args.seed)
    previous = json.loads(out.read_text()) if out.exists() else {}
    runs = {tuple(r["order"]): r for r in previous.get("runs", [])
            if r["max_test"] == args.max_test and r["seed"] == args.seed}
    all_orders = orders(len(spec["tasks"]))
    ray_seconds = ({} if args.generalisation or getattr(args, "ray", None) is None
                   else ray_cells(args, runs))
    for index in args.orders:
        order = all_orders[index]
        run = runs.setdefault(tuple(order), {
            "order": order, "tasks": [spec["tasks"][i] for i in order], "max_test": args.max_test,
            "seed": args.seed, "cells": args.cells, "wall_seconds": {}, "generalisation": {},
            "results": None})
        for name in args.strategies:
            config = continual_config(args.sequence, order, [name], args.max_test, args.cells,
                                      args.seed)
            config["run_dir"] = str(Path(config["run_dir"]) / name)
            digest = cell_digest(config)
            if not args.generalisation and already_run(run, name, digest, args):
                print(f"== {args.sequence} order {order} {name}: in {out.name} with this "
                      "definition, skipped (--redo runs it again)")
                continue
            if args.generalisation:
                if run["results"] and name in run["results"]["methods"]:
                    score_final_model(run, Path(config["run_dir"]), name, zero_shot, model,
                                      args.keep_weights)
                    out = write_results(args.sequence, args.seed, args.max_test, runs, all_orders)
                continue
            started = time.perf_counter()
            results = run_continual(config, quiet=args.quiet)
            # under --ray the cell ran in its Ray task (its wall time there, the shared experts
            # excluded); here its stages are all on disk and only the results are rebuilt
            seconds = ray_seconds.get((index, name), time.perf_counter() - started)
            print(f"\n== {args.sequence} order {order} {name} ({seconds:.0f} s)")
            print_summary(results)
            # keep the wall time of the call that did the work (a rerun finds the stages on disk)
            run["wall_seconds"][name] = max(round(seconds, 1), run["wall_seconds"].get(name, 0))
            finish_final_model(run, Path(config["run_dir"]), name, zero_shot, model, args)
            if run["results"] is None:
                run["results"] = {**results, "methods": {}}
            run["results"]["methods"][name] = results["methods"][name]
            run.setdefault("digests", {})[name] = digest
            # the run's results keep the first cell's versions; a cell added later (another
            # release, another machine) says its own
            run.setdefault("cell_provenance", {})[name] = {
                "versions": results["versions"], "cells": args.cells,
                "machine": machine() if (index, name) not in ray_seconds else "a Ray worker"}
            run["results"]["config"] = {**results["config"], "strategies": "one run folder each"}
            items_file = Path(config["run_dir"]) / "items.json"
            with results_lock(args.sequence):  # another run.py may be writing this sequence too
                if items_file.exists():
                    record_run(args.sequence, args.seed, order, name,
                               json.loads(items_file.read_text()))
                merge_stored_runs(out, runs, args.max_test, args.seed)
                out = write_results(args.sequence, args.seed, args.max_test, runs, all_orders)
    return out


@contextlib.contextmanager
def results_lock(sequence: str):
    """One writer at a time for a sequence's result files (two lanes may run its strategies)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f".{sequence}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def merge_stored_runs(path: Path, runs: dict, max_test: int, seed: int) -> None:
    """Add to ``runs`` (in place) what another process wrote to ``path`` since this one read it:
    its orders, and its strategies' results, wall times and generalisation scores in shared
    orders; this process's own entries win."""
    if not path.exists():
        return
    for stored in json.loads(path.read_text()).get("runs", []):
        if stored["max_test"] != max_test or stored["seed"] != seed:
            continue
        mine = runs.setdefault(tuple(stored["order"]), stored)
        if mine is stored or not stored["results"]:
            continue
        if mine["results"] is None:
            mine["results"] = {**stored["results"], "methods": {}}
        for name, entry in stored["results"]["methods"].items():
            mine["results"]["methods"].setdefault(name, entry)
        for key in ("wall_seconds", "generalisation", "digests", "cell_provenance"):
            for name, value in stored.get(key, {}).items():
                mine.setdefault(key, {}).setdefault(name, value)


def ray_cells(args: argparse.Namespace, runs: dict) -> dict[tuple[int, str], float]:
    """--ray: every (order, strategy) cell at --seed that the results do not hold yet as a Ray
    task (the experts fine-tuned from the base first, one task each;
    recall_merge.continual.distributed.run_cells); (order index, strategy) -> the cell's wall
    seconds in its task."""
    from recall_merge.continual.distributed import run_cells

    all_orders = orders(len(SEQUENCES[args.sequence]["tasks"]))
    cells, configs = [], []
    for index in args.orders:
        for name in args.strategies:
            config = continual_config(args.sequence, all_orders[index], [name], args.max_test,
                                      args.cells, args.seed)
            config = {**config, "run_dir": str(Path(config["run_dir"]) / name)}
            run = runs.get(tuple(all_orders[index]))
            if run is not None and already_run(run, name, cell_digest(config), args):
                continue
            cells.append((index, name))
            configs.append(config)
    if not cells:
        return {}
    outcomes = run_cells(configs, address=args.ray, cpus_per_task=args.cpus_per_task, quiet=args.quiet)
    return {cell: round(seconds, 1) for cell, (_, seconds) in zip(cells, outcomes, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence", choices=sorted(SEQUENCES))
    parser.add_argument("--orders", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                        choices=[*STRATEGIES, "main", "tuned", "protocol", "candidates"],
                        help="'main': the strategies run at two seeds on the offline sequences; "
                             "'tuned': every family at its development setting (tune.py); "
                             "'protocol': experts from the previous merge, EMA deployment; "
                             "'candidates': the merges the default is chosen among")
    parser.add_argument("--list", action="store_true",
                        help="print the strategies --strategies names, one per line, and stop "
                             "(grid.sh runs the development candidates one strategy at a time)")
    parser.add_argument("--max-test", type=int, default=None,
                        help=f"test items per task (default {OFFLINE_TEST_ITEMS} on the offline "
                             "sequences, 40 on the historical BIG-bench ones)")
    parser.add_argument("--cells", choices=["full", "summary", "ap_bwt"], default="summary",
                        help="which R cells to score (docs/continual.md): 'summary' those AP, BWT "
                             "and FWT read; 'ap_bwt' those AP and BWT read, one task a step fewer "
                             "(the held-out runs of the default's candidates, compared on AP and "
                             "BWT)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--redo", action="store_true",
                        help="run cells again that the results already hold with the same "
                             "definition (by default they are skipped)")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run the cells as Ray tasks (docs/scale.md): alone a local Ray, or a "
                             "running cluster's address")
    parser.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per Ray task")
    # at most one of the three generalisation modes
    generalisation = parser.add_mutually_exclusive_group()
    generalisation.add_argument(
        "--generalisation", action="store_true",
        help="only complete the generalisation scores of final models on disk")
    generalisation.add_argument(
        "--defer-generalisation", action="store_true",
        help="score the tasks only and keep each final model's weights on disk (0.5 GB each); a "
             "later --generalisation run scores them and removes the weights. On the development "
             "sequence the generalisation scores take about as long as the rest of a merge cell, "
             "and the default is chosen on AP alone")
    generalisation.add_argument(
        "--skip-generalisation", action="store_true",
        help="score the tasks only and remove each final model's weights: no perplexity or "
             "zero-shot scores for these cells (the tables say how many orders a generalisation "
             "number rests on). For the held-out runs of the default candidates, whose comparison "
             "reads AP and BWT (on task_incremental here: ~11.5 min of generalisation after a TIES "
             "cell's 41.7 min, which included training its five experts)")
    parser.add_argument("--keep-weights", action="store_true",
                        help="keep the final models' weights once scored (0.5 GB each); by default "
                             "only their configs, merge reports and scores stay")
    parser.add_argument("--table", action="store_true", help="print the tables and exit")
    parser.add_argument("--status", action="store_true",
                        help="print which cells of the offline grid the results hold and lack, and "
                             "exit")
    parser.add_argument("--docs", "--readme", dest="docs", action="store_true",
                        help="rewrite the generated tables in docs/benchmarks.md and the headline "
                             "table in README.md, and exit")
    args = parser.parse_args()
    if args.table or args.docs or args.status:
        import benchmark_tables as tables  # the docs' tables: only these modes read them

    if args.status:
        print(tables.grid_status_table())
        return
    if args.table:
        tables.print_tables()
        return
    if args.docs:
        refreshed = refresh_pooled()
        if refreshed:
            print("recomputed the stored pooled intervals of: " + ", ".join(refreshed))
        for target, names in tables.update_docs().items():
            print(f"rewrote {target} tables: " + ", ".join(names))
        return
    if not args.sequence and not args.list:
        parser.error("--sequence is required (or --table)")
    groups = {"main": main_strategies(), "tuned": tuned_cells(),
              "protocol": list(PROTOCOL_STRATEGIES), "candidates": default_candidates()}
    if "tuned" in args.strategies and not groups["tuned"]:
        parser.error("--strategies tuned: no tuning results yet (python benchmarks/continual/tune.py)")
    args.strategies = list(dict.fromkeys(
        name for entry in args.strategies for name in groups.get(entry, [entry])))
    if args.list:
        print("\n".join(args.strategies))
        return
    if args.max_test is None:
        args.max_test = OFFLINE_TEST_ITEMS if args.sequence in OFFLINE_SEQUENCES else 40
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"wrote {run_sequence(args)}")


if __name__ == "__main__":
    main()
