"""lm-evaluation-harness as a scoring backend: on the same items, in the same prompt format, it
gives our scorer's answers item by item (tiny random Llama with SYNTHETIC tasks; the real SmolLM2
on real offline tasks), through `recall eval` and through `evaluation.backend: lm_eval` of a
continual run. Skipped where lm-eval is not installed (pip install 'recall-merge[eval]')."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from recall_merge import lm_eval_backend as backend  # noqa: E402
from recall_merge.cli import main as cli_main  # noqa: E402
from recall_merge.continual import scoring  # noqa: E402
from recall_merge.continual.synthetic import load_synthetic_task  # noqa: E402
from recall_merge.data.task import Task  # noqa: E402
from recall_merge.errors import ConfigError, RecallError  # noqa: E402

MAX_LENGTH = 48


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The written lm-eval task folders go under the test's folder, not the user's cache."""
    monkeypatch.setenv("RECALL_MERGE_CACHE", str(tmp_path / "cache"))


def _model_and_tokenizer(folder: Path, chat: bool = True):
    from transformers import AutoTokenizer

    from recall_merge.continual.training import load_causal_lm

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not chat:  # a plain-prompt (base) model: prompt + "\n", answer + EOS
        tokenizer.chat_template = None
    return load_causal_lm(folder).eval(), tokenizer


def _lm_eval(model, tokenizer, task: Task, max_new_tokens: int = 4, batch_size: int = 4,
             max_length: int = MAX_LENGTH) -> tuple[dict, list[dict]]:
    """lm-eval's scores and per-sample logs of ``task``'s test split."""
    name = backend.lm_eval_task_name(task)
    folder = backend.write_task_folder([backend.LocalTask(name, task, task.test)], tokenizer,
                                       max_new_tokens)
    results = backend.evaluate(backend.make_lm(model, tokenizer, batch_size, max_length),
                               backend.load_tasks([name], folder), seed=0)
    samples = backend.samples_in_order(results, name)
    return backend.task_scores(task, samples), samples


def _choice_margins(log_likelihoods: list[float]) -> list[float]:
    # lm-eval moves the prompt's trailing "\n" into every choice's continuation: the same
    # log p("\n" | prompt) for each choice, gone from the differences between choices
    return [value - log_likelihoods[0] for value in log_likelihoods]


def _assert_same_classification(model, tokenizer, task: Task, max_length: int = MAX_LENGTH,
                                batch_size: int = 4) -> dict:
    ours = scoring.score_task(model, tokenizer, task, task.test, batch_size, max_length, 4)
    theirs, samples = _lm_eval(model, tokenizer, task, batch_size=batch_size, max_length=max_length)
    assert theirs["items"] == ours["items"]
    assert theirs["score"] == ours["score"]
    worst = 0.0
    for example, sample in zip(task.test, samples, strict=True):
        # the prompt lm-eval scored is our rendering of it, and so is every choice
        assert sample["arguments"][0][0] == scoring.render_prompt(tokenizer, example.prompt)
        assert [argument[1] for argument in sample["arguments"]] == [
            scoring.render_answer(tokenizer, example.prompt, choice) for choice in example.choices]
        ours_ll = scoring.choice_log_likelihoods(model, tokenizer, example.prompt, example.choices,
                                                 max_length)
        theirs_ll = [float(response[0]) for response in sample["filtered_resps"]]
        worst = max(worst, max(abs(a - b) for a, b in zip(_choice_margins(ours_ll),
                                                           _choice_margins(theirs_ll), strict=True)))
    assert worst < 1e-3, worst
    return {"items": ours["items"], "max_margin_diff": worst}


@pytest.mark.parametrize("chat", [True, False], ids=["chat-template", "plain-prompt"])
def test_classification_agrees_item_by_item_on_a_tiny_model(tiny_models, chat):
    model, tokenizer = _model_and_tokenizer(tiny_models["e1"], chat)
    task = load_synthetic_task("synthetic:alpha", seed=3, max_train=1, max_dev=1, max_test=16)
    # every third item accepts two of its choices: any of them counts, in both scorers
    task.test = [replace(example, references=(example.target, next(
        c for c in example.choices if c != example.target))) if k % 3 == 0 else example
        for k, example in enumerate(task.test)]
    checked = _assert_same_classification(model, tokenizer, task)
    assert 0 < sum(checked["items"]) < len(task.test)  # both outcomes occur: a real comparison


@pytest.mark.parametrize("chat", [True, False], ids=["chat-template", "plain-prompt"])
def test_generation_agrees_item_by_item_on_a_tiny_model(tiny_models, chat):
    model, tokenizer = _model_and_tokenizer(tiny_models["e1"], chat)
    task = load_synthetic_task("synthetic-gen:gamma", seed=3, max_train=1, max_dev=1, max_test=10)
    greedy = scoring.generate(model, tokenizer, [example.prompt for example in task.test], 4, 4,
                              MAX_LENGTH)
    # a random model answers noise: make our greedy answer the gold answer of every other item,
    # so that exact match is 1 exactly where both backends generate the same text
    task.test = [replace(example, target=greedy[k]) if k % 2 == 0 else example
                 for k, example in enumerate(task.test)]
    ours = scoring.score_task(model, tokenizer, task, task.test, 4, MAX_LENGTH, 4)
    theirs, _ = _lm_eval(model, tokenizer, task)
    assert theirs["predictions"] == greedy
    assert theirs["items"] == ours["items"] and sum(ours["items"]) >= len(task.test) // 2
    for metric in ("exact_match", "f1", "rougeL", "score"):
        assert theirs[metric] == pytest.approx(ours[metric], abs=1e-12)


def test_score_task_has_the_builtin_keys(tiny_models):
    model, tokenizer = _model_and_tokenizer(tiny_models["base"])
    task = load_synthetic_task("synthetic:beta", seed=0, max_train=1, max_dev=1, max_test=6)
    ours = scoring.score_task(model, tokenizer, task, task.test, 4, MAX_LENGTH, 4)
    theirs = backend.score_task(model, tokenizer, task, task.test, 4, MAX_LENGTH, 4)
    assert theirs.pop("backend") == "lm_eval"
    assert theirs == ours


# --- recall eval ----------------------------------------------------------------------------

def test_recall_eval_writes_results_with_items_seed_and_versions(tiny_models, tmp_path, capsys):
    output = tmp_path / "eval.json"
    code = cli_main(["eval", str(tiny_models["base"]), "--tasks", "synthetic:alpha",
                     "synthetic-gen:gamma", "--limit", "5", "--batch-size", "4", "--max-length",
                     str(MAX_LENGTH), "--max-new-tokens", "3", "--output", str(output)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads(output.read_text())
    assert report["seed"] == 0 and report["versions"]["lm_eval"] != "not installed"
    assert report["settings"]["prompt_format"] == "chat template"
    assert report["settings"]["limit"] == 5 and report["settings"]["max_new_tokens"] == 3
    alpha, gamma = report["tasks"]["synthetic:alpha"], report["tasks"]["synthetic-gen:gamma"]
    assert alpha["n"] == 5 and len(alpha["items"]) == 5 and alpha["items_metric"] == "accuracy"
    assert alpha["lm_eval_metrics"]["acc,none"] == pytest.approx(alpha["accuracy"])
    assert len(gamma["predictions"]) == 5 and gamma["kind"] == "generation"
    assert gamma["lm_eval_metrics"]["exact_match,none"] == pytest.approx(gamma["exact_match"])
    assert "items" not in printed["tasks"]["synthetic:alpha"]  # the printed summary is short
    folder = Path(report["settings"]["lm_eval_task_folder"])
    assert sorted(path.name for path in folder.iterdir()) == [
        "recall_synthetic_alpha.jsonl", "recall_synthetic_alpha.yaml",
        "recall_synthetic_gen_gamma.jsonl", "recall_synthetic_gen_gamma.yaml"]


@pytest.mark.parametrize("arguments, expected", [
    (["--tasks", "synthetic:alpha", "--limit", "0"], "--limit 0 is below 1"),
    (["--tasks", "rt:no_such_task"], "rt"),
    (["--tasks", "synthetic:alpha", "synthetic:alpha"], "listed twice"),
    (["--tasks", "synthetic:alpha", "--output", "missing/folder/eval.json"], "does not exist"),
    (["--tasks", "synthetic:alpha", "--max-new-tokens", "64", "--max-length", "48"], "no room"),
])
def test_recall_eval_refuses_bad_input_with_exit_2(tiny_models, tmp_path, capsys, monkeypatch,
                                                    arguments, expected):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["eval", str(tiny_models["base"]), *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "fix: " in err and "Traceback" not in err
    assert expected in err


def test_recall_eval_refuses_a_folder_that_is_no_model(tmp_path, capsys):
    assert cli_main(["eval", str(tmp_path), "--tasks", "synthetic:alpha"]) == 2
    assert "config.json" in capsys.readouterr().err


def test_missing_lm_eval_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what an uninstalled package imports as
    with pytest.raises(RecallError) as error:
        backend.require_lm_eval()
    assert "recall-merge[eval]" in error.value.fix


def test_an_lm_eval_task_that_needs_the_hub_fails_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "hub_task.yaml").write_text(
        "task: needs_the_hub\ndataset_path: allenai/ai2_arc\ndataset_name: ARC-Easy\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: question\n"
        "doc_to_choice: '{{choices.text}}'\ndoc_to_target: 0\n")
    with pytest.raises(RecallError) as error:
        backend.load_tasks(["needs_the_hub"], tmp_path)
    assert "needs_the_hub" in error.value.problem and "HF_HUB_OFFLINE" in error.value.fix


def test_an_unknown_lm_eval_task_is_refused_with_the_closest_names(tmp_path):
    (tmp_path / "mine.yaml").write_text("task: recall_synthetic_alpha\ndataset_path: json\n")
    with pytest.raises(ConfigError) as error:
        backend.load_tasks(["recall_synthetic_alpah"], tmp_path)
    assert "recall_synthetic_alpha" in error.value.fix


# --- evaluation.backend: lm_eval in a continual run -------------------------------------------

def _continual_config(base: Path, run_dir: Path, backend_name: str | None) -> dict:
    evaluation = {"batch_size": 8, "max_length": MAX_LENGTH, "max_new_tokens": 3}
    if backend_name:
        evaluation["backend"] = backend_name
    return {"model": str(base), "tasks": ["synthetic:alpha", "synthetic-gen:gamma"],
            "max_train": 8, "max_dev": 2, "max_test": 6, "seed": 1, "run_dir": str(run_dir),
            "strategies": ["sequential_full"], "evaluation": evaluation,
            "training": {"epochs": 1, "batch_size": 8, "learning_rate": 0.003,
                         "max_length": MAX_LENGTH, "progress": False}}


def test_continual_run_scored_by_lm_eval_has_the_builtin_matrix_and_items(tiny_models, tmp_path):
    from recall_merge.continual.config import load_continual_config
    from recall_merge.continual.runner import ContinualRun

    runs = {}
    for name in ("builtin", "lm_eval"):
        config = load_continual_config(_continual_config(tiny_models["base"], tmp_path / name,
                                                         None if name == "builtin" else name))
        runs[name] = ContinualRun(config, quiet=True).run()
    builtin, lm_eval = (runs[name]["methods"]["sequential_full"] for name in ("builtin", "lm_eval"))
    assert lm_eval["R"] == builtin["R"]
    items = {name: json.loads((tmp_path / name / "items.json").read_text()) for name in runs}
    assert items["lm_eval"]["items"] == items["builtin"]["items"]
    assert lm_eval["intervals"] == builtin["intervals"]  # from the same items
    scored = json.loads((tmp_path / "lm_eval" / "evals" / "base.json").read_text())
    assert {entry["backend"] for entry in scored.values()} == {"lm_eval"}
    # a run folder scored by one backend refuses the other (its stored scores are that backend's)
    with pytest.raises(ConfigError, match="evaluation"):
        other = load_continual_config(_continual_config(tiny_models["base"], tmp_path / "lm_eval",
                                                        None))
        ContinualRun(other, quiet=True).run()


def test_the_default_backend_leaves_older_run_folders_matching(tmp_path):
    from recall_merge.continual.config import load_continual_config
    from recall_merge.continual.store import comparable_config

    default = load_continual_config(_continual_config(Path("tiny-random"), tmp_path, None))
    assert "backend" not in comparable_config(default)["evaluation"]
    chosen = load_continual_config(_continual_config(Path("tiny-random"), tmp_path, "lm_eval"))
    assert comparable_config(chosen)["evaluation"]["backend"] == "lm_eval"


def test_continual_config_refuses_lm_eval_backend_when_it_is_not_installed(tmp_path, monkeypatch):
    import importlib.util

    from recall_merge.continual.config import load_continual_config

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "lm_eval" else real_find_spec(name, *args))
    with pytest.raises(ConfigError, match="recall-merge\\[eval\\]"):
        load_continual_config(_continual_config(Path("tiny-random"), tmp_path, "lm_eval"))


# --- the real SmolLM2 on real offline tasks -------------------------------------------------

@pytest.mark.integration
def test_smollm2_on_rt_sentiment_agrees_item_by_item(smollm2):
    from recall_merge.data.registry import load_task

    model, tokenizer = _model_and_tokenizer(smollm2)
    task = load_task("rt:sentiment", seed=0, n_test=20)
    assert len(task.test) == 20
    with torch.no_grad():
        checked = _assert_same_classification(model, tokenizer, task, max_length=256, batch_size=16)
    assert len(checked["items"]) == 20


@pytest.mark.integration
def test_smollm2_generation_agrees_item_by_item(smollm2):
    from recall_merge.data.registry import load_task

    model, tokenizer = _model_and_tokenizer(smollm2)
    task = load_task("lexicon:past_tense", seed=0, n_test=8)
    ours = scoring.score_task(model, tokenizer, task, task.test, 8, 256, 8)
    theirs, _ = _lm_eval(model, tokenizer, task, max_new_tokens=8, batch_size=8, max_length=256)
    greedy = scoring.generate(model, tokenizer, [example.prompt for example in task.test], 8, 8, 256)
    assert theirs["predictions"] == greedy
    assert theirs["items"] == ours["items"]
