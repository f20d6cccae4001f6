"""The continual-learning benchmark: each sequence of ``sequences.py`` in three task orders, every
strategy on the same splits, seeds and fine-tuning budget, on SmolLM2-135M-Instruct.

    python benchmarks/continual/run.py --sequence task                # every strategy, 3 orders
    python benchmarks/continual/run.py --sequence task --orders 0 --strategies expert recall_paper
    python benchmarks/continual/run.py --table                        # print the tables from the JSON
    python benchmarks/continual/run.py --docs                         # rewrite them in the docs

Each (sequence, order, strategy) is one `recall continual` run folder under
``$RECALL_MERGE_CACHE/benchmark_runs/`` (durable: an interrupted command continues where it
stopped, and strategies can be added later); experts fine-tuned from the base are trained once per
task and shared by every order and strategy of a sequence (``expert_cache``). ``--cells summary``
(the default) scores only the R cells AP, BWT and FWT read.
Writes ``benchmarks/results/continual_SEQUENCE.json`` (every R matrix, AP/BWT/FWT per order, mean
and standard deviation over the orders run, wall times, seed, versions, configs).
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
REPO = HERE.parents[1]
RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS_DOC = REPO / "docs" / "benchmarks.md"  # every continual table
README = REPO / "README.md"  # the headline table only
HEADLINE_SEQUENCE = "offline"  # the README's one table before any offline sequence has intervals
# The README's one table once an offline sequence has committed per-item runs: the first of these
# that has them (a held-out sequence before the development one, which the defaults are tuned on)
HEADLINE_OFFLINE = ["task_incremental", "paper_shaped", "development"]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # benchmarks/doc_tables.py

from doc_tables import rewrite_tables  # noqa: E402
from pooled import (  # noqa: E402
    _ci,
    _p,
    development_choice,
    load_items,
    per_task_table,
    pooled_intervals,
    pooled_table,
    record_run,
)
from sequences import (  # noqa: E402
    CHOSEN_SWEEP_POINT,
    EVALUATION,
    OFFLINE_SEQUENCES,
    OFFLINE_TEST_ITEMS,
    PROTOCOL_STRATEGIES,
    SEQUENCES,
    STRATEGIES,
    TASK_ARITHMETIC,
    TIES,
    TIES_DEV,
    TRAINING,
    ZERO_SHOT,
    chosen_default,
    default_candidates,
    main_strategies,
    orders,
    short_name,
    tuned_cells,
    tuned_points,
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


def _stats(values: list[float | None]) -> dict:
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
        summary[name] = {metric: _stats([entry.get(metric) for entry in entries])
                         for metric in ("AP", "BWT", "FWT", "average_forgetting")}
        summary[name]["orders"] = len([e for e in entries if "R" in e])
        for key in ("perplexity", "zero_shot_mean"):
            summary[name][key] = _stats([run.get("generalisation", {}).get(name, {}).get(key)
                                         for run in runs])
        summary[name]["wall_seconds"] = _stats([run.get("wall_seconds", {}).get(name) for run in runs])
    return summary


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
                "versions": results["versions"],
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


LEGEND = {
    "expert": "the newest task's expert alone",
    "recall": "RECALL at its own default parameters (`method: recall`: the paper form, τ 1)",
    "recall_paper": "RECALL, paper form = the default chosen on the development sequence",
    "recall_previous": "RECALL of the base, the previous step's merge and the newest expert "
                       "(previous-merge protocol)",
    "recall_guarded": "RECALL leaving out a newest expert that does not beat the base on its "
                      "task's dev split (data at hand at that step)",
    "recall_ties_redundancy": "RECALL's weights over TIES-trimmed task vectors, per-layer strength "
                              "from the overlap of the experts' representation shifts (variant, "
                              "no λ)",
    "recall_ties_0.5": "RECALL's weights over TIES-trimmed task vectors at TIES's λ "
                       f"{TIES_DEV['lambda']:g} (variant, best on the development sweep)",
    "recall_tv_0.25": "RECALL's weights over the task vectors at task arithmetic's λ "
                      f"{TASK_ARITHMETIC['lambda']:g} (variant, best task-vector form on the "
                      "development sweep)",
    "recall_tv_redundancy": "RECALL's weights over the task vectors, per-layer strength from the "
                            "overlap of the experts' representation shifts (variant, no λ)",
    "task_arithmetic": f"λ = {TASK_ARITHMETIC['lambda']:g} (the default merge, chosen on the development sequence)",
    "task_arithmetic_1": "λ = 1 (untuned reference)",
    "ties": f"density {TIES['density']:g}, λ = {TIES['lambda']:g}",
    "ties_0.5": f"density {TIES_DEV['density']:g}, λ = {TIES_DEV['lambda']:g} (best on the "
                "development sweep)",
    "magmax": "MagMax",
    "tsv_m": "TSV-M, task singular vectors (α 1, paper default)",
    "iso_c": "Iso-C, isotropic merging (α 1, paper default)",
    "iso_cts": "Iso-CTS, isotropic merging with task subspaces (α 1, common space 0.8)",
    "knots": "KnOTS, joint SVD of the LoRA updates, TIES on the aligned factors (official defaults)",
    "della": "DELLA, magnitude-ranked drop (density 0.5, ε 0.15, λ 1)",
    "wudi": "WUDI-merging, per-layer data-free optimisation (FusionBench defaults)",
    "opcm": "OPCM, orthogonal projection onto the previous merge (previous-merge protocol, α 0.5)",
    "dop": "DOP, dual orthogonal projection (previous-merge protocol, FusionBench defaults)",
    "sequential": "one LoRA adapter fine-tuned task after task",
    "ewc": "sequential with an online EWC penalty (λ 100, Fisher on 64 examples)",
    "lwf": "sequential with LwF distillation from the model before the task (α 1, T 2)",
    "replay": "sequential with 16 replayed examples of each old task (uses old data)",
    "joint": "multi-task LoRA on every task so far, the same step budget per stage (uses old data)",
    "joint_scaled": "multi-task LoRA on the k tasks so far with k × an expert's step budget, "
                    "the total the merged experts had (uses old data)",
    "recall_paper_from_previous": "RECALL paper form, each expert fine-tuned from the previous "
                                  "step's merge (protocol)",
    "recall_paper_ema": "RECALL paper form, an EMA of the merges deployed (β 0.5, protocol)",
    "task_arithmetic_from_previous": f"task arithmetic λ {TASK_ARITHMETIC['lambda']:g}, each "
                                     "expert fine-tuned from the previous step's merge (protocol)",
    "task_arithmetic_ema": f"task arithmetic λ {TASK_ARITHMETIC['lambda']:g}, an EMA of the "
                           "merges deployed (β 0.5, protocol)",
}
# FAMILY_tuned: the family's point chosen on the development sequence (tune.py), read once
TUNED = tuned_points()
LEGEND.update({f"{family}_tuned": f"{family} at `{point}` (`{entry['method']}` "
               f"{json.dumps(entry['parameters'], sort_keys=True)}, library {entry['library']}; "
               "chosen on the development sequence by tune.py)"
               for family, (point, entry) in TUNED.items()})


def _fmt(stat: dict, signed: bool = True, digits: int = 3, of: int | None = None) -> str:
    """mean ± sample std; ``of``: the orders the strategy ran, named when fewer have this value
    (generalisation scores deferred for some orders)."""
    if stat["mean"] is None:
        return "n/a"
    text = f"{stat['mean']:+.{digits}f}" if signed else f"{stat['mean']:.{digits}f}"
    present = len([v for v in stat["values"] if v is not None])
    text += f" ± {stat['std']:.{digits}f}" if present > 1 else ""
    return text + (f" ({present} of {of} orders)" if of is not None and present < of else "")


def table(sequence: str) -> str:
    """The table of one sequence (markdown)."""
    data = json.loads((RESULTS / f"continual_{sequence}.json").read_text())
    lines = [f"**{data['description']}** ({data['role']}; {len(data['runs'])} order(s), "
             f"{data['max_test']} test items per task)", "",
             "| strategy | AP | BWT | FWT | perplexity | zero-shot | orders | wall min / order |",
             "|---|---|---|---|---|---|---|---|"]
    base_general = sequence_scores(data["runs"][0].get("generalisation", {}).get("base", {}),
                                   zero_shot_tasks(sequence))
    base_ppl = base_general.get("perplexity")
    for name, stat in data["summary"].items():
        wall = stat["wall_seconds"]["mean"]
        lines.append(f"| {name} | {_fmt(stat['AP'], False)} | {_fmt(stat['BWT'])} | "
                     f"{_fmt(stat['FWT'])} | {_fmt(stat['perplexity'], False, 1, of=stat['orders'])} | "
                     f"{_fmt(stat.get('zero_shot_mean', {'mean': None}), False, of=stat['orders'])} | "
                     f"{stat['orders']} | {'' if wall is None else f'{wall / 60:.1f}'} |")
    if base_ppl:
        lines += ["", f"Base model: perplexity {base_ppl:.2f} on the same text"
                  + (f", zero-shot {base_general['zero_shot_mean']:.3f} ("
                     + ", ".join(f"{short_name(t)} {v:.3f}"
                                 for t, v in base_general["zero_shot"].items()) + ")"
                     if "zero_shot_mean" in base_general else "") + "."]
    legend = {name: LEGEND[name] for name in data["summary"] if name in LEGEND}
    lines += ["", "; ".join(f"`{name}`: {text}" for name, text in legend.items()) + "."]
    gains = data.get("expert_gains", {})
    if gains:
        lines += ["", "| task | base | own expert |", "|---|---|---|"]
        lines += [f"| {task} | {g['base']:.3f} | {g['expert']:.3f} |" for task, g in gains.items()]
    single = data.get("single_model", [])
    if single:
        merges = [name for name in data["summary"]
                  if name != "expert" and any(name in row for row in single)]
        lines += ["", "Single-model scenario (step 1: the base merged with one expert, scored on "
                  "that expert's task):", "",
                  "| " + " | ".join(["task", "expert alone", *merges]) + " |",
                  "|---|---|" + "---|" * len(merges)]
        for row in single:
            cells = [f"{row[m]:.3f}" if row.get(m) is not None else "" for m in ["expert", *merges]]
            lines.append("| " + " | ".join([row["task"], *cells]) + " |")
    lines += ["", "Orders run: " + "; ".join(" → ".join(short_name(t) for t in r["tasks"])
                                            for r in data["runs"])]
    return "\n".join(lines)


def sweep_table() -> str:
    """The table of the development sweep (benchmarks/continual/sweep.py)."""
    data = json.loads((RESULTS / "continual_sweep.json").read_text())
    names = list(data["base"])
    short = [name.split("/")[-1].replace("_sentence_en", "") for name in names]
    lines = [f"Development sequence, order {' → '.join(short)}; the last step's merge of all four "
             f"experts (newest: {data['newest_task'].split('/')[-1]}), {data['max_test']} test "
             "items per task.", "",
             "| point | what it asks | AP | " + " | ".join(short) + " |",
             "|---|---|---|" + "---|" * len(names),
             "| base model | | " + f"{sum(data['base'].values()) / len(names):.3f} | "
             + " | ".join(f"{data['base'][n]:.3f}" for n in names) + " |",
             "| each task's own expert | | " + f"{sum(data['own_expert'].values()) / len(names):.3f} | "
             + " | ".join(f"{data['own_expert'][n]:.3f}" for n in names) + " |"]
    for name, point in data["points"].items():
        lines.append(f"| {name} | {point['question']} | {point['AP']:.3f} | "
                     + " | ".join(f"{point['scores'][n]:.3f}" for n in names) + " |")
    return "\n".join(lines)


# Rows of the cross-sequence summary (issue: RECALL variants), in this order, where a sequence has them.
SUMMARY_ROWS = {
    "recall_paper": "RECALL, paper form (the chosen default)",
    "recall_guarded": "RECALL, guarded against a weak newest expert (variant)",
    "recall_previous": "RECALL, previous-merge protocol (variant)",
    "recall_ties_redundancy": "RECALL, TIES variant with the redundancy strength (variant)",
    "recall_ties_0.5": f"RECALL, TIES variant at λ {TIES_DEV['lambda']:g} (variant)",
    "recall_tv_0.25": f"RECALL, task-vector variant at λ {TASK_ARITHMETIC['lambda']:g} (variant)",
    "recall_tv_redundancy": "RECALL, task-vector variant with the redundancy strength (variant)",
    "task_arithmetic": f"task arithmetic, λ {TASK_ARITHMETIC['lambda']:g} (tuned on the development "
                       "sequence)",
    "task_arithmetic_1": "task arithmetic, λ 1 (untuned)",
    "ties": f"TIES, density {TIES['density']:g}, λ {TIES['lambda']:g}",
    "ties_0.5": f"TIES, density {TIES_DEV['density']:g}, λ {TIES_DEV['lambda']:g} (tuned on the "
                "development sequence)",
    "magmax": "MagMax",
    "tsv_m": "TSV-M",
    "iso_c": "Iso-C",
    "iso_cts": "Iso-CTS",
    "knots": "KnOTS",
    "della": "DELLA",
    "wudi": "WUDI-merging",
    "opcm": "OPCM (previous-merge protocol)",
    "dop": "DOP (previous-merge protocol)",
    "sequential": "sequential fine-tuning",
    "ewc": "EWC (harness default, untuned)",
    "lwf": "LwF (harness default, untuned)",
    "replay": "experience replay (uses old data)",
    "joint": "multi-task training (uses old data)",
    "joint_scaled": "multi-task training, step budget × tasks (uses old data)",
    "expert": "newest expert alone",
    "recall_paper_from_previous": "RECALL, experts fine-tuned from the previous merge (protocol)",
    "recall_paper_ema": "RECALL, EMA of the merges deployed (protocol)",
    "task_arithmetic_from_previous": "task arithmetic, experts fine-tuned from the previous merge "
                                     "(protocol)",
    "task_arithmetic_ema": "task arithmetic, EMA of the merges deployed (protocol)",
}
SUMMARY_ROWS.update({f"{family}_tuned": f"{family}, tuned on the development sequence"
                     for family in TUNED})
MERGE_BASELINES = ("task_arithmetic", "ties", "ties_0.5", "magmax")
# the continual-learning baselines that, like RECALL, keep no data of old tasks
NO_OLD_DATA_BASELINES = ("sequential", "ewc", "lwf")


def summary_table() -> str:
    """AP and BWT (mean ± sample std over the orders run) of every strategy on every sequence side by
    side, and RECALL's AP minus the best merge baseline's (task arithmetic, TIES, MagMax) and minus
    the best training baseline's that keeps no old data (sequential fine-tuning, EWC, LwF). The
    historical sequences only: each offline one has its pooled-interval table."""
    present = [s for s in sequences_with_results() if s not in OFFLINE_SEQUENCES]
    data = {s: json.loads((RESULTS / f"continual_{s}.json").read_text()) for s in present}
    full_orders = {s: len(orders(len(SEQUENCES[s]["tasks"]))) for s in present}
    header = [f"{s} ({data[s]['role']})" for s in present]
    lines = ["| strategy | " + " | ".join(f"{h} AP | BWT" for h in header) + " |",
             "|---|" + "---|---|" * len(present)]

    def cell(stat: dict, signed: bool, runs: int, sequence: str) -> str:
        text = _fmt(stat, signed)
        full = runs in (0, full_orders[sequence])
        return text if full else f"{text} ({runs} order{'s' if runs > 1 else ''})"

    for name, label in SUMMARY_ROWS.items():
        stats = [data[s]["summary"].get(name) for s in present]
        if not any(stats):
            continue
        cells = []
        for sequence, stat in zip(present, stats, strict=True):
            cells += ["—", "—"] if stat is None else [
                cell(stat["AP"], False, stat["orders"], sequence),
                cell(stat["BWT"], True, stat["orders"], sequence)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for label, group in (("RECALL − best merge baseline", MERGE_BASELINES),
                         ("RECALL − best training baseline without old data", NO_OLD_DATA_BASELINES)):
        gaps = []
        for sequence in present:
            gaps += [_recall_gap(data[sequence]["summary"], group, full_orders[sequence]), ""]
        lines.append(f"| {label} | " + " | ".join(gaps) + " |")
    return "\n".join(lines)


def _recall_gap(summary: dict, baselines: tuple[str, ...], full_orders: int) -> str:
    """RECALL's mean AP minus the best of ``baselines`` that ran, naming it (and its orders if
    fewer than the sequence's three, since a one-order mean is a weaker comparison)."""
    means = {b: summary[b]["AP"]["mean"] for b in baselines
             if b in summary and summary[b]["AP"]["mean"] is not None}
    recall = summary.get("recall_paper", {}).get("AP", {}).get("mean")
    if recall is None or not means:
        return "—"
    best = max(means, key=means.get)
    runs = summary[best]["orders"]
    note = "" if runs == full_orders else f", {runs} order{'s' if runs > 1 else ''}"
    return f"{recall - means[best]:+.3f} (vs {best}{note})"


def variants_table() -> str:
    """RECALL's variants at the settings fixed on the development sequence (its sweep, first order),
    then run unchanged on the held-out sequences (``sweep.py --sequence task|classify5|paper``):
    AP of the last step's merge of all experts, mean ± sample std over the task orders run."""
    sweep = json.loads((RESULTS / "continual_sweep.json").read_text())["points"]
    variants_file = RESULTS / "continual_variants.json"
    held_out = json.loads(variants_file.read_text())["sequences"] if variants_file.exists() else {}
    names = list(dict.fromkeys(name for runs in held_out.values() for run in runs.values()
                               for name in run["points"]))
    columns = [s for s in SEQUENCES if s in held_out]
    header = ["development (order 0, where it was chosen)"] + [
        f"{s} ({len(held_out[s])} order{'s' if len(held_out[s]) > 1 else ''})" for s in columns]
    lines = ["| point | what it asks | " + " | ".join(f"{h} AP" for h in header) + " |",
             "|---|---|" + "---|" * len(header)]
    aps: dict[str, list[dict]] = {}
    methods: dict[str, str] = {}
    for name in names:
        stats = [_stats([sweep[name]["AP"]]) if name in sweep else _stats([])]
        stats += [_stats([run["points"][name]["AP"] if name in run["points"] else None
                          for run in held_out[s].values()]) for s in columns]
        aps[name] = stats
        point = sweep.get(name) or next(run["points"][name] for s in columns
                                        for run in held_out[s].values() if name in run["points"])
        question, methods[name] = point["question"], point["method"]
        cells = [_fmt(stats[0], False)]
        for sequence, stat in zip(columns, stats[1:], strict=True):
            runs = sum(value is not None for value in stat["values"])
            partial = 0 < runs < len(held_out[sequence])
            cells.append(_fmt(stat, False) + (f" ({runs} order{'s' if runs > 1 else ''})"
                                              if partial else ""))
        lines.append(f"| {name} | {question} | " + " | ".join(cells) + " |")
    baselines = [n for n in names if methods[n] != "recall"]
    recall_forms = [n for n in names if n not in baselines]

    def best(group: list[str], column: int) -> tuple[str, float] | None:
        scored = [(n, aps[n][column]["mean"]) for n in group if aps[n][column]["mean"] is not None]
        return max(scored, key=lambda item: item[1]) if scored else None

    # The chosen default is the point that the development sweep kept; the best form per column
    # is picked on that column's own numbers, i.e. with hindsight on a held-out one.
    for label, group in [(f"chosen default ({CHOSEN_SWEEP_POINT}) − best baseline", [CHOSEN_SWEEP_POINT]),
                         ("best RECALL form, picked with hindsight − best baseline", recall_forms)]:
        cells = []
        for column in range(len(header)):
            recall, baseline = best(group, column), best(baselines, column)
            cells.append("—" if not recall or not baseline else
                         f"{recall[1] - baseline[1]:+.3f} ({recall[0]} vs {baseline[0]})")
        lines.append(f"| {label} | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_table() -> str:
    """The development sweep's SEED_POINTS at seed 0 (``continual_sweep.json``, where the defaults
    were chosen) and at the other seeds run (``sweep.py --seed S``): AP of the last step's merge of
    all four experts in the first order, and the mean ± sample std over the seeds."""
    sweep = json.loads((RESULTS / "continual_sweep.json").read_text())
    others = json.loads((RESULTS / "continual_seeds.json").read_text())["seeds"]
    return _by_seed_table(sweep, others)


def held_out_seeds(sequence: str) -> dict:
    """The held-out sequence's last-step merges at seeds other than 0 (``sweep.py --sequence
    SEQUENCE --seed S``, first order): seed -> summary; empty where none ran."""
    path = RESULTS / "continual_seeds.json"
    if not path.exists():
        return {}
    runs = json.loads(path.read_text()).get("held_out", {}).get(sequence, {})
    return {seed: orders_run["order_0"] for seed, orders_run in runs.items() if "order_0" in orders_run}


def held_out_seeds_table(sequence: str) -> str:
    """The held-out sequence's points at seed 0 (``continual_variants.json``, first order) and at
    the other seeds run, as the development sequence's seeds table."""
    variants = json.loads((RESULTS / "continual_variants.json").read_text())
    return _by_seed_table(variants["sequences"][sequence]["order_0"], held_out_seeds(sequence))


def _by_seed_table(seed_zero: dict, others: dict) -> str:
    """AP of each point the other seeds ran, at seed 0 and at each other seed, the mean ± sample
    std over seeds, and the chosen default's gap to the best baseline (a merge other than RECALL)
    of each seed. A point missing at a seed is a dash."""
    by_seed = {0: seed_zero, **{int(seed): data for seed, data in sorted(others.items(), key=lambda
                                                                             item: int(item[0]))}}
    names = list(dict.fromkeys(name for data in list(by_seed.values())[1:] for name in data["points"]))
    lines = ["| point | " + " | ".join(f"seed {seed}" for seed in by_seed)
             + " | mean ± std over seeds |", "|---|" + "---|" * (len(by_seed) + 1)]

    def row(label: str, values: list[float | None]) -> str:
        cells = ["—" if value is None else f"{value:.3f}" for value in values]
        return f"| {label} | " + " | ".join(cells) + f" | {_fmt(_stats(values), False)} |"

    def mean_of(scores: dict) -> float:
        return sum(scores.values()) / len(scores)

    lines.append(row("base model", [mean_of(data["base"]) for data in by_seed.values()]))
    lines.append(row("each task's own expert", [mean_of(data["own_expert"])
                                                for data in by_seed.values()]))
    aps = {name: [data["points"][name]["AP"] if name in data["points"] else None
                  for data in by_seed.values()] for name in names}
    for name in names:
        lines.append(row(name, aps[name]))
    method = {name: data["points"][name]["method"] for data in by_seed.values()
              for name in data["points"]}
    baselines = [n for n in names if method[n] != "recall"]
    gaps, cells = [], []
    for column in range(len(by_seed)):
        scored = [(n, aps[n][column]) for n in baselines if aps[n][column] is not None]
        chosen = aps[CHOSEN_SWEEP_POINT][column] if CHOSEN_SWEEP_POINT in aps else None
        if not scored or chosen is None:
            gaps.append(None)
            cells.append("—")
            continue
        best, value = max(scored, key=lambda item: item[1])
        gaps.append(chosen - value)
        cells.append(f"{chosen - value:+.3f} (vs {best})")
    lines.append(f"| chosen default ({CHOSEN_SWEEP_POINT}) − best baseline of that seed | "
                 + " | ".join(cells) + f" | {_fmt(_stats(gaps))} |")
    return "\n".join(lines)


# Strategies shown in the other-seeds continual table, where a run has them.
OTHER_SEED_ROWS = ("recall_paper", *MERGE_BASELINES, "expert", *NO_OLD_DATA_BASELINES, "replay",
                   "joint")


def continual_seeds_table() -> str:
    """Continual runs (whole R matrix) at seeds other than 0, beside seed 0's runs of the same
    orders: per sequence, seed and strategy, AP / BWT / FWT averaged over the orders that strategy
    ran at that seed (mean ± std where there are several)."""
    lines = ["| sequence | seed | strategy | orders | AP | BWT | FWT | seed 0, same orders: AP | BWT |",
             "|---|---|---|---|---|---|---|---|---|"]
    for sequence in SEQUENCES:
        base_file = results_path(sequence)
        seed0 = json.loads(base_file.read_text())["runs"] if base_file.exists() else []
        for seed, path in other_seed_results(sequence).items():
            runs = json.loads(path.read_text())["runs"]
            for name in OTHER_SEED_ROWS:
                ran = [run for run in runs if run["results"] and "R" in run["results"]["methods"].get(name, {})]
                if not ran:
                    continue
                same = [run for run in seed0 if run["results"]
                        and run["order"] in [r["order"] for r in ran]]
                stat, old = summarise(ran)[name], summarise(same).get(name)
                order_text = ", ".join("".join(str(i) for i in run["order"]) for run in ran)
                lines.append(
                    f"| {sequence} | {seed} | {name} | {order_text} | {_fmt(stat['AP'], False)} | "
                    f"{_fmt(stat['BWT'])} | {_fmt(stat['FWT'])} | "
                    f"{_fmt(old['AP'], False) if old else '—'} | {_fmt(old['BWT']) if old else '—'} |")
    return "\n".join(lines)


def headline_table(sequence: str = HEADLINE_SEQUENCE) -> str:
    """The README's one results table: AP, BWT, perplexity and wall time of every strategy on one
    sequence, with what a reader needs to weigh it (test items, seed, orders, command) next to it."""
    data = json.loads(results_path(sequence).read_text())
    summary = data["summary"]
    lines = ["| strategy | AP | BWT | perplexity | wall min / order |", "|---|---|---|---|---|"]
    for name, label in SUMMARY_ROWS.items():
        if name not in summary:
            continue
        stat, wall = summary[name], summary[name]["wall_seconds"]["mean"]
        lines.append(f"| {label} | {_fmt(stat['AP'], False)} | {_fmt(stat['BWT'])} | "
                     f"{_fmt(stat['perplexity'], False, 1)} | {'' if wall is None else f'{wall / 60:.1f}'} |")
    full = len(orders(len(SEQUENCES[sequence]["tasks"])))
    runs = len(data["runs"])
    base_ppl = data["runs"][0].get("generalisation", {}).get("base", {}).get("perplexity")
    lines += ["", f"{data['description']}; {len(data['tasks'])} tasks, {data['max_test']} test items "
              f"per task, seed {data['seed']}, {runs} task order{'s' if runs > 1 else ''}; AP and BWT "
              "are mean ± sample std over the orders"
              + (f"; the base model's perplexity is {base_ppl:.1f}" if base_ppl else "") + ". "
              f"RECALL − best merge baseline: {_recall_gap(summary, MERGE_BASELINES, full)}; "
              "RECALL − best training baseline without old data: "
              f"{_recall_gap(summary, NO_OLD_DATA_BASELINES, full)}. Command: `{data['command']}`."]
    return "\n".join(lines)


def offline_headline(sequence: str) -> str:
    """The README's table once an offline sequence has per-item runs: its pooled-interval table,
    saying whether defaults were tuned on it."""
    role = ("the development sequence: the defaults and λ are tuned on it, so read its gaps as "
            "in-sample" if SEQUENCES[sequence]["role"] == "development"
            else "a held-out sequence: nothing was tuned on it")
    return f"Sequence `{sequence}` — {role}.\n\n" + intervals_table(sequence)


def intervals_table(sequence: str) -> str:
    """An offline sequence's pooled-interval table (every seed and order in its items file), with
    the mean wall time of each strategy's runs from the per-seed result files."""
    walls: dict[str, list[float]] = {}
    commands = []
    for path in [results_path(sequence), *other_seed_results(sequence).values()]:
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        commands.append(data["command"])
        for run in data["runs"]:
            for name, seconds in run.get("wall_seconds", {}).items():
                walls.setdefault(name, []).append(seconds)
    model = sequence_model(sequence)
    spec = SEQUENCES[sequence]
    return pooled_table(sequence, reference(sequence),
                        f"{spec['description']} ({spec['role']}; {model})",
                        "`; `".join(commands) or f"python benchmarks/continual/run.py --sequence "
                                                 f"{sequence}", walls, LEGEND)


OFFLINE_PROBE_MIN_ITEMS = 200  # the offline benchmark's probes (older probes used 24-40 items)


def offline_probes_table() -> str:
    """Learnability of the offline tasks (probe_tasks.py, >= 200 test items): base and own-expert
    score at the probe's budget, the majority label's rate, and how many labels the expert
    predicts (one label means it learned the prior, not the task)."""
    records = json.loads((RESULTS / "task_probe.json").read_text())["records"]
    rows = [r for r in records if r["num_test"] >= OFFLINE_PROBE_MIN_ITEMS]
    lines = ["| task | kind, metric | test items | budget | base | own expert | gain | majority "
             "label | labels predicted | seed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        expert = r.get("expert")
        predicted = r.get("expert_predictions") or r.get("base_predictions") or {}
        budget = ("base only" if r["steps"] == 0
                  else f"{r['steps']} steps of 8, lr {r['learning_rate']:g}")
        if r.get("sequence"):  # probed at that sequence's lengths (and model)
            budget += f"; as `{r['sequence']}` runs it ({r.get('model', 'smollm2')})"
        majority = r.get("majority_class_rate")
        scored = ["", ""] if expert is None else [f"{expert:.3f}", f"{expert - r['base']:+.3f}"]
        lines.append(
            f"| `{r['task']}` | {r['kind']}, {r['metric']} | {r['num_test']} | {budget} | "
            f"{r['base']:.3f} | {scored[0]} | {scored[1]} | "
            f"{'' if majority is None else f'{majority:.3f}'} | "
            f"{len(predicted) if predicted else ''} | {r['seed']}"
            + (f", training {r['training_seed']}" if "training_seed" in r else "") + " |")
    return "\n".join(lines)


def tuning_table() -> str:
    """The development sequence's equal-budget tuning (tune.py imports this module: imported late)."""
    from tune import tuning_table as table

    return table()


def development_choice_table() -> str:
    """docs/benchmarks.md: the default the development sequence chooses (pooled.development_choice)
    and every other candidate's paired ΔAP against it; which candidates still lack an order."""
    candidates = default_candidates()
    data = load_items("development")
    choice = development_choice(data, candidates)
    if choice is None:
        return "No data-free merge has been run in every development order yet."
    complete = [choice["chosen"], *choice["others"]]
    started = [name for name in candidates if name not in complete
               and any(name in entry["strategies"] for entry in data["runs"].values())]
    never = [name for name in candidates if name not in complete and name not in started]
    orders_run = "; ".join("→".join(str(i) for i in data["runs"][key]["order"])
                           for key in choice["runs"])
    lines = [f"**{'Leading so far' if started or never else 'Chosen'}: `{choice['chosen']}`**, AP {_ci(choice['AP'])} pooled over "
             f"{len(choice['runs'])} runs (training seed {choice['seed']}, orders {orders_run}), "
             f"among the {len(complete)} data-free merges run in every one of those orders"
             + (f"; not yet in every order: {', '.join(f'`{n}`' for n in started)}" if started
                else "")
             + (f"; not run yet: {', '.join(f'`{n}`' for n in never)}" if never else "") + ".", "",
             f"| candidate | AP [95 % CI] | ΔAP vs {choice['chosen']} [95 % CI] | p (Holm) | verdict |",
             "|---|---|---|---|---|",
             f"| {choice['chosen']} | {_ci(choice['AP'])} | chosen | | |"]
    ranked = sorted(choice["others"].items(), key=lambda item: -item[1]["AP"]["estimate"])
    for name, entry in ranked:
        versus = entry["vs_chosen"]
        lines.append(f"| {name} | {_ci(entry['AP'])} | {_ci(versus, True)} | "
                     f"{_p(versus['p_holm'], choice['method']['resamples'])} | {versus['verdict']} |")
    return "\n".join(lines)


def doc_tables() -> dict[str, dict]:
    """file -> {table name -> function that builds it}, for every table whose results exist."""
    held_out = [sequence for sequence in SEQUENCES if held_out_seeds(sequence)]
    bodies = {}
    if (RESULTS / "task_probe.json").exists():
        bodies["offline-probes"] = offline_probes_table
    if (RESULTS / "continual_sweep.json").exists():
        bodies["sweep"] = sweep_table
    if (RESULTS / "continual_tuning.json").exists():
        bodies["tuning"] = tuning_table
    if (RESULTS / "continual_seeds.json").exists():
        bodies["seeds"] = seeds_table
    for sequence in held_out:
        bodies[f"seeds-{sequence}"] = lambda sequence=sequence: held_out_seeds_table(sequence)
    if (RESULTS / "continual_variants.json").exists():
        bodies["variants"] = variants_table
    for sequence in sequences_with_results():
        bodies[sequence] = lambda sequence=sequence: table(sequence)
    if load_items("development")["runs"]:
        bodies["development-choice"] = development_choice_table
    for sequence in OFFLINE_SEQUENCES:
        if load_items(sequence)["runs"]:
            bodies[f"{sequence}-intervals"] = lambda sequence=sequence: (
                intervals_table(sequence) + "\n\n" + per_task_table(sequence, reference(sequence)))
    if sequences_with_results():
        bodies["summary"] = summary_table
    if any(other_seed_results(sequence) for sequence in SEQUENCES):
        bodies["continual-seeds"] = continual_seeds_table
    offline = headline_sequence()
    if offline is not None:
        headline = {"headline": lambda: offline_headline(offline)}
    else:
        headline = {"headline": headline_table} if results_path(HEADLINE_SEQUENCE).exists() else {}
    return {"benchmarks": bodies, "readme": headline}


def headline_sequence() -> str | None:
    """The sequence of the README's one results table: the first held-out sequence of
    HEADLINE_OFFLINE whose main strategies all have their three task orders at training seed 0 (a
    headline of one strategy in one order would say nothing), else the development sequence once
    it has runs."""
    main = main_strategies()  # reads the development items once, not per run entry
    for sequence in HEADLINE_OFFLINE:
        runs = [entry for entry in load_items(sequence)["runs"].values() if entry["seed"] == 0]
        if SEQUENCES[sequence].get("role") == "development":
            if runs:
                return sequence
        elif len(runs) >= 3 and all(name in entry["strategies"] for entry in runs for name in main):
            return sequence
    return None


def update_docs(benchmarks: Path = BENCHMARKS_DOC, readme: Path = README) -> dict[str, list[str]]:
    """Rewrite the generated tables in place: every continual table in docs/benchmarks.md and the
    headline table in README.md (the text between ``<!-- NAME-table ... -->`` and
    ``<!-- /NAME-table -->``). Returns the names rewritten in each file."""
    tables = doc_tables()
    return {"benchmarks": rewrite_tables(benchmarks, tables["benchmarks"]),
            "readme": rewrite_tables(readme, tables["readme"])}


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
    parser.add_argument("--cells", choices=["full", "summary"], default="summary")
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
    parser.add_argument("--docs", "--readme", dest="docs", action="store_true",
                        help="rewrite the generated tables in docs/benchmarks.md and the headline "
                             "table in README.md, and exit")
    args = parser.parse_args()
    if args.table:
        if (RESULTS / "continual_sweep.json").exists():
            print(sweep_table() + "\n")
        if (RESULTS / "continual_variants.json").exists():
            print(variants_table() + "\n")
        for sequence in sequences_with_results():
            print(table(sequence) + "\n")
        print(summary_table())
        return
    if args.docs:
        refreshed = refresh_pooled()
        if refreshed:
            print("recomputed the stored pooled intervals of: " + ", ".join(refreshed))
        for target, names in update_docs().items():
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
