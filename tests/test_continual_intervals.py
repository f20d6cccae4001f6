"""Intervals in results.json (recall_merge.continual.intervals): per-item scores kept in every
evaluation file, AP and BWT intervals per strategy, paired AP differences against a reference
strategy with Holm's correction, and old evaluation files without per-item scores."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from recall_merge.continual.config import expand_strategies, load_continual_config
from recall_merge.continual.intervals import (
    RESAMPLES,
    add_intervals,
    reference_strategy,
)
from recall_merge.continual.results import print_summary
from recall_merge.continual.runner import ContinualRun
from recall_merge.continual.statistics import bootstrap_interval, paired_differences
from recall_merge.continual.store import slug
from recall_merge.continual.synthetic import load_synthetic_task
from recall_merge.errors import ConfigError

STRATEGIES = ["sequential", "expert", "merge:ties", "merge:recall"]
REFERENCE = "merge:recall:experts:base"  # the default: the first RECALL merge
SEQUENTIAL = ["sequential", "merge:ties:experts:base"]  # strategies whose cells live in the run


def tiny_config(base: Path, run_dir: Path, strategies: list) -> dict:
    """tests/test_continual_run.py's tiny run: two SYNTHETIC tasks (classification, generation)."""
    return {
        "model": str(base), "tasks": ["synthetic:alpha", "synthetic-gen:gamma"], "max_train": 16,
        "max_dev": 4, "max_test": 8, "seed": 3, "run_dir": str(run_dir), "strategies": strategies,
        "training": {"mode": "full", "epochs": 2, "batch_size": 8, "learning_rate": 0.003,
                     "max_length": 48, "progress": False},
        "evaluation": {"batch_size": 16, "max_length": 48, "max_new_tokens": 3},
        "merge_samples": 8,
        "merge_parameters": {"recall": {"num_typical": 4, "max_length": 48}},
    }


def eval_file(run_dir: Path, strategy: str, step: int) -> Path:
    return run_dir / "evals" / (slug(f"strategies/{slug(strategy)}/step{step}") + ".json")


def stored_items(run_dir: Path, strategy: str, step: int, tasks: list[str]) -> list[list[float]]:
    stored = json.loads(eval_file(run_dir, strategy, step).read_text())
    return [[float(v) for v in stored[name]["items"]] for name in tasks]


@pytest.fixture(scope="module")
def tiny_run(tiny_models, tmp_path_factory) -> tuple[dict, Path]:
    run_dir = tmp_path_factory.mktemp("intervals") / "run"
    config = load_continual_config(tiny_config(tiny_models["base"], run_dir, STRATEGIES))
    return ContinualRun(config, quiet=True).run(), run_dir


def test_every_cell_keeps_its_items_and_their_mean_is_the_score(tiny_run):
    results, run_dir = tiny_run
    metrics = {"alpha": "accuracy", "gamma": "exact_match"}
    files = sorted((run_dir / "evals").glob("*.json"))
    assert files
    for path in files:
        for name, cell in json.loads(path.read_text()).items():
            assert cell["items_metric"] == metrics[name]
            assert len(cell["items"]) == 8  # max_test, in the order of the examples
            assert set(cell["items"]) <= {0, 1}, "accuracy and exact match are kept as 0/1"
            assert np.mean(cell["items"]) == pytest.approx(cell["score"], abs=1e-12)
    assert results["interval_method"]["per_item"] == metrics


def test_every_strategy_has_ap_and_bwt_intervals(tiny_run):
    results, _ = tiny_run
    assert set(results["methods"]) == {"sequential", "expert", "merge:ties:experts:base", REFERENCE}
    for name, entry in results["methods"].items():
        ap, bwt = entry["intervals"]["AP"], entry["intervals"]["BWT"]
        assert ap["estimate"] == pytest.approx(entry["AP"], abs=1e-12), name
        assert bwt["estimate"] == pytest.approx(entry["BWT"], abs=1e-12), name
        for interval in (ap, bwt):
            assert interval["low"] <= interval["estimate"] <= interval["high"]
            assert interval["resamples"] == RESAMPLES and interval["level"] == 0.95
            assert interval["runs"] == 1
        assert ap["items"] == 16 and bwt["items"] == 8  # 2 tasks × 8 items; BWT: task 1 only


def test_intervals_recomputed_from_the_stored_items_match_exactly(tiny_run):
    results, run_dir = tiny_run
    tasks = [t["name"] for t in results["tasks"]]
    seed = results["seed"]
    for name in SEQUENTIAL:
        step1, step2 = (stored_items(run_dir, name, step, tasks) for step in (1, 2))
        ap = bootstrap_interval([step2], resamples=10_000, seed=seed, level=0.95)
        assert results["methods"][name]["intervals"]["AP"] == ap.as_dict()
        bwt = [np.asarray(step2[0]) - np.asarray(step1[0])]
        assert results["methods"][name]["intervals"]["BWT"] == bootstrap_interval(
            [bwt], resamples=10_000, seed=seed, level=0.95).as_dict()
    reference = stored_items(run_dir, REFERENCE, 2, tasks)
    own = stored_items(run_dir, "sequential", 2, tasks)
    difference = bootstrap_interval(paired_differences([own], [reference]), resamples=10_000,
                                    seed=seed, level=0.95).as_dict()
    stored = dict(results["vs_reference"]["sequential"])
    assert {key: stored.pop(key) for key in ("p_holm", "verdict")}
    assert stored == difference
    assert difference["estimate"] == pytest.approx(
        results["methods"]["sequential"]["AP"] - results["methods"][REFERENCE]["AP"], abs=1e-12)


def test_items_json_collects_every_strategys_cells(tiny_run):
    """items.json beside results.json: per strategy, per step row, per task, the same per-item
    scores the evaluation files keep (what the benchmark pools across orders and seeds)."""
    results, run_dir = tiny_run
    tasks = [t["name"] for t in results["tasks"]]
    collected = json.loads((run_dir / "items.json").read_text())
    assert collected["tasks"] == tasks
    assert set(collected["items"]) == set(results["methods"])
    for name in SEQUENTIAL:
        assert collected["items"][name] == [stored_items(run_dir, name, step, tasks)
                                            for step in (1, 2)]


def test_vs_reference_holm_and_verdicts(tiny_run):
    results, _ = tiny_run
    assert results["reference_strategy"] == REFERENCE
    compared = results["vs_reference"]
    assert REFERENCE not in compared
    assert set(compared) == set(results["methods"]) - {REFERENCE}
    ordered = sorted(compared.values(), key=lambda entry: entry["p_value"])
    for entry in ordered:
        assert entry["p_value"] <= entry["p_holm"] <= 1.0
        holds_zero = entry["low"] <= 0 <= entry["high"]
        expected = "tie" if holds_zero or entry["p_holm"] >= 0.05 else (
            "better" if entry["estimate"] > 0 else "worse")
        assert entry["verdict"] == expected
    holm = [entry["p_holm"] for entry in ordered]
    assert holm == sorted(holm), "Holm-adjusted p-values are monotone in the raw ones"


def test_summary_shows_the_interval_and_the_verdict(tiny_run):
    results, _ = tiny_run
    stream = io.StringIO()
    print_summary(results, stream)
    text = stream.getvalue()
    ap = results["methods"]["sequential"]["intervals"]["AP"]
    line = next(row for row in text.splitlines() if row.startswith("sequential "))
    assert f"[{ap['low']:.2f}, {ap['high']:.2f}]" in line
    assert results["vs_reference"]["sequential"]["verdict"] in line
    assert "reference" in next(row for row in text.splitlines() if row.startswith(REFERENCE))
    # a results.json of an older version, without intervals, still prints
    old = {key: value for key, value in results.items()
           if key not in ("reference_strategy", "vs_reference", "interval_method")}
    old["methods"] = {name: {k: v for k, v in entry.items() if k != "intervals"}
                      for name, entry in results["methods"].items()}
    stream = io.StringIO()
    print_summary(old, stream)
    assert "sequential" in stream.getvalue() and "[" not in stream.getvalue().split("\n", 2)[2]


def test_evaluation_files_without_items_give_null_intervals(tiny_run, tiny_models, tmp_path):
    """Files scored before items were kept still load: the intervals that need them are null."""
    results, run_dir = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "results.json").unlink()
    for step in (1, 2):
        path = eval_file(copy, "sequential", step)
        cells = json.loads(path.read_text())
        path.write_text(json.dumps({name: {k: v for k, v in cell.items() if k != "items"}
                                    for name, cell in cells.items()}))
    config = load_continual_config(tiny_config(tiny_models["base"], copy, STRATEGIES))
    run = ContinualRun(config, quiet=True)
    again = run.run()
    assert run.new_stages == 0, "nothing is scored again"
    assert again["methods"]["sequential"]["intervals"] == {"AP": None, "BWT": None}
    assert again["vs_reference"]["sequential"] is None
    for name in ("expert", "merge:ties:experts:base"):
        assert again["vs_reference"][name] == results["vs_reference"][name]
        assert again["methods"][name]["intervals"] == results["methods"][name]["intervals"]
    for name, entry in results["methods"].items():  # everything else is unchanged
        assert {k: v for k, v in again["methods"][name].items() if k != "intervals"} == \
            {k: v for k, v in entry.items() if k != "intervals"}
    assert json.loads((copy / "results.json").read_text())["vs_reference"]["sequential"] is None


def test_a_reference_without_items_leaves_every_comparison_null():
    tasks = [load_synthetic_task("synthetic:alpha", max_test=4)]
    entry = {"R": [[0.5], [0.75]], "AP": 0.75, "BWT": None}
    results = {"seed": 1, "methods": {"a": dict(entry), "b": dict(entry)}}
    items = {"a": [[[1, 1, 0, 1]]], "b": [[None]]}
    add_intervals(results, items, "b", tasks)
    assert results["vs_reference"] == {"a": None}
    assert results["methods"]["b"]["intervals"] == {"AP": None, "BWT": None}
    assert results["methods"]["a"]["intervals"]["AP"]["estimate"] == 0.75
    assert results["methods"]["a"]["intervals"]["BWT"] is None  # one task: no BWT


def test_reference_strategy_option(tiny_models, tmp_path):
    def strategies_of(**extra):
        config = load_continual_config({**tiny_config(tiny_models["base"], tmp_path / "run",
                                                      ["sequential", "merge:ties", "merge:recall"]),
                                        **extra})
        return config, expand_strategies(config, merge_methods=["ties", "recall"])

    assert reference_strategy(*strategies_of()) == REFERENCE
    assert reference_strategy(*strategies_of(reference_strategy="sequential")) == "sequential"
    config = load_continual_config(tiny_config(tiny_models["base"], tmp_path / "run", ["ewc", "lwf"]))
    assert reference_strategy(config, expand_strategies(config)) == "ewc"  # no RECALL: the first
    config, strategies = strategies_of(reference_strategy="nonesuch")
    with pytest.raises(ConfigError, match="reference_strategy 'nonesuch' is not one of"):
        reference_strategy(config, strategies)
    with pytest.raises(ConfigError, match="reference_strategy"):
        ContinualRun(config, quiet=True).run()
    assert not (tmp_path / "run").exists(), "refused before anything is written"
