"""The continual benchmark's tables, built from the committed results (``benchmarks/results``):
every generated table of docs/benchmarks.md and the README's headline table, each between its
``<!-- NAME-table -->`` markers (``python benchmarks/continual/run.py --docs`` rewrites them,
``--table`` prints the per-sequence ones). Nothing here trains, merges or scores a model.

The offline sequences (development, task-incremental, paper-shaped, Gemma) are read from their
per-item files (``pooled.py``: intervals, paired differences, Holm); the historical BIG-bench
sequences from their per-order summaries (mean ± sample std over the orders run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # benchmarks/doc_tables.py

from doc_tables import rewrite_tables  # noqa: E402
from pooled import _ci, _p, development_choice, load_items, per_task_table, pooled_table  # noqa: E402
from result_files import (  # noqa: E402
    REPO,
    order_stats,
    other_seed_results,
    reference,
    result_file,
    results_path,
    sequence_model,
    sequence_scores,
    sequences_with_results,
    summarise,
)
from sequences import (  # noqa: E402
    CHOSEN_SWEEP_POINT,
    OFFLINE_SEQUENCES,
    SEQUENCES,
    TASK_ARITHMETIC,
    TIES,
    TIES_DEV,
    default_candidates,
    main_strategies,
    orders,
    short_name,
    tuned_points,
    zero_shot_tasks,
)

BENCHMARKS_DOC = REPO / "docs" / "benchmarks.md"  # every continual table
README = REPO / "README.md"  # the headline table only
HEADLINE_SEQUENCE = "offline"  # the README's one table before any offline sequence has intervals
# The README's one table once an offline sequence has committed per-item runs: the first of these
# that has them (a held-out sequence before the development one, which the defaults are tuned on)
HEADLINE_OFFLINE = ["task_incremental", "paper_shaped", "development"]


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
    data = json.loads(result_file(f"continual_{sequence}.json").read_text())
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
    data = json.loads(result_file("continual_sweep.json").read_text())
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
    data = {s: json.loads(result_file(f"continual_{s}.json").read_text()) for s in present}
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
    sweep = json.loads(result_file("continual_sweep.json").read_text())["points"]
    variants_file = result_file("continual_variants.json")
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
        stats = [order_stats([sweep[name]["AP"]]) if name in sweep else order_stats([])]
        stats += [order_stats([run["points"][name]["AP"] if name in run["points"] else None
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
    sweep = json.loads(result_file("continual_sweep.json").read_text())
    others = json.loads(result_file("continual_seeds.json").read_text())["seeds"]
    return _by_seed_table(sweep, others)


def held_out_seeds(sequence: str) -> dict:
    """The held-out sequence's last-step merges at seeds other than 0 (``sweep.py --sequence
    SEQUENCE --seed S``, first order): seed -> summary; empty where none ran."""
    path = result_file("continual_seeds.json")
    if not path.exists():
        return {}
    runs = json.loads(path.read_text()).get("held_out", {}).get(sequence, {})
    return {seed: orders_run["order_0"] for seed, orders_run in runs.items() if "order_0" in orders_run}


def held_out_seeds_table(sequence: str) -> str:
    """The held-out sequence's points at seed 0 (``continual_variants.json``, first order) and at
    the other seeds run, as the development sequence's seeds table."""
    variants = json.loads(result_file("continual_variants.json").read_text())
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
        return f"| {label} | " + " | ".join(cells) + f" | {_fmt(order_stats(values), False)} |"

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
                 + " | ".join(cells) + f" | {_fmt(order_stats(gaps))} |")
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
    records = json.loads(result_file("task_probe.json").read_text())["records"]
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
    """The development sequence's equal-budget tuning (tune.py imports run.py: imported late)."""
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


# Training seeds the issue asks of the main strategies: two on SmolLM2, one on the second model
GRID_SEEDS = {"smollm2": (0, 1)}
GRID_SEEDS_OTHER_MODEL = (0,)


def cells_done(sequence: str, seed: int) -> dict[str, set[int]]:
    """strategy -> the order indices (``orders``) whose cell the results of ``sequence`` at
    ``seed`` hold."""
    path = results_path(sequence, seed)
    if not path.exists():
        return {}
    all_orders = orders(len(SEQUENCES[sequence]["tasks"]))
    done: dict[str, set[int]] = {}
    for run in json.loads(path.read_text())["runs"]:
        if run["order"] in all_orders and run["results"]:
            for name, entry in run["results"]["methods"].items():
                if "R" in entry:
                    done.setdefault(name, set()).add(all_orders.index(run["order"]))
    return done


def grid_status_table() -> str:
    """What the offline grid holds and lacks: per sequence and training seed, the main strategies'
    cells (three orders each, at the seeds GRID_SEEDS names) and, at seed 0, the default's other
    candidates' (three orders each), with the missing cells by order index."""
    main = main_strategies()
    candidates = [name for name in default_candidates() if name not in main]
    totals = dict.fromkeys(["main", "main_needed", "others", "others_needed"], 0)
    lines = ["| sequence | model | seed | main strategies: cells | main: missing (order indices) "
             "| other candidates: cells |", "|---|---|---|---|---|---|"]
    for sequence in OFFLINE_SEQUENCES:
        model = sequence_model(sequence)
        for seed in GRID_SEEDS.get(model, GRID_SEEDS_OTHER_MODEL):
            done = cells_done(sequence, seed)
            count = len(orders(len(SEQUENCES[sequence]["tasks"])))
            missing = {name: [k for k in range(count) if k not in done.get(name, set())]
                       for name in main}
            held = sum(count - len(left) for left in missing.values())
            gaps = "all" if not held else "; ".join(
                f"{name} ({', '.join(map(str, left))})" for name, left in missing.items() if left)
            totals["main"] += held
            totals["main_needed"] += count * len(main)
            others = "not asked"
            if seed == 0:
                others_held = sum(len(done.get(name, set())) for name in candidates)
                totals["others"] += others_held
                totals["others_needed"] += count * len(candidates)
                others = f"{others_held} of {count * len(candidates)}"
            lines.append(f"| {sequence} | {model} | {seed} | {held} of {count * len(main)} | "
                         f"{gaps or 'none'} | {others} |")
    lines += ["", f"In all: {totals['main']} of {totals['main_needed']} main-strategy cells, "
              f"{totals['others']} of {totals['others_needed']} other-candidate cells. "
              f"Main strategies ({len(main)}): {', '.join(f'`{n}`' for n in main)}. Other "
              f"candidates ({len(candidates)}): every data-free merge the default is chosen among "
              "that is not a main strategy; on the held-out sequences they run with `--cells "
              "ap_bwt --skip-generalisation` (`grid.sh`). Order indices: 0 as listed, 1 reversed, "
              "2 interleaved (`orders` in `sequences.py`)."]
    return "\n".join(lines)


def doc_tables() -> dict[str, dict]:
    """file -> {table name -> function that builds it}, for every table whose results exist."""
    held_out = [sequence for sequence in SEQUENCES if held_out_seeds(sequence)]
    bodies = {}
    if result_file("task_probe.json").exists():
        bodies["offline-probes"] = offline_probes_table
    if result_file("continual_sweep.json").exists():
        bodies["sweep"] = sweep_table
    if result_file("continual_tuning.json").exists():
        bodies["tuning"] = tuning_table
    if result_file("continual_seeds.json").exists():
        bodies["seeds"] = seeds_table
    for sequence in held_out:
        bodies[f"seeds-{sequence}"] = lambda sequence=sequence: held_out_seeds_table(sequence)
    if result_file("continual_variants.json").exists():
        bodies["variants"] = variants_table
    for sequence in sequences_with_results():
        bodies[sequence] = lambda sequence=sequence: table(sequence)
    if load_items("development")["runs"]:
        bodies["development-choice"] = development_choice_table
    for sequence in OFFLINE_SEQUENCES:
        if load_items(sequence)["runs"]:
            bodies[f"{sequence}-intervals"] = lambda sequence=sequence: (
                intervals_table(sequence) + "\n\n" + per_task_table(sequence, reference(sequence)))
    if any(results_path(sequence).exists() for sequence in OFFLINE_SEQUENCES):
        bodies["grid-status"] = grid_status_table
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


def print_tables() -> None:
    """``run.py --table``: the sweep, the variants, each sequence's table and the summary."""
    if result_file("continual_sweep.json").exists():
        print(sweep_table() + "\n")
    if result_file("continual_variants.json").exists():
        print(variants_table() + "\n")
    for sequence in sequences_with_results():
        print(table(sequence) + "\n")
    print(summary_table())
