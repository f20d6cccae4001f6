"""``recall continual CONFIG --ray``: the experts, then the strategies, as Ray tasks on a local
Ray cluster started here (two CPUs), against the same tiny run done serially."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from recall_merge.cli import main
from recall_merge.continual import distributed
from recall_merge.continual.config import expand_strategies, load_continual_config
from recall_merge.continual.runner import ContinualRun, run_continual
from recall_merge.continual.strategies import merge_methods

ray = pytest.importorskip("ray")
from test_continual_intervals import tiny_config  # noqa: E402 - after the skip

# two experts from the base, shared by `expert` and the RECALL merge
STRATEGIES = ["expert", "merge:recall"]


def _comparable(run_dir: Path) -> dict:
    """results.json and items.json without what names the folder (nothing in them is a timing)."""
    results = json.loads((run_dir / "results.json").read_text())
    results["config"].pop("run_dir")
    return {"results": results, "items": json.loads((run_dir / "items.json").read_text())}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory, local_ray) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ray")
    serial = load_continual_config(tiny_config(tiny_models["base"], root / "serial", STRATEGIES))
    ContinualRun(serial, quiet=True).run()
    on_ray = load_continual_config(tiny_config(tiny_models["base"], root / "ray", STRATEGIES))
    run_continual(on_ray, quiet=True, dispatch=distributed.ray_dispatch(""))
    return {"serial": root / "serial", "ray": root / "ray"}


def test_ray_run_gives_the_serial_results(runs):
    serial, on_ray = _comparable(runs["serial"]), _comparable(runs["ray"])
    assert list(on_ray["results"]["methods"]) == ["expert", "merge:recall:experts:base"], \
        "the strategies' order is kept"
    assert all("R" in entry for entry in on_ray["results"]["methods"].values()), "no strategy failed"
    assert on_ray == serial
    # the same stages were built, each once: the experts (wave 1) and each strategy's models
    built = sorted(str(p.relative_to(runs["ray"])) for p in runs["ray"].rglob("training.json"))
    assert built == sorted(str(p.relative_to(runs["serial"]))
                           for p in runs["serial"].rglob("training.json"))
    assert not [p for p in runs["ray"].rglob(".*") if "tmp-" in p.name], "no temporary left"


def test_a_retried_task_rebuilds_nothing_and_returns_the_same(runs, local_ray):
    """Ray re-runs a task whose worker died: on a finished stage that is a no-op with the same
    outcome, because every stage is read from disk once it exists."""
    config = load_continual_config(json.loads((runs["ray"] / "results.json").read_text())["config"])
    strategies = expand_strategies(config, merge_methods=merge_methods())
    run = ContinualRun(config, quiet=True)
    run.prepare(strategies)
    jobs = distributed.expert_jobs([(run, strategies)])
    assert len(jobs) == 2, "one job per expert, though `expert` and the merge both use them"
    assert ray.get([ray.remote(distributed.build_expert).remote(job, True) for job in jobs]) == [0, 0]
    merge = strategies[1]
    base_scores = json.loads((runs["ray"] / "results.json").read_text())["methods"][merge.name]["R"][0]
    outcome, built = ray.get(ray.remote(distributed.run_strategy).remote(
        config, strategies, merge, base_scores, True))
    assert built == 0
    stored = _comparable(runs["ray"])
    entry = {k: v for k, v in stored["results"]["methods"][merge.name].items() if k != "intervals"}
    assert outcome[0] == entry  # the intervals are added once every strategy is in
    assert outcome[1] == stored["items"]["items"][merge.name]
    # and the whole run again through the command line: nothing left to build
    rerun = ContinualRun(config, quiet=True)
    rerun.run(distributed.ray_dispatch(""))
    assert rerun.new_stages == 0
    assert _comparable(runs["ray"]) == stored


def test_ray_without_the_package_exits_2_with_the_fix(tiny_models, tmp_path, monkeypatch, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(tiny_config(tiny_models["base"], tmp_path / "run", ["expert"])))
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    assert main(["continual", str(path), "--ray", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ray package" in err and "recall-merge[ray]" in err
    assert not (tmp_path / "run" / "results.json").exists()
