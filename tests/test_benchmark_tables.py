"""The benchmark tables in docs/benchmarks.md, docs/speed.md and the README's headline table are
generated from the committed result JSON (``benchmarks/results/``); these tests keep the generators
and the documents in step and check the settings helper. Nothing is trained or merged here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from benchmark_scripts import load_script

REPO = Path(__file__).resolve().parents[1]
CONTINUAL = REPO / "benchmarks" / "continual"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(CONTINUAL))
    try:
        run = load_script("continual_benchmark_run", "continual/run.py")
        yield run, sys.modules["sequences"]
    finally:
        sys.path.remove(str(CONTINUAL))


@pytest.fixture(scope="module")
def tables(bench):
    """benchmarks/continual/benchmark_tables.py (the docs' tables), imported beside run.py."""
    import benchmark_tables as module

    return module


@pytest.fixture(scope="module")
def files(bench):
    """benchmarks/continual/result_files.py (where the results live), as run.py imported it."""
    return sys.modules["result_files"]


def test_sequence_settings_put_a_sequences_overrides_on_the_shared_defaults(bench):
    run, sequences = bench
    for name, spec in sequences.SEQUENCES.items():
        settings = run.sequence_settings(name)
        for part, defaults in (("training", sequences.TRAINING), ("evaluation", sequences.EVALUATION)):
            overrides = spec.get(part, {})
            assert set(settings[part]) == set(defaults) | set(overrides)
            for key, value in settings[part].items():
                assert value == overrides.get(key, defaults.get(key))
    # the paper-shaped sequence evaluates longer prompts than the shared default
    assert run.sequence_settings("paper")["evaluation"]["max_length"] == 320


def test_doc_tables_are_the_generated_ones(tables, files, bench, tmp_path):
    """Every continual table in docs/benchmarks.md, and the headline table in README.md, equals
    what ``run.py --docs`` writes from the JSON; every table with results has its markers, and
    rewriting leaves the text outside the markers untouched."""
    run, sequences = bench
    documents = {"benchmarks": REPO / "docs" / "benchmarks.md", "readme": REPO / "README.md"}
    copies = {}
    for key, path in documents.items():
        copies[key] = tmp_path / f"{key}_{path.name}"
        copies[key].write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    done = tables.update_docs(copies["benchmarks"], copies["readme"])
    expected = {"sweep", "summary", *[s for s in [*sequences.SEQUENCES, "variants", "seeds"]
                                      if (run.RESULTS / f"continual_{s}.json").exists()],
                *[f"seeds-{s}" for s in sequences.SEQUENCES if tables.held_out_seeds(s)],
                *(["continual-seeds"] if any(files.other_seed_results(s) for s in sequences.SEQUENCES)
                  else []),
                *(["offline-probes"] if (run.RESULTS / "task_probe.json").exists() else []),
                *(["tuning"] if (run.RESULTS / "continual_tuning.json").exists() else []),
                *[f"{s}-intervals" for s in sequences.OFFLINE_SEQUENCES
                  if run.load_items(s)["runs"]],
                *(["development-choice"] if run.load_items("development")["runs"] else []),
                *(["grid-status"] if any(run.results_path(s).exists()
                                         for s in sequences.OFFLINE_SEQUENCES) else [])}
    assert set(done["benchmarks"]) == expected
    assert done["readme"] == ["headline"]
    for key, path in documents.items():
        assert copies[key].read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
            f"{path.relative_to(REPO)} tables are stale: run `python benchmarks/continual/run.py --docs`")


def test_headline_table_states_what_it_rests_on(tables, bench):
    """The README's one results table names its test items, seed, orders and command, and has a
    row for every strategy the headline sequence ran, RECALL's first."""
    run, _ = bench
    offline = tables.headline_sequence()
    if offline:  # the pooled-interval table of that sequence
        table = tables.offline_headline(offline)
        assert table.startswith(f"Sequence `{offline}`") and "Command: `" in table
        reference = run.reference(offline)  # the chosen default once there is one
        assert f"| strategy | AP [95 % CI] | BWT [95 % CI] | ΔAP vs {reference} [95 % CI] |" in table
        return
    data = json.loads(run.results_path(tables.HEADLINE_SEQUENCE).read_text())
    lines = tables.headline_table().splitlines()
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert len(rows) == len(data["summary"])
    assert rows[0].startswith("| RECALL, paper form")
    caption = lines[-1]
    for part in (f"{data['max_test']} test items per task", f"seed {data['seed']}",
                 f"{len(data['runs'])} task orders", f"`{data['command']}`"):
        assert part in caption


def test_summary_statistics_over_orders(tables, files, bench):
    run, _ = bench
    stat = files.order_stats([0.5, None, 0.7])
    assert stat["mean"] == pytest.approx(0.6)
    assert stat["std"] == pytest.approx(0.1414213, rel=1e-5)  # sample std of the two present
    assert files.order_stats([None])["mean"] is None
    assert tables._fmt(files.order_stats([0.25])) == "+0.250"
    assert tables._fmt(files.order_stats([0.5, 0.7]), signed=False) == "0.600 ± 0.141"
    # a value some orders lack (deferred generalisation) says how many orders it rests on
    assert tables._fmt(files.order_stats([42.0, None, None]), False, 1, of=3) == "42.0 (1 of 3 orders)"
    assert tables._fmt(files.order_stats([42.0, 44.0]), False, 1, of=2) == "43.0 ± 1.4"


def test_committed_results_record_seed_versions_and_command():
    for path in sorted((REPO / "benchmarks" / "results").glob("continual_*.json")):
        data = json.loads(path.read_text())
        assert "seed" in data and "versions" in data and "command" in data, path.name


def test_summary_table_puts_every_sequence_side_by_side(tables, bench):
    run, sequences = bench
    table = tables.summary_table().splitlines()
    present = [s for s in sequences.SEQUENCES if (run.RESULTS / f"continual_{s}.json").exists()
               and s not in sequences.OFFLINE_SEQUENCES]  # those have interval tables instead
    assert len(table[0].split("|")) - 2 == 1 + 2 * len(present)  # strategy, then AP and BWT each
    assert table[2].startswith("| RECALL, paper form")
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1:2] for line in table[2:]}
    for label, group in (("RECALL − best merge baseline", tables.MERGE_BASELINES),
                         ("RECALL − best training baseline without old data", tables.NO_OLD_DATA_BASELINES)):
        for sequence, gap in zip(present, rows[label], strict=True):
            summary = json.loads((run.RESULTS / f"continual_{sequence}.json").read_text())["summary"]
            ran = [summary[b]["AP"]["mean"] for b in group if b in summary]
            if not ran:  # e.g. a sequence run with the merges only: no gap to state
                assert gap.strip() == "—"
                continue
            best = max(ran)
            assert float(gap.split()[0]) == pytest.approx(summary["recall_paper"]["AP"]["mean"] - best,
                                                          abs=5e-4)


def test_generalisation_scores_under_other_settings_are_not_reused(bench, tmp_path):
    run, _ = bench
    file = tmp_path / "generalisation.json"
    assert run.load_scores(file) == {}
    run.save_scores(file, {"ties": {"perplexity": 40.0}})
    assert run.load_scores(file) == {"ties": {"perplexity": 40.0}}
    stored = json.loads(file.read_text())
    stored["_settings"]["perplexity_texts"] += 1
    file.write_text(json.dumps(stored))
    assert run.load_scores(file) == {}  # scored on other texts: scored again
    file.write_text(json.dumps({"ties": {"perplexity": 40.0}}))  # written before settings were kept
    assert run.load_scores(file) == {"ties": {"perplexity": 40.0}}


def test_by_seed_table_gives_each_seed_a_column_and_the_chosen_defaults_gap(tables, bench):
    """Made-up summaries (two tasks, two seeds): a point missing at a seed is a dash and stays out
    of that seed's gap; the gap row takes the best merge that is not RECALL at each seed."""
    run, _ = bench

    def summary(points: dict) -> dict:
        return {"base": {"a": 0.2, "b": 0.4}, "own_expert": {"a": 0.6, "b": 0.8},
                "points": {name: {"method": method, "AP": ap} for name, (method, ap) in points.items()}}

    seed_zero = summary({"paper": ("recall", 0.5), "ties_0.5": ("ties", 0.45),
                         "magmax": ("magmax", 0.3), "unrun": ("recall", 0.1)})
    seed_one = summary({"paper": ("recall", 0.4), "ties_0.5": ("ties", 0.42),
                        "average": ("linear", 0.44)})
    table = tables._by_seed_table(seed_zero, {"1": seed_one}).splitlines()
    assert table[0] == "| point | seed 0 | seed 1 | mean ± std over seeds |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table[2:]}
    # only the points the other seeds ran; seed 0 has no average, so neither has its gap
    assert set(rows) == {"base model", "each task's own expert", "paper", "ties_0.5", "average",
                         "chosen default (paper) − best baseline of that seed"}
    assert rows["average"].startswith("| average | — | 0.440 |")
    assert rows["base model"].startswith("| base model | 0.300 | 0.300 |")
    assert rows["ties_0.5"].startswith("| ties_0.5 | 0.450 | 0.420 |")
    gap = rows["chosen default (paper) − best baseline of that seed"]
    assert "+0.050 (vs ties_0.5) | -0.040 (vs average) | +0.005 ± 0.064" in gap


def test_continual_runs_at_another_seed_have_their_own_file_and_table(
        tables, files, bench, tmp_path, monkeypatch):
    """Made-up runs: seed 1 writes next to seed 0, never over it, and the table sets each seed-1
    strategy beside seed 0's runs of the same orders only."""
    run, _ = bench
    monkeypatch.setattr(files, "RESULTS", tmp_path)
    assert run.results_path("domain") == tmp_path / "continual_domain.json"
    assert run.results_path("domain", 1) == tmp_path / "continual_domain_seed1.json"

    def order_run(order: list[int], ap: float, bwt: float) -> dict:
        entry = {"AP": ap, "BWT": bwt, "FWT": 0.01, "average_forgetting": 0.0, "R": [[0.0]]}
        return {"order": order, "results": {"methods": {"recall_paper": entry}}}

    seed_zero = [order_run([0, 1, 2, 3], 0.5, -0.1), order_run([1, 3, 0, 2], 0.9, 0.2)]
    (tmp_path / "continual_domain.json").write_text(json.dumps({"runs": seed_zero}))
    seed_one = [order_run([0, 1, 2, 3], 0.4, -0.05), order_run([1, 3, 0, 2], 0.6, 0.05)]
    seed_one[0]["results"]["methods"]["magmax"] = seed_one[0]["results"]["methods"]["recall_paper"]
    (tmp_path / "continual_domain_seed1.json").write_text(json.dumps({"runs": seed_one}))
    (tmp_path / "continual_domain_seedling.json").write_text("{}")  # not a seed file
    assert files.other_seed_results("domain") == {1: tmp_path / "continual_domain_seed1.json"}
    rows = tables.continual_seeds_table().splitlines()[2:]
    # each strategy over the orders it ran; seed 0 has no magmax run
    assert rows == [
        "| domain | 1 | recall_paper | 0123, 1302 | 0.500 ± 0.141 | +0.000 ± 0.071 | +0.010 ± 0.000 "
        "| 0.700 ± 0.283 | +0.050 ± 0.212 |",
        "| domain | 1 | magmax | 0123 | 0.400 | -0.050 | +0.010 | — | — |"]


def test_variants_table_compares_the_best_recall_form_with_the_best_baseline(tables, bench):
    """Held-out AP of each variant is the mean over the orders run; the last two rows are the
    chosen default (the paper form) and the best RECALL form minus the best baseline, per column."""
    run, sequences = bench
    path = run.RESULTS / "continual_variants.json"
    if not path.exists():
        pytest.skip("no held-out variant results committed")
    held_out = json.loads(path.read_text())["sequences"]
    rows = {line.split("|")[1].strip(): line.split("|")[3:-1]
            for line in tables.variants_table().splitlines()[2:]}
    chosen_gaps = rows.pop(f"chosen default ({sequences.CHOSEN_SWEEP_POINT}) − best baseline")
    gaps = rows.pop("best RECALL form, picked with hindsight − best baseline")
    columns = [s for s in run.SEQUENCES if s in held_out]
    for index, sequence in enumerate(columns, start=1):
        means = {}
        for name in rows:
            values = [r["points"][name]["AP"] for r in held_out[sequence].values()
                      if name in r["points"]]
            if not values:
                assert rows[name][index].strip() == "n/a"
                continue
            means[name] = sum(values) / len(values)
            assert float(rows[name][index].split()[0]) == pytest.approx(means[name], abs=5e-4)
        methods = {n: next(r["points"][n]["method"] for r in held_out[sequence].values()
                           if n in r["points"]) for n in means}
        baselines = [n for n in means if methods[n] != "recall"]
        best_recall = max(means[n] for n in means if n not in baselines)
        best_baseline = max(means[n] for n in baselines)
        assert float(gaps[index].split()[0]) == pytest.approx(best_recall - best_baseline, abs=5e-4)
        assert float(chosen_gaps[index].split()[0]) == pytest.approx(means["paper"] - best_baseline,
                                                                     abs=5e-4)


def test_speed_table_is_the_generated_one(tmp_path):
    """The speed table of docs/speed.md equals what ``merge_speed/run.py --docs`` writes from the
    JSON, and every case of the committed run has a row with its ratios."""
    speed = load_script("merge_speed_benchmark_run", "merge_speed/run.py")
    document = json.loads(speed.RESULTS.read_text())
    assert {"measured_at", "command", "versions", "machine"} <= set(document)
    page = REPO / "docs" / "speed.md"
    assert speed.SPEED_DOC == page
    copy = tmp_path / "speed.md"
    copy.write_text(page.read_text(encoding="utf-8"), encoding="utf-8")
    speed.update_docs(copy, document)
    assert copy.read_text(encoding="utf-8") == page.read_text(encoding="utf-8"), (
        "docs/speed.md's table is stale: run `python benchmarks/merge_speed/run.py --docs`")
    rows = speed.speed_table(document).splitlines()[2:]
    assert len(rows) == len(document["cases"])
    for row, case in zip(rows, document["cases"], strict=True):
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        assert float(cells[4]) == pytest.approx(case["ratios"]["our_linear_wall_over_mergekit"], abs=5e-3)


def test_methods_speed_table_is_the_generated_one(tmp_path):
    """The methods table of docs/speed.md equals what ``merge_speed/run.py --docs`` writes from
    merge_speed_methods.json; every measured row has a line with its ratio to task arithmetic of
    the same case, every run recorded its load and that the background job it paused was stopped
    (``T``) from start to end, and a full-model projection adds up its measured parts."""
    speed = load_script("merge_speed_benchmark_run", "merge_speed/run.py")
    document = json.loads(speed.METHODS_RESULTS.read_text())
    page = REPO / "docs" / "speed.md"
    copy = tmp_path / "speed.md"
    copy.write_text(page.read_text(encoding="utf-8"), encoding="utf-8")
    speed.update_docs(copy, json.loads(speed.RESULTS.read_text()), document)
    assert copy.read_text(encoding="utf-8") == page.read_text(encoding="utf-8"), (
        "docs/speed.md's methods table is stale: run `python benchmarks/merge_speed/run.py --docs`")
    for run in document["runs"]:
        assert run["paused_pids"], "a methods run without the background job paused"
        for moment in ("at_start", "at_end"):
            assert len(run[moment]["loadavg"]) == 3
            assert set(run[moment]["paused_pids_state"].values()) == {"T"}
    lines = speed.methods_table(document).splitlines()[2:]
    measured = [(case, row) for case in document["cases"] for row in case["rows"]]
    assert len(lines) == len(measured)
    for line, (case, row) in zip(lines, measured, strict=True):
        assert 0 <= case["run"] < len(document["runs"])
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        assert cells[1] == f"`{row}`"
        reference = case["rows"][speed.REFERENCE_METHOD]["wall_s"]
        assert float(cells[6]) == pytest.approx(case["rows"][row]["wall_s"] / reference, abs=5e-3)
    cut = next(case for case in document["cases"] if case["blocks"] and "wudi" in case["rows"])
    full = next(case for case in document["cases"]
                if case["blocks"] is None and case["num_models"] == cut["num_models"])
    rows = cut["rows"]
    expected = (full["rows"]["task_arithmetic"]["merge_stage_s"]
                + cut["full_blocks"] / cut["blocks"]
                * (rows["wudi_no_embed"]["merge_stage_s"] - rows["task_arithmetic"]["merge_stage_s"])
                + rows["wudi"]["merge_stage_s"] - rows["wudi_no_embed"]["merge_stage_s"])
    assert speed.projection(document, cut, "wudi", "merge_stage_s") == pytest.approx(expected)
    # nothing to project for a whole-model case
    assert speed.projection(document, full, "task_arithmetic", "merge_stage_s") is None


def test_chosen_sweep_point_has_the_chosen_recall_settings(bench):
    """The variants table's "chosen default" row reads the sweep point named in sequences.py; that
    point must have been scored with exactly the settings the continual runs use as RECALL."""
    run, sequences = bench
    points = json.loads((run.RESULTS / "continual_sweep.json").read_text())["points"]
    chosen = points[sequences.CHOSEN_SWEEP_POINT]
    assert chosen["method"] == "recall"
    assert chosen["parameters"] == sequences.RECALL_CHOSEN == sequences.STRATEGIES["recall"]["parameters"]


def test_every_strategy_has_a_legend_and_a_summary_row(tables, bench):
    """A strategy added to sequences.py without a LEGEND or SUMMARY_ROWS entry would run and then
    drop out of the benchmark's legend or summary table without a word. ``recall`` is left out: it
    is the chosen default, run once as ``recall_paper``. The summary's merge baselines must be
    strategies that are merges other than RECALL."""
    run, sequences = bench
    named = set(sequences.STRATEGIES) - {"recall"}
    assert named <= set(tables.LEGEND)
    assert named <= set(tables.SUMMARY_ROWS)
    for name in tables.MERGE_BASELINES:
        strategy = sequences.STRATEGIES[name]
        assert strategy["kind"] == "merge" and strategy["method"] != "recall"


def test_continual_strategies_added_from_the_sweep_keep_its_settings(bench):
    """The strategies run after the development sweep (TIES at its best λ, the TIES variant with
    the redundancy strength and at λ 0.5, the task-vector variant at λ 0.25 and with the redundancy
    strength) must merge exactly as the sweep points docs/benchmarks.md
    compares them with."""
    run, sequences = bench
    points = json.loads((run.RESULTS / "continual_sweep.json").read_text())["points"]
    for strategy, point in (("ties_0.5", "ties_0.5"), ("recall_ties_redundancy", "ties_variant_redundancy"),
                            ("recall_ties_0.5", "ties_variant_0.5"),
                            ("recall_tv_0.25", "task_vector_0.25"),
                            ("recall_tv_redundancy", "task_vector_redundancy")):
        assert sequences.STRATEGIES[strategy]["method"] == points[point]["method"]
        assert sequences.STRATEGIES[strategy]["parameters"] == points[point]["parameters"]


def test_replace_table_rewrites_only_between_its_markers(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from doc_tables import replace_table, rewrite_tables
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    text = "intro\n<!-- speed-table (cmd) -->\nold\nrows\n<!-- /speed-table -->\nafter\n"
    assert replace_table(text, "speed", "| new |") == (
        "intro\n<!-- speed-table (cmd) -->\n| new |\n<!-- /speed-table -->\nafter\n")
    assert replace_table(text, "summary", "| new |") is None
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")

    def unbuilt() -> str:  # a table whose markers the page lacks is never built
        raise AssertionError("built a table the page has no markers for")

    assert rewrite_tables(page, {"summary": unbuilt, "speed": lambda: "| new |"}) == ["speed"]
    assert page.read_text(encoding="utf-8") == replace_table(text, "speed", "| new |")


def test_seeds_table_sets_seed_zero_from_the_sweep_beside_the_other_seeds(
        tables, files, bench, tmp_path, monkeypatch):
    """The seeds table reads seed 0 from the committed sweep and the other seeds from
    ``continual_seeds.json`` (here a made-up one: invented scores, for the table logic only)."""
    run, _ = bench
    sweep = json.loads((run.RESULTS / "continual_sweep.json").read_text())
    (tmp_path / "continual_sweep.json").write_text(json.dumps(sweep))
    tasks = list(sweep["base"])

    def point(name: str, ap: float) -> dict:
        return {**sweep["points"][name], "AP": ap, "scores": dict.fromkeys(tasks, ap)}

    seed_1 = {"base": dict.fromkeys(tasks, 0.25), "own_expert": dict.fromkeys(tasks, 0.5),
              "points": {"paper": point("paper", 0.5), "ties_0.5": point("ties_0.5", 0.55),
                         "ties_variant_redundancy": point("ties_variant_redundancy", 0.6)}}
    (tmp_path / "continual_seeds.json").write_text(json.dumps({"seeds": {"1": seed_1}}))
    monkeypatch.setattr(files, "RESULTS", tmp_path)
    lines = tables.seeds_table().splitlines()
    assert lines[0] == "| point | seed 0 | seed 1 | mean ± std over seeds |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert set(rows) >= {"base model", "each task's own expert", "paper", "ties_0.5",
                         "ties_variant_redundancy"}
    paper_0, ties_0 = sweep["points"]["paper"]["AP"], sweep["points"]["ties_0.5"]["AP"]
    assert rows["paper"] == (f"| paper | {paper_0:.3f} | 0.500 | "
                             f"{tables._fmt(files.order_stats([paper_0, 0.5]), False)} |")
    # the gap is the chosen default minus the best non-RECALL point of the same seed
    gap_row = lines[-1]
    assert f"{paper_0 - ties_0:+.3f} (vs ties_0.5)" in gap_row and "-0.050 (vs ties_0.5)" in gap_row


def test_sweep_saver_replaces_only_its_own_part_and_keeps_measured_times(bench, tmp_path):
    """Made-up summaries: a held-out seed's save leaves the other seeds' and sequences' parts as
    they were, and a point taken from the cache (no merge time) keeps the time stored before."""
    sweep = load_script("continual_benchmark_sweep", "continual/sweep.py")
    out = tmp_path / "seeds.json"
    other = {"points": {"paper": {"AP": 0.1, "merge_seconds": 5.0}}}
    out.write_text(json.dumps({"seeds": {"1": other}, "held_out": {"task": {"2": {"order_0": other}}}}))
    keys = ("held_out", "task", "1", "order_0")
    assert sweep.stored_points(out, keys) == {}
    save = sweep.saver(out, keys, {"command": "made up"})
    save({"seed": 1, "points": {"paper": {"AP": 0.3, "merge_seconds": 9.0}}})
    save({"seed": 1, "points": {"paper": {"AP": 0.3, "merge_seconds": None}}})  # a rerun
    data = json.loads(out.read_text())
    assert data["seeds"]["1"] == other and data["held_out"]["task"]["2"]["order_0"] == other
    assert data["held_out"]["task"]["1"]["order_0"]["points"]["paper"] == {"AP": 0.3,
                                                                           "merge_seconds": 9.0}
    assert data["command"] == "made up" and "torch" in data["versions"]
    assert sweep.stored_points(out, keys) == {"paper": {"AP": 0.3, "merge_seconds": 9.0}}
    # with no keys the summary is the whole file
    top = tmp_path / "sweep.json"
    sweep.saver(top, (), {"command": "c"})({"seed": 0, "points": {"a": {"merge_seconds": 1.0}}})
    assert set(json.loads(top.read_text())) == {"seed", "points", "command", "versions"}


def test_tables_name_dict_specs_by_their_name(bench):
    _, sequences = bench
    assert sequences.short_name("bigbench:intent_recognition") == "intent_recognition"
    assert sequences.short_name({"source": "bigbench", "name": "navigate",
                                 "kind": "classification"}) == "navigate"
    # every task of every sequence has a table name (dict specs included)
    assert all(sequences.short_name(task) for spec in sequences.SEQUENCES.values()
               for task in spec["tasks"])


def test_offline_sequence_needs_no_bigbench(bench):
    """The offline sequence's tasks and generalisation check use no BIG-bench task, and the
    BIG-bench sequences keep the shared zero-shot set."""
    _, sequences = bench
    offline = sequences.SEQUENCES["offline"]
    assert not any(str(task).startswith("bigbench") for task in offline["tasks"])
    assert sequences.zero_shot_tasks("offline") == {}
    assert sequences.zero_shot_tasks("task") is sequences.ZERO_SHOT


def test_tuning_grid_gives_every_family_the_same_budget_of_valid_settings(bench, tmp_path,
                                                                           monkeypatch):
    """benchmarks/continual/tune.py: every family has the same number of settings (WUDI and DOP
    one, for cost), each setting is valid for its method, and the table picks each family's
    highest AP (AP values below are SYNTHETIC, made up for the test)."""
    from recall_merge.methods.registry import METHODS

    sys.path.insert(0, str(CONTINUAL))
    try:
        tune = load_script("continual_benchmark_tune", "continual/tune.py")
    finally:
        sys.path.remove(str(CONTINUAL))
    for family, grid in tune.GRID.items():
        assert len(grid) == (1 if family in ("wudi", "dop") else tune.BUDGET), family
        for _name, method, parameters, library in grid:
            METHODS[method].parameters_model.model_validate(parameters)  # raises if invalid
            assert library in ("experts", "previous")
    names = [name for grid in tune.GRID.values() for name, *_ in grid]
    assert len(names) == len(set(names))
    grid = tune.GRID["ties"]
    aps = [0.61, 0.64, 0.58, 0.64]  # a tie at the top: the first in GRID order wins
    points = {name: {"family": "ties", "AP": ap, "low": ap - 0.03, "high": ap + 0.03,
                     "merge_seconds": 9.0} for (name, *_), ap in zip(grid, aps, strict=True)}
    out = tmp_path / "continual_tuning.json"
    out.write_text(json.dumps({"points": points, "order": ["a", "b"], "seed": 0, "max_test": 300,
                               "budget": 4, "command": "python benchmarks/continual/tune.py"}))
    monkeypatch.setattr(tune, "OUT", out)
    assert tune.chosen() == {"ties": grid[1][0]}
    _, sequences = bench
    chosen_name, entry = sequences.tuned_points(out)["ties"]
    assert chosen_name == grid[1][0] and entry["AP"] == 0.64
    table = tune.tuning_table()
    assert f"`{grid[1][0]}` | 0.640 [0.610, 0.670]" in table and "ties" in table
    assert "**Partial:**" in table  # one family of many scored, and its edge point is pending


def test_tuning_edge_rule_tries_one_strength_beyond_the_grid(bench):
    """When a family's best grid point has the grid's lowest (highest) strength, the edge rule adds
    that point with the strength halved (doubled), other knobs kept; an inside optimum adds
    nothing; the edge point competes with the grid. AP values are SYNTHETIC."""
    _, sequences = bench
    grid = sequences.TUNING_GRID["task_arithmetic"]  # λ 0.25, 0.5, 0.75, 1.0
    def scored(aps):
        return {name: {"family": "task_arithmetic", "AP": ap} for (name, *_), ap in
                zip(grid, aps, strict=True)}
    assert sequences.edge_point("task_arithmetic", {}) is None  # grid not scored yet
    assert sequences.edge_point("task_arithmetic", scored([0.7, 0.8, 0.75, 0.6])) is None
    low = sequences.edge_point("task_arithmetic", scored([0.9, 0.8, 0.75, 0.6]))
    assert low == (f"{grid[0][0]}_x0.5", "task_arithmetic", {"lambda": 0.125}, "experts")
    high = sequences.edge_point("task_arithmetic", scored([0.5, 0.6, 0.7, 0.8]))
    assert high[0] == f"{grid[3][0]}_x2" and high[2] == {"lambda": 2.0}
    lines = sequences.TUNING_GRID["recall_lines"]  # LiNeS: α and β scale together
    points = {name: {"AP": ap} for (name, *_), ap in zip(lines, [0.9, 0.8, 0.7, 0.6], strict=True)}
    assert sequences.edge_point("recall_lines", points)[2]["lines"] == {"alpha": 0.125,
                                                                       "beta": 0.125}
    assert set(sequences.TUNING_STRENGTH) == set(sequences.TUNING_GRID) - {"wudi", "dop"}


def test_generalisation_scores_a_model_end_to_end(bench, tmp_path, monkeypatch, tiny_models):
    """generalisation() loads the base and scores its perplexity (a tiny random model and three
    made-up texts stand in for SmolLM2 and the BBC articles): the packaged model's name and the
    loaded model are different things (a shadowed name once crashed the benchmark here)."""
    import recall_merge.data.bbc as bbc
    import recall_merge.io.packaged as packaged

    run, _ = bench
    monkeypatch.setattr(run, "run_folder", lambda: tmp_path / "runs")
    def resolve(ref):
        assert ref == "tiny", f"resolve_model_ref got {type(ref).__name__}, not the model's name"
        return Path(tiny_models["base"])

    monkeypatch.setattr(packaged, "resolve_model_ref", resolve)
    monkeypatch.setattr(bbc, "article_bodies", lambda count, seed: [
        "the cat sat on the mat", "stocks fell on monday", "rain is expected tomorrow"])
    scores = run.generalisation(tmp_path / "order", [], {}, model="tiny")
    assert scores["base"]["perplexity"] > 1.0


def test_reproduce_compares_only_cells_both_runs_scored(bench):
    """benchmarks/continual/reproduce.py: the largest |ΔR| over the scored cells, and None (not
    equal) when a cell is scored in one matrix and not in the other."""
    reproduce = load_script("continual_benchmark_reproduce", "continual/reproduce.py")
    assert reproduce.largest_difference([[None, 0.5], [0.25, 0.75]],
                                        [[None, 0.5], [0.25, 0.75]]) == 0.0
    assert reproduce.largest_difference([[None, 0.5], [0.25, 0.75]],
                                        [[None, 0.5], [0.5, 0.75]]) == 0.25
    assert reproduce.largest_difference([[None, 0.5]], [[0.1, 0.5]]) is None
    # a rerun replaces the record of its own (sequence, seed, mode, CPU); another CPU's stays
    def record(cpu, wall):
        return {"sequence": "development", "seed": 0, "mode": "serial", "machine": {"cpu": cpu},
                "wall_seconds": wall}

    records = reproduce.with_record([record("A", 1.0), record("B", 2.0)], record("A", 3.0))
    assert [(r["machine"]["cpu"], r["wall_seconds"]) for r in records] == [("B", 2.0), ("A", 3.0)]
    committed = json.loads((REPO / "benchmarks/results/continual_reproduce.json").read_text())
    assert all("cpu" in r["machine"] for r in committed["records"])


def test_cpu_kernels_compares_recall_reports_and_weight_bytes(tmp_path):
    """benchmarks/continual/cpu_kernels.py: the largest |Δ| of RECALL's similarities and α between
    two reports and how many α differ; the weights' digest covers every shard's bytes (SYNTHETIC
    reports and shards)."""
    kernels = load_script("continual_benchmark_cpu_kernels", "continual/cpu_kernels.py")
    for name, alpha, similarity in (("a", [0.25, 0.75], [1.0, 0.5]), ("b", [0.25, 0.7500001], [1.0, 0.5000003])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "recall_report.json").write_text(json.dumps(
            {"layers": [{"alpha": alpha, "similarity": similarity}]}))
        (tmp_path / name / "model.safetensors").write_bytes(b"same")
    differences = kernels.report_differences(tmp_path / "a", tmp_path / "b")
    assert differences["alphas_differing"] == 1 and differences["alphas"] == 2
    assert differences["max_abs_alpha_difference"] == pytest.approx(1e-7)
    assert differences["max_abs_similarity_difference"] == pytest.approx(3e-7)
    assert kernels.weight_digest(tmp_path / "a") == kernels.weight_digest(tmp_path / "b")
    (tmp_path / "b" / "model-2.safetensors").write_bytes(b"more")
    assert kernels.weight_digest(tmp_path / "a") != kernels.weight_digest(tmp_path / "b")


def test_tuning_points_build_on_a_tiny_run(bench, tmp_path, tiny_models):
    """tune.py's build_point on the tiny random Llama (SYNTHETIC tasks): a merge of every expert
    for a RECALL candidate with generated probes, and the step-by-step chain of a previous-merge
    method whose intermediate merges then lose their weights. Guards the unattended tuning run."""
    from recall_merge.continual.config import expand_strategies, load_continual_config
    from recall_merge.continual.runner import ContinualRun

    sys.path.insert(0, str(CONTINUAL))
    try:
        tune = load_script("continual_benchmark_tune_build", "continual/tune.py")
    finally:
        sys.path.remove(str(CONTINUAL))
    raw = {"model": str(tiny_models["base"]), "tasks": ["synthetic:alpha", "synthetic-gen:gamma"],
           "max_train": 16, "max_dev": 4, "max_test": 8, "seed": 3,
           "run_dir": str(tmp_path / "run"), "strategies": ["expert"],
           "training": {"mode": "lora", "epochs": 1, "batch_size": 8, "learning_rate": 0.003,
                        "max_length": 48, "lora_rank": 4, "progress": False},
           "evaluation": {"batch_size": 16, "max_length": 48, "max_new_tokens": 3},
           "merge_samples": 8}
    config = load_continual_config(raw)
    run = ContinualRun(config, quiet=True)
    run.raw_config = raw
    run.prepare()
    expert = expand_strategies(config)[0]
    experts = [run.expert_from_base(expert, step).merge_ref for step in (1, 2)]
    recall = {"variant": "task_vector", "probes": "generated", "scale": 0.5, "num_typical": 4,
              "max_length": 48, "generated_samples": 2, "generated_tokens": 4}
    folder = tune.build_point(run, experts, "recall_generated_0.5", "recall", recall, "experts")
    assert (folder / "continual_merge.json").exists()
    chain = tune.build_point(run, experts, "opcm_0.5", "opcm", {"alpha": 0.5}, "previous")
    assert chain.name == "step2" and list(chain.glob("*.safetensors"))
    assert (chain.parent / "step1" / "WEIGHTS_REMOVED.json").exists()


def test_two_writers_of_one_sequence_keep_each_others_results(bench, tmp_path):
    """Two run.py processes (two lanes) write one sequence's JSON: before writing, each merges in
    what the other stored since it read the file, so neither drops the other's strategies. The
    results below are SYNTHETIC."""
    run, _ = bench
    def entry(order, methods):
        return {"order": order, "max_test": 300, "seed": 0, "wall_seconds": dict.fromkeys(methods, 1.0),
                "generalisation": {}, "results": {"methods": {m: {"AP": 0.5} for m in methods}},
                "cell_provenance": {m: {"versions": {"peft": "0.21.2"}} for m in methods}}
    path = tmp_path / "continual_x.json"
    path.write_text(json.dumps({"runs": [entry([0, 1], ["ties", "expert"]), entry([1, 0], ["ties"]),
                                         {**entry([0, 1], ["lwf"]), "max_test": 40}]}))
    mine = {(0, 1): entry([0, 1], ["expert"])}
    mine[(0, 1)]["results"]["methods"]["expert"]["AP"] = 0.9  # this process's own result wins
    run.merge_stored_runs(path, mine, 300, 0)
    assert set(mine) == {(0, 1), (1, 0)}
    assert set(mine[(0, 1)]["results"]["methods"]) == {"ties", "expert"}
    assert mine[(0, 1)]["results"]["methods"]["expert"]["AP"] == 0.9
    assert mine[(0, 1)]["wall_seconds"] == {"expert": 1.0, "ties": 1.0}
    assert set(mine[(0, 1)]["cell_provenance"]) == {"expert", "ties"}  # each cell's own versions


def test_a_cell_in_the_results_with_its_definition_is_not_run_again(bench):
    """run.py skips an (order, strategy) cell that the results hold with the same definition
    digest, and runs it again when the definition changed (a strategy's parameters, the test
    items) or --redo is given; where it runs does not count. The results below are SYNTHETIC."""
    import argparse

    run, _ = bench
    config = run.continual_config("development", [0, 1, 2], ["task_arithmetic"], 300, "summary", 0)
    digest = run.cell_digest(config)
    moved = {**config, "run_dir": "/elsewhere", "expert_cache": "/elsewhere/experts"}
    assert run.cell_digest(moved) == digest
    more_items = run.continual_config("development", [0, 1, 2], ["task_arithmetic"], 200, "summary", 0)
    assert run.cell_digest(more_items) != digest
    other = {**config, "strategies": [{**config["strategies"][0], "parameters": {"lambda": 0.5}}]}
    assert run.cell_digest(other) != digest
    stored = {"results": {"methods": {"task_arithmetic": {"AP": 0.5}}},
              "digests": {"task_arithmetic": digest}}
    args = argparse.Namespace(redo=False)
    assert run.already_run(stored, "task_arithmetic", digest, args)
    assert not run.already_run(stored, "task_arithmetic", run.cell_digest(other), args)
    assert not run.already_run(stored, "ties", digest, args)
    assert not run.already_run({**stored, "digests": {}}, "task_arithmetic", digest, args)
    assert not run.already_run(stored, "task_arithmetic", digest, argparse.Namespace(redo=True))


def test_a_cells_final_model_is_scored_deferred_or_skipped_as_asked(bench, monkeypatch, tmp_path):
    """After a cell's task scores: by default its generalisation is scored (then its weights go);
    --defer-generalisation leaves both for later; --skip-generalisation scores nothing and removes
    the weights; --keep-weights keeps them. The scoring and removal are stubbed."""
    import argparse

    run, _ = bench
    calls = []
    monkeypatch.setattr(run, "score_final_model", lambda *a: calls.append(("score", a[-1])))
    monkeypatch.setattr(run, "remove_final_weights", lambda *a: calls.append(("remove",)))

    def finish(**flags):
        calls.clear()
        args = argparse.Namespace(**{"defer_generalisation": False, "skip_generalisation": False,
                                     "keep_weights": False, **flags})
        run.finish_final_model({}, tmp_path, "ties", {}, "smollm2", args)
        return calls

    assert finish() == [("score", False)]
    assert finish(keep_weights=True) == [("score", True)]
    assert finish(defer_generalisation=True) == []
    assert finish(skip_generalisation=True) == [("remove",)]
    assert finish(skip_generalisation=True, keep_weights=True) == []


def test_a_tuned_family_at_a_hand_defined_setting_runs_under_that_name(bench):
    """Task arithmetic's chosen λ 0.25 is the strategy ``task_arithmetic``: ``--strategies tuned``
    must run it once, under that name, not again as ``task_arithmetic_tuned`` (the same cells twice,
    and the same merge counted twice among the default's candidates)."""
    run, sequences = bench
    chosen = sequences.tuned_points()
    cells = sequences.tuned_cells()
    assert len(cells) == len(chosen) == len(set(cells))
    for name in cells:
        assert sequences.STRATEGIES[name]["kind"] == "merge"
    assert "task_arithmetic" in cells and "task_arithmetic_tuned" not in sequences.STRATEGIES
    definitions = [json.dumps({"library": "experts", **sequences.STRATEGIES[name]}, sort_keys=True)
                   for name in cells]
    assert len(set(definitions)) == len(definitions)
    candidates = run.default_candidates()
    assert set(cells) | set(sequences.PROTOCOL_STRATEGIES) | {"recall", "ties"} == set(candidates)


def test_the_chosen_default_joins_the_main_strategies_and_becomes_the_reference(
        files, bench, monkeypatch):
    """Once the development sequence has chosen (every candidate in every order), the default runs
    with the main strategies at two seeds and every offline sequence's ΔAP is taken against it;
    before that RECALL's default is the reference. The choice here is SYNTHETIC (monkeypatched)."""
    run, sequences = bench
    monkeypatch.setattr(sequences, "chosen_default", lambda: None)
    monkeypatch.setattr(files, "chosen_default", lambda: None)
    assert run.reference("development") == "recall"
    before = sequences.main_strategies()
    monkeypatch.setattr(sequences, "chosen_default", lambda: "recall_tv_0.25")
    monkeypatch.setattr(files, "chosen_default", lambda: "recall_tv_0.25")
    assert sequences.main_strategies() == [*before, "recall_tv_0.25"]
    assert run.reference("paper_shaped") == "recall_tv_0.25"
    assert run.reference("paper") == "recall_paper"  # a historical BIG-bench sequence
    monkeypatch.setattr(sequences, "chosen_default", lambda: "task_arithmetic")
    assert sequences.main_strategies() == before  # already a main strategy: not twice


def test_a_final_model_is_found_only_where_its_run_folder_is(bench, tmp_path, monkeypatch):
    """run.py --generalisation scores each strategy's final model. A strategy whose run folder is
    not on this disk (another machine ran it) has none: scoring the base in its place would record
    a wrong score. A folder without step models (every expert guarded out) is the base."""
    import recall_merge.io.packaged as packaged

    run, _ = bench
    monkeypatch.setattr(packaged, "resolve_model_ref", lambda model: tmp_path / "base")
    assert run.final_model(tmp_path, "ties") is None
    folder = tmp_path / "strategies" / "ties"
    folder.mkdir(parents=True)
    assert run.final_model(tmp_path, "ties") == (tmp_path / "base", None)
    for step in ("step1", "step2", "step10"):
        (folder / step).mkdir()
    assert run.final_model(tmp_path, "ties") == (folder / "step10", None)
    (folder / "step10" / "adapter_config.json").write_text("{}")
    assert run.final_model(tmp_path, "ties") == (tmp_path / "base", folder / "step10")


def test_a_held_out_sequence_heads_the_readme_once_its_main_strategies_have_every_order(tables, 
        bench, monkeypatch):
    """SYNTHETIC run entries (no scores needed): the headline stays on the development sequence
    while a held-out sequence has one strategy in one order, and moves once every main strategy has
    the three orders at training seed 0."""
    run, _ = bench
    main = run.main_strategies()
    partial = {"s0/o0": {"seed": 0, "order": [0], "strategies": {"expert": {}}}}
    complete = {f"s0/o{k}": {"seed": 0, "order": [k], "strategies": dict.fromkeys(main, {})}
                for k in range(3)}
    development = {"s0/o0": {"seed": 0, "order": [0], "strategies": {"task_arithmetic": {}}}}
    items = {"task_incremental": partial, "paper_shaped": {}, "development": development}
    monkeypatch.setattr(tables, "load_items", lambda sequence: {"runs": items.get(sequence, {})})
    assert tables.headline_sequence() == "development"
    items["paper_shaped"] = complete
    assert tables.headline_sequence() == "paper_shaped"
    items["task_incremental"] = complete
    assert tables.headline_sequence() == "task_incremental"
    items.update(task_incremental={}, paper_shaped={}, development={})
    assert tables.headline_sequence() is None


def test_the_base_zero_shot_line_is_over_the_sequences_own_tasks(tables, bench):
    """The base's generalisation entry is shared by every sequence (scored once), so it holds the
    zero-shot tasks of all of them; a table's base line must list and average its own set only."""
    run, sequences = bench
    shared = {"perplexity": 32.3, "zero_shot": {"a": 0.2, "b": 0.4, "c": 0.9}, "zero_shot_mean": 0.5}
    own = run.sequence_scores(shared, ["a", "b"])
    assert own["zero_shot"] == {"a": 0.2, "b": 0.4}
    assert own["zero_shot_mean"] == pytest.approx(0.3)
    assert own["perplexity"] == 32.3
    assert "zero_shot_mean" not in run.sequence_scores(shared, ["a", "missing"])  # no partial mean
    for name in sequences.OFFLINE_SEQUENCES:
        path = REPO / "benchmarks" / "results" / f"continual_{name}.json"
        if not path.exists():
            continue
        line = next(line for line in tables.table(name).splitlines() if line.startswith("Base model"))
        listed = line.split("(", 1)[1].rstrip(").").split(", ")
        assert sorted(task.rsplit(" ", 1)[0] for task in listed) == \
            sorted(sequences.short_name(task) for task in sequences.zero_shot_tasks(name))


def test_stored_pooled_intervals_are_what_the_items_give(bench):
    """Each offline sequence's results JSON stores its pooled intervals; they must be the ones the
    committed per-item file gives now (`run.py --docs` recomputes stale ones), so the JSON and the
    docs' tables never disagree."""
    run, sequences = bench
    for name in sequences.OFFLINE_SEQUENCES:
        path = REPO / "benchmarks" / "results" / f"continual_{name}.json"
        if not path.exists() or not run.load_items(name)["runs"]:
            continue
        data = json.loads(path.read_text())
        expected = run.pooled_intervals(run.load_items(name), run.reference(name), seeds=[data["seed"]])
        assert data["pooled"] == json.loads(json.dumps(expected)), f"{name}: run `run.py --docs`"


def test_grid_status_counts_the_cells_the_results_hold(tables, files, bench, tmp_path, monkeypatch):
    """Made-up result files (SYNTHETIC: which cells exist, no scores read): a strategy counts in
    an order only where its entry has an R matrix; a failed cell (an error, no R) is missing."""
    run, sequences = bench
    monkeypatch.setattr(files, "RESULTS", tmp_path)
    main = sequences.main_strategies()
    listed, reversed_order, _ = sequences.orders(len(sequences.SEQUENCES["task_incremental"]["tasks"]))
    methods = {name: {"R": [[0.0]]} for name in main}
    methods[main[-1]] = {"error": "failed"}
    runs = [{"order": listed, "results": {"methods": methods}},
            {"order": reversed_order, "results": {"methods": {main[0]: {"R": [[0.0]]}}}}]
    (tmp_path / "continual_task_incremental.json").write_text(json.dumps({"runs": runs}))
    done = tables.cells_done("task_incremental", 0)
    assert done[main[0]] == {0, 1} and done[main[1]] == {0} and main[-1] not in done
    rows = {tuple(cell.strip() for cell in line.split("|")[1:4]): line
            for line in tables.grid_status_table().splitlines() if line.startswith("| ")}
    row = rows[("task_incremental", "smollm2", "0")]
    assert f"| {len(main)} of {3 * len(main)} |" in row
    assert f"{main[0]} (2);" in row and f"{main[-1]} (0, 1, 2)" in row
    assert "| all |" in rows[("task_incremental", "smollm2", "1")]
    assert rows[("paper_shaped_gemma", "gemma3-270m", "0")]  # one seed asked of the second model
    assert ("paper_shaped_gemma", "gemma3-270m", "1") not in rows
