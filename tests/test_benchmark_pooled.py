"""The benchmark's per-item store and pooled intervals (benchmarks/continual/pooled.py), on
SYNTHETIC per-item scores (no model runs here), and — for every offline sequence whose per-item
data is committed — the published table recomputed from that data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from benchmark_scripts import load_script

from recall_merge.continual.statistics import bootstrap_interval, holm, paired_differences

REPO = Path(__file__).resolve().parents[1]
CONTINUAL = REPO / "benchmarks" / "continual"


@pytest.fixture()
def pooled(monkeypatch, tmp_path):
    module = load_script("benchmark_pooled", "continual/pooled.py")
    monkeypatch.setattr(module, "ITEMS", tmp_path / "items")
    return module


def synthetic_run(order: list[int], strategies: dict[str, float], rng) -> dict:
    """An items.json of one run: tasks in training order, 3 step rows, summary cells only."""
    listed = ["alpha", "beta", "gamma"]
    items = {}
    for name, rate in strategies.items():
        rows = []
        for step in range(3):
            row = [None, None, None]
            for position in range(3):
                if step == 2 or position in (step, step + 1):
                    row[position] = [float(v) for v in rng.random(20 + 5 * order[position]) < rate]
            rows.append(row)
        items[name] = rows
    return {"tasks": [listed[i] for i in order], "items": items}


def record_two_seeds_two_orders(pooled, strategies: dict[str, float], rng) -> dict:
    """Record synthetic runs of ``strategies`` (name: hit rate) at training seeds 0 and 1, in
    orders 0→1→2 and 2→1→0, into sequence "seq"; returns its items file."""
    for seed in (0, 1):
        for order in ([0, 1, 2], [2, 1, 0]):
            run = synthetic_run(order, strategies, rng)
            for name in strategies:
                pooled.record_run("seq", seed, order, name, run)
    return pooled.load_items("seq")


def test_record_run_puts_tasks_in_listed_order(pooled):
    rng = np.random.default_rng(0)
    run = synthetic_run([2, 0, 1], {"recall": 0.6}, rng)
    pooled.record_run("seq", 1, [2, 0, 1], "recall", run)
    data = pooled.load_items("seq")
    assert data["tasks"] == ["alpha", "beta", "gamma"]
    cells = data["runs"]["s1/o2-0-1"]["strategies"]["recall"]
    rows = run["items"]["recall"]
    assert cells["final"] == [rows[2][1], rows[2][2], rows[2][0]]  # listed order
    # learned right after its own step; gamma (trained first) at row 0, alpha at row 1
    assert cells["learned"] == [rows[1][1], None, rows[0][0]]
    assert len(cells["final"][0]) == 20 and len(cells["final"][2]) == 30


def test_a_changed_sequence_is_refused(pooled):
    rng = np.random.default_rng(0)
    pooled.record_run("seq", 0, [0, 1, 2], "recall", synthetic_run([0, 1, 2], {"recall": .5}, rng))
    other = synthetic_run([0, 1, 2], {"recall": .5}, rng)
    other["tasks"] = ["alpha", "beta", "delta"]
    with pytest.raises(ValueError, match="differ from the recorded"):
        pooled.record_run("seq", 0, [0, 1, 2], "recall", other)


def test_the_file_is_deterministic(pooled):
    rng = np.random.default_rng(0)
    run = synthetic_run([0, 1, 2], {"recall": 0.5}, rng)
    pooled.record_run("seq", 0, [0, 1, 2], "recall", run)
    first = pooled.items_path("seq").read_bytes()
    pooled.record_run("seq", 0, [0, 1, 2], "recall", run)
    assert pooled.items_path("seq").read_bytes() == first


def test_pooled_intervals_are_the_two_stage_bootstrap_over_runs(pooled):
    """AP, ΔAP and BWT share item draws among the orders of a training seed (they score the same
    items); BWT's runs hold different tasks (the last trained has no term), keyed by task."""
    data = record_two_seeds_two_orders(pooled, {"recall": 0.55, "ties": 0.5, "sequential": 0.3},
                                       np.random.default_rng(1))
    result = pooled.pooled_intervals(data, "recall")
    keys = sorted(data["runs"])
    assert result["strategies"]["ties"]["runs"] == keys

    def ap(name):
        return [data["runs"][key]["strategies"][name]["final"] for key in keys]

    seeds = [data["runs"][key]["seed"] for key in keys]
    expected = bootstrap_interval(ap("ties"), resamples=10_000, seed=0, level=0.95,
                                  item_groups=seeds).as_dict()
    assert result["strategies"]["ties"]["AP"] == expected
    assert expected["runs"] == 4
    cells = [data["runs"][key]["strategies"]["ties"] for key in keys]
    bwt = [[np.asarray(f) - np.asarray(lv) for f, lv in zip(c["final"], c["learned"], strict=True)
            if lv is not None] for c in cells]
    bwt_tasks = [[task for task, lv in enumerate(c["learned"]) if lv is not None] for c in cells]
    assert [len(tasks) for tasks in bwt_tasks] == [2] * 4 and bwt_tasks[0] != bwt_tasks[1]
    assert result["strategies"]["ties"]["BWT"] == bootstrap_interval(
        bwt, resamples=10_000, seed=0, level=0.95, item_groups=seeds,
        task_keys=bwt_tasks).as_dict()
    differences = {name: bootstrap_interval(paired_differences(ap(name), ap("recall")),
                                            resamples=10_000, seed=0, level=0.95,
                                            item_groups=seeds).as_dict()
                   for name in ("ties", "sequential")}
    adjusted = holm({name: d["p_value"] for name, d in differences.items()})
    for name, difference in differences.items():
        versus = result["strategies"][name]["vs_reference"]
        assert {k: versus[k] for k in difference} == difference
        assert versus["p_holm"] == adjusted[name]
    # sequential at a 0.3 hit rate against 0.55 over 4 runs of 75 items: clearly worse
    assert result["strategies"]["sequential"]["vs_reference"]["verdict"] == "worse"
    assert result["strategies"]["recall"]["vs_reference"] is None
    only_seed_1 = pooled.pooled_intervals(data, "recall", seeds=[1])
    assert only_seed_1["strategies"]["ties"]["runs"] == [k for k in keys if k.startswith("s1/")]



def test_per_task_differences_split_the_ap_difference_by_task(pooled):
    """Each task's ΔAP interval is the paired, crossed bootstrap of that task's per-item
    differences alone; the per-task estimates average to the sequence's ΔAP; the table bolds an
    interval that excludes 0 (synthetic scores: sequential hits 0.3 against recall's 0.9)."""
    data = record_two_seeds_two_orders(pooled, {"recall": 0.9, "ties": 0.9, "sequential": 0.3},
                                       np.random.default_rng(2))
    keys = sorted(data["runs"])
    per_task = pooled.per_task_differences(data, "recall")
    assert set(per_task) == {"ties", "sequential"} and len(per_task["ties"]) == 3
    own = [data["runs"][key]["strategies"]["ties"]["final"] for key in keys]
    ref = [data["runs"][key]["strategies"]["recall"]["final"] for key in keys]
    beta = [[run[1]] for run in paired_differences(own, ref)]
    assert per_task["ties"][1] == bootstrap_interval(
        beta, resamples=10_000, seed=0, level=0.95,
        item_groups=[data["runs"][key]["seed"] for key in keys]).as_dict()
    overall = pooled.pooled_intervals(data, "recall")["strategies"]["ties"]["vs_reference"]
    assert np.mean([iv["estimate"] for iv in per_task["ties"]]) == pytest.approx(overall["estimate"])
    table = pooled.per_task_table("seq", "recall")
    row = next(line for line in table.splitlines() if line.startswith("| sequential |"))
    assert row.count("**") == 6  # all three tasks clearly worse, each bolded
    assert "| `alpha` | `beta` | `gamma` |" in table


def test_the_development_choice_is_the_best_merge_run_in_every_order(pooled):
    """SYNTHETIC runs: the chosen default is the candidate with the highest pooled AP among those
    with every order at the seed; a candidate missing an order, or not a candidate, is not
    chosen however high it scores; every other candidate is compared with the chosen one."""
    rng = np.random.default_rng(2)
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        rates = {"recall": 0.6, "task_arithmetic": 0.7, "ties": 0.5, "replay": 0.95}
        if order == [0, 1, 2]:
            rates["knots"] = 0.99  # one order only
        run = synthetic_run(order, rates, rng)
        for name in rates:
            pooled.record_run("seq", 0, order, name, run)
    data = pooled.load_items("seq")
    assert pooled.development_choice(data, ["magmax"]) is None
    choice = pooled.development_choice(data, ["recall", "task_arithmetic", "ties", "knots"])
    assert choice["chosen"] == "task_arithmetic" and len(choice["runs"]) == 3
    assert set(choice["others"]) == {"recall", "ties"}
    assert choice["others"]["ties"]["vs_chosen"]["estimate"] < 0
    reference = pooled.pooled_intervals(data, "task_arithmetic")
    assert choice["AP"] == reference["strategies"]["task_arithmetic"]["AP"]
    assert pooled.development_choice(data, ["recall"], seed=1) is None
    # a leader is not a choice while a candidate (knots) lacks an order; without it, it is
    assert pooled.final_choice(data, ["recall", "task_arithmetic", "ties", "knots"]) is None
    assert pooled.final_choice(data, ["recall", "task_arithmetic", "ties"]) == "task_arithmetic"


def test_an_exact_tie_in_ap_goes_to_the_candidate_listed_first(pooled):
    """SYNTHETIC runs: two merges with the same per-item scores (RECALL at a high temperature
    gives task arithmetic's merge) tie exactly; the candidate listed first is chosen, whatever
    the names' order."""
    rng = np.random.default_rng(3)
    for order in ([0, 1, 2], [2, 1, 0]):
        run = synthetic_run(order, {"task_arithmetic": 0.7, "ties": 0.5}, rng)
        run["items"]["recall_paper_tuned"] = run["items"]["task_arithmetic"]
        for name in ("task_arithmetic", "ties", "recall_paper_tuned"):
            pooled.record_run("seq", 0, order, name, run)
    data = pooled.load_items("seq")
    assert pooled.final_choice(data, ["task_arithmetic", "recall_paper_tuned", "ties"]) == \
        "task_arithmetic"
    assert pooled.final_choice(data, ["ties", "recall_paper_tuned", "task_arithmetic"]) == \
        "recall_paper_tuned"
    choice = pooled.development_choice(data, ["recall_paper_tuned", "task_arithmetic", "ties"])
    assert choice["chosen"] == "recall_paper_tuned"
    assert choice["others"]["task_arithmetic"]["vs_chosen"]["estimate"] == 0

COMMITTED = sorted((REPO / "benchmarks" / "results" / "items").glob("continual_*.json.gz"))


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_published_intervals_recompute_from_the_committed_items(path):
    """One committed sequence's per-item data → the pooled AP interval of every strategy, which
    must equal (to the printed 3 decimals) the row of its table in docs/benchmarks.md."""
    module = load_script("benchmark_pooled_real", "continual/pooled.py")
    sequence = path.name.removeprefix("continual_").removesuffix(".json.gz")
    data = module.load_items(sequence)
    reference = "recall" if any("recall" in e["strategies"] for e in data["runs"].values()) \
        else "recall_paper"
    document = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    block = document.split(f"<!-- {sequence}-intervals-table")[1].split("<!-- /")[0]
    for name, entry in module.pooled_intervals(data, reference)["strategies"].items():
        row = re.search(rf"^\| {re.escape(name)} \| ([^|]+) \|", block, flags=re.M)
        assert row, f"{name} missing from the {sequence} table"
        ap = entry["AP"]
        assert row.group(1).strip() == f"{ap['estimate']:.3f} [{ap['low']:.3f}, {ap['high']:.3f}]"
