"""Which model a merge strategy deploys after each step (``deploy``): the merge itself (default),
or TIME's exponential moving average of the merges, θ_deploy_1 = θ_merge_1 and
θ_deploy_t = (1 − β)·θ_deploy_{t−1} + β·θ_merge_t, on a tiny random Llama and SYNTHETIC tasks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_continual_run import comparable, tiny_config

from recall_merge.continual.config import expand_strategies, load_continual_config, parse_shorthand
from recall_merge.continual.runner import ContinualRun
from recall_merge.errors import ConfigError

TASKS = ["synthetic:alpha", "synthetic-gen:gamma", "synthetic:beta"]
BETA = 0.3
# the merges feed the next step (library and finetune_from previous), so that the merge chain and
# the deployed chain are told apart
PROTOCOL = {"kind": "merge", "method": "ties", "library": "previous", "finetune_from": "previous"}
PLAIN = {**PROTOCOL, "name": "plain"}
EMA = {**PROTOCOL, "name": "ema", "deploy": "ema", "ema_beta": BETA}


def deploy_config(base: Path, run_dir: Path, strategies: list, keep: str = "all") -> dict:
    return {**tiny_config(base, run_dir, strategies), "tasks": TASKS, "keep_weights": keep}


@pytest.fixture(scope="module")
def ema_run(tiny_models, tmp_path_factory) -> tuple[dict, Path]:
    run_dir = tmp_path_factory.mktemp("deploy") / "run"
    config = load_continual_config(deploy_config(tiny_models["base"], run_dir, [PLAIN, EMA]))
    return ContinualRun(config, quiet=True).run(), run_dir


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_ema_deploys_the_moving_average_of_the_merges(ema_run):
    results, run_dir = ema_run
    stages = run_dir / "strategies" / "ema"
    entry = results["methods"]["ema"]
    assert "error" not in entry, entry.get("error")
    assert (entry["deploy"], entry["ema_beta"]) == ("ema", BETA)
    # step 1: the merge itself is deployed (no deploy1 stage); later steps: the average
    assert not (stages / "deploy1").exists()
    assert sorted(p.name for p in stages.glob("deploy*")) == ["deploy2", "deploy3"]
    previous = weights(stages / "step1")
    for step in (2, 3):
        merge, deployed = weights(stages / f"step{step}"), weights(stages / f"deploy{step}")
        assert deployed.keys() == merge.keys() == previous.keys()
        for name, tensor in deployed.items():
            expected = (1 - BETA) * previous[name].float() + BETA * merge[name].float()
            assert torch.allclose(tensor.float(), expected, rtol=0, atol=1e-6), (step, name)
        # a real average: the deployed model is neither of the two it was made from
        assert any(not torch.equal(deployed[n], merge[n]) for n in merge)
        previous = deployed
    # the merges still feed the next step: step 3 merges the step-2 MERGE with the new expert
    # (trained from that merge), not the deployed average
    config = json.loads((stages / "step3" / "continual_merge.json").read_text())["config"]
    assert config["models"] == [str(stages / "step2"), str(stages / "expert3")]
    # the rows of R are the deployed models' scores: row 1 is the merge's, scored once
    evals = run_dir / "evals"
    assert (evals / "strategies_ema_deploy3.json").is_file()
    assert not (evals / "strategies_ema_deploy1.json").exists()
    step1 = json.loads((evals / "strategies_ema_step1.json").read_text())
    assert entry["R"][1] == [step1[name]["score"] for name in ("alpha", "gamma", "beta")]
    deploy3 = json.loads((evals / "strategies_ema_deploy3.json").read_text())
    assert entry["R"][3] == [deploy3[name]["score"] for name in ("alpha", "gamma", "beta")]
    # both strategies merge the same step-1 expert alike: the same first row
    assert entry["R"][1] == results["methods"]["plain"]["R"][1]


def test_deploy_merge_is_todays_behaviour(ema_run, tiny_models, tmp_path):
    results, run_dir = ema_run
    plain = results["methods"]["plain"]
    assert (plain["deploy"], plain["ema_beta"]) == ("merge", None)
    assert not list((run_dir / "strategies" / "plain").glob("deploy*"))
    # the same strategy with deploy: merge written out, in a run folder of its own
    explicit = {**PLAIN, "deploy": "merge"}
    config = load_continual_config(deploy_config(tiny_models["base"], tmp_path / "run", [explicit]))
    again = ContinualRun(config, quiet=True).run()
    assert again["methods"]["plain"]["R"] == plain["R"]
    assert again["methods"]["plain"]["AP"] == plain["AP"]
    assert not list((tmp_path / "run" / "strategies" / "plain").glob("deploy*"))
    # the default is left out of the run folder's stamp, so folders made before it still match
    stamp = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "deploy" not in stamp["strategies"][0] and "ema_beta" not in stamp["strategies"][0]


def test_a_rerun_continues_without_recomputing(ema_run, tiny_models, tmp_path):
    results, source = ema_run
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)  # this test removes stages: not in the shared folder
    raw = deploy_config(tiny_models["base"], run_dir, [PLAIN, EMA])
    run = ContinualRun(load_continual_config(raw), quiet=True)
    assert comparable(run.run()) == comparable(results)
    assert run.new_stages == 0
    # a run stopped before the last average: only that stage and its scores are made again
    stages = run_dir / "strategies" / "ema"
    before = weights(stages / "deploy3")
    shutil.rmtree(stages / "deploy3")
    (run_dir / "evals" / "strategies_ema_deploy3.json").unlink()
    run = ContinualRun(load_continual_config(raw), quiet=True)
    again = run.run()
    assert run.new_stages == 2  # deploy3, and its scores
    assert again["methods"]["ema"] == results["methods"]["ema"]
    after = weights(stages / "deploy3")
    assert all(torch.equal(after[name], before[name]) for name in before)
    # keep_weights: final keeps the final merge and the final deployed model, drops the others
    run = ContinualRun(load_continual_config({**raw, "keep_weights": "final"}), quiet=True)
    run.run()
    assert run.new_stages == 0
    for kept in ("step3", "deploy3"):
        assert (stages / kept / "model.safetensors").is_file(), kept
    for removed in ("step1", "step2", "deploy2", "expert2"):
        assert (stages / removed / "WEIGHTS_REMOVED.json").is_file(), removed


@pytest.mark.parametrize("beta", [0, 1, 1.5, -0.2])
def test_ema_beta_outside_0_1_is_refused(tiny_models, tmp_path, beta):
    strategy = {**EMA, "ema_beta": beta}
    with pytest.raises(ConfigError, match="not strictly between 0 and 1") as error:
        load_continual_config(deploy_config(tiny_models["base"], tmp_path, [strategy]))
    assert "(0, 1)" in error.value.fix


@pytest.mark.parametrize("strategy", [{"kind": "sequential", "deploy": "ema"},
                                      {"kind": "joint", "ema_beta": 0.3},
                                      {"kind": "expert", "deploy": "ema", "ema_beta": 0.3}])
def test_deploy_is_refused_on_a_strategy_that_merges_nothing(tiny_models, tmp_path, strategy):
    with pytest.raises(ConfigError, match="merges nothing") as error:
        load_continual_config(deploy_config(tiny_models["base"], tmp_path, [strategy]))
    assert "kind: merge" in error.value.fix and error.value.fix.startswith("drop ")


def test_ema_beta_without_ema_deployment_is_refused(tiny_models, tmp_path):
    strategy = {**PROTOCOL, "ema_beta": 0.3}
    with pytest.raises(ConfigError, match="ema_beta .* deploy is 'merge'") as error:
        load_continual_config(deploy_config(tiny_models["base"], tmp_path, [strategy]))
    assert "deploy: ema" in error.value.fix


def test_shorthand_and_names(tiny_models, tmp_path):
    # the shorthand deploys the merge; the mapping form without a name gets an ':ema' name, so it
    # runs beside the same merge deployed as is
    assert parse_shorthand("merge:ties:previous").deploy == "merge"
    ema = {"kind": "merge", "method": "ties", "deploy": "ema"}
    config = load_continual_config(deploy_config(tiny_models["base"], tmp_path, ["merge:ties", ema]))
    plain, averaged = expand_strategies(config, merge_methods=[])
    assert (plain.name, plain.deploy) == ("merge:ties:experts:base", "merge")
    assert (averaged.name, averaged.deploy, averaged.ema_beta) == (
        "merge:ties:experts:base:ema", "ema", 0.5)
