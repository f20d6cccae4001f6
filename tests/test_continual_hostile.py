"""The continual harness against hostile or careless input: tasks with nothing to train or score
on, non-finite training settings and losses, task files changed under a cached name, local task
names and list targets, quiet runs, and names that would make unsafe or shared folders. Every
refusal is a RecallError naming the problem and the fix, raised before anything is trained."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from recall_merge.cli import main as cli_main
from recall_merge.continual.config import load_continual_config
from recall_merge.continual.runner import ContinualRun
from recall_merge.data.registry import load_task
from recall_merge.data.task import DataError
from recall_merge.errors import ConfigError, RecallError

WORDS = "cat dog park team rain jazz sun moon".split()


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def reviews(path: Path, count: int = 20, flip: bool = False) -> Path:
    """A local classification file: the label of a word (``flip`` swaps every label)."""
    records = []
    for k in range(count):
        word = WORDS[k % len(WORDS)]
        positive = (k % len(WORDS)) % 2 == 0
        records.append({"input": f"review {k}: {word}", "label": "yes" if positive != flip else "no"})
    return write_jsonl(path, records)


def local_spec(path: Path, **options) -> dict:
    return {"source": "local", "path": str(path), "target_field": "label",
            "labels": ["yes", "no"], **options}


def tiny_config(base: Path, run_dir: Path, tasks: list, strategies: list, **extra) -> dict:
    return {
        "model": str(base), "tasks": tasks, "max_train": 12, "max_dev": 4, "max_test": 6,
        "seed": 1, "run_dir": str(run_dir), "strategies": strategies,
        "training": {"mode": "full", "epochs": 1, "batch_size": 8, "learning_rate": 0.003,
                     "max_length": 48, "progress": False},
        "evaluation": {"batch_size": 16, "max_length": 48, "max_new_tokens": 3},
        "merge_samples": 4, **extra,
    }


def run(raw: dict, quiet: bool = True) -> dict:
    return ContinualRun(load_continual_config(raw), quiet=quiet).run()


def continual_cli(config: dict, tmp_path: Path, capsys, monkeypatch) -> tuple[int, str]:
    # the CLI sets these for its process; here they are put back after the test
    for key, value in (("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                       ("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                       ("OMP_WAIT_POLICY", "PASSIVE")):
        monkeypatch.setenv(key, os.environ.get(key, value))
    path = tmp_path / "continual.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    code = cli_main(["continual", str(path), "--quiet"])
    return code, capsys.readouterr().err


def check_refusal(code: int, err: str, *parts: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and "\n  fix: " in err and "Traceback" not in err
    for part in parts:
        assert part in err, (part, err)


# --- (a) nothing to score, nothing to train on ----------------------------------------------

def test_a_task_with_no_test_items_is_refused_before_anything_is_built(tiny_models, tmp_path,
                                                                       capsys, monkeypatch):
    two_records = reviews(tmp_path / "two.jsonl", count=2)  # 20 % of 2 rounds to 0 test items
    config = tiny_config(tiny_models["base"], tmp_path / "run",
                         ["synthetic:alpha", local_spec(two_records, name="tiny_reviews")],
                         ["sequential"])
    code, err = continual_cli(config, tmp_path, capsys, monkeypatch)
    check_refusal(code, err, "'tiny_reviews' has 0 test items", "evaluation.split: dev")
    assert not (tmp_path / "run").exists(), "refused before the run folder was made"


def test_a_task_with_no_train_items_is_refused(tiny_models, tmp_path):
    # of 2 records, one goes to test and one to dev: nothing is left to fine-tune on
    spec = local_spec(reviews(tmp_path / "two.jsonl", count=2), name="held_out_only",
                      test_fraction=0.5, dev_fraction=0.45)
    with pytest.raises(DataError, match="'held_out_only' has 0 train items") as error:
        run(tiny_config(tiny_models["base"], tmp_path / "run", [spec], ["expert"]))
    assert "train" in error.value.fix
    assert not (tmp_path / "run").exists()


def test_guard_newest_needs_dev_items(tiny_models, tmp_path):
    spec = local_spec(reviews(tmp_path / "r.jsonl", count=20), name="no_dev", dev_fraction=0.0)
    guarded = {"kind": "merge", "method": "task_arithmetic", "name": "guarded",
               "guard_newest": True}
    with pytest.raises(DataError, match="'no_dev' has 0 dev items.*guard_newest") as error:
        run(tiny_config(tiny_models["base"], tmp_path / "run", [spec], [guarded]))
    assert "guard_newest" in error.value.fix
    assert not list((tmp_path / "run").rglob("*.safetensors")), "nothing was trained"


def test_scoring_no_items_is_an_error_not_a_zero(tiny_models):
    from recall_merge.continual.scoring import score_task
    from recall_merge.continual.synthetic import load_synthetic_task

    task = load_synthetic_task("synthetic:alpha", max_test=0)
    with pytest.raises(DataError, match="no items to score"):
        score_task(None, None, task, task.test, 4, 48, 2)


# --- (b) non-finite settings and a diverging loss -------------------------------------------

def test_non_finite_training_settings_are_refused_when_the_config_is_read(tiny_models, tmp_path):
    config = tiny_config(tiny_models["base"], tmp_path / "run", ["synthetic:alpha"], ["sequential"])
    text = yaml.safe_dump(config).replace("learning_rate: 0.003", "learning_rate: .inf")
    assert "learning_rate: .inf" in text
    path = tmp_path / "continual.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="training.learning_rate.*finite"):
        load_continual_config(path)
    for key, value in (("learning_rate", float("nan")), ("lwf_temperature", float("inf")),
                       ("ewc_lambda", float("inf")), ("learning_rate", 50.0),
                       ("learning_rate", 0.0)):
        bad = {**config, "strategies": [{"kind": "lwf", "training": {key: value}}]}
        with pytest.raises(ConfigError, match=rf"strategies\[0\]\.training\.{key}' is .*, not a "
                           rf"finite number|strategy 'lwf': training overrides: .*{key}"):
            load_continual_config(bad)
    # free-form settings (task options, merge parameters) are checked too: results stay JSON
    for bad in ({**config, "merge_parameters": {"ties": {"density": float("nan")}}},
                {**config, "task_options": {"dev_fraction": float("inf")}}):
        with pytest.raises(ConfigError, match="not a finite number"):
            load_continual_config(bad)
    assert not (tmp_path / "run").exists()


def test_a_diverging_loss_stops_the_stage_and_leaves_nothing_half_written(tiny_models, tmp_path,
                                                                          monkeypatch):
    import torch

    from recall_merge.continual import training

    real_loss = training._answer_loss
    calls = {"n": 0}

    def loss_that_blows_up(logits, labels):  # what a too-large step does, made deterministic
        calls["n"] += 1
        value = real_loss(logits, labels)
        return value * torch.tensor(float("nan")) if calls["n"] >= 2 else value

    monkeypatch.setattr(training, "_answer_loss", loss_that_blows_up)
    config = tiny_config(tiny_models["base"], tmp_path / "run", ["synthetic:alpha"], ["sequential"])
    config["training"]["epochs"] = 2  # 12 examples, batches of 8: four steps
    results = run(config)
    error = results["methods"]["sequential"]["error"]
    assert "strategies/sequential/step1" in error and "diverged" in error
    assert "loss is nan at step 2 of 4" in error and "learning_rate" in error
    stage = tmp_path / "run" / "strategies" / "sequential"
    assert not (stage / "step1").exists(), "no finished stage from a diverged training"
    assert not [p for p in stage.parent.rglob("*") if "partial" in p.name or ".tmp-" in p.name]
    assert "R" not in results["methods"]["sequential"]


def test_a_failed_strategy_makes_the_command_exit_1_after_writing_the_rest(
        tiny_models, tmp_path, monkeypatch, capsys):
    """One diverging strategy: the other strategies' results, the figures and the report are
    written, the error is named on stderr, and `recall continual` exits 1, not 0."""
    import torch

    from recall_merge.continual import training

    real_loss = training._answer_loss
    calls = {"n": 0}

    def loss_that_blows_up(logits, labels):  # the first training (sequential's) diverges
        calls["n"] += 1
        value = real_loss(logits, labels)
        return value * torch.tensor(float("nan")) if calls["n"] == 1 else value

    monkeypatch.setattr(training, "_answer_loss", loss_that_blows_up)
    config = tiny_config(tiny_models["base"], tmp_path / "run", ["synthetic:alpha"],
                         ["sequential", "merge:linear"])
    code, err = continual_cli(config, tmp_path, capsys, monkeypatch)
    assert code == 1, err
    assert "strategy sequential failed" in err and "diverged" in err and "Traceback" not in err
    assert "1 of 2 strategies failed" in err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "error" in results["methods"]["sequential"]
    assert "R" in results["methods"]["merge:linear:experts:base"]
    assert (tmp_path / "run" / "report.html").exists()


def test_train_refuses_a_non_finite_loss_before_the_step(tiny_models, monkeypatch):
    import torch

    from recall_merge.continual import training
    from recall_merge.continual.config import TrainingConfig
    from recall_merge.continual.synthetic import load_synthetic_task
    from recall_merge.recall.representations import load_tokenizer

    monkeypatch.setattr(training, "_answer_loss",
                        lambda logits, labels: logits.sum() * float("inf"))
    settings = TrainingConfig(mode="full", batch_size=4, max_length=48, progress=False)
    model = training.make_trainable(training.load_causal_lm(tiny_models["base"]), settings)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    task = load_synthetic_task("synthetic:alpha", max_train=8)
    with pytest.raises(training.TrainingError, match="'stage X' diverged: the loss is (nan|inf) "
                       "at step 1 of 2") as error:
        training.train(model, load_tokenizer(tiny_models["base"]), task.train, settings, 0,
                       description="stage X")
    assert "learning_rate" in error.value.fix
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters()), \
        "no optimiser step was taken with the non-finite loss"


# --- (c) the expert cache and the run folder know what each task was -------------------------

def test_a_changed_task_file_under_the_same_name_is_never_served_stale(tiny_models, tmp_path):
    data = reviews(tmp_path / "data" / "reviews.jsonl")
    cache = tmp_path / "experts"

    def config(run_dir: str, **options) -> dict:
        return tiny_config(tiny_models["base"], tmp_path / run_dir,
                           ["synthetic:alpha", local_spec(data, **options)], ["expert"],
                           expert_cache=str(cache))

    first = run(config("a"))
    assert "error" not in first["methods"]["expert"]
    experts = sorted(p.parent for p in cache.rglob("training.json"))
    record = json.loads((cache / "tasks" / "reviews.json").read_text())
    assert record["name"] == "reviews" and record["sizes"]["test"] == 4
    trained = json.loads((experts[1] / "training.json").read_text())
    assert trained["task_key"] == record["key"], "the expert carries the key of its task"

    # the same task again: reused, nothing retrained
    again = ContinualRun(load_continual_config(config("b")), quiet=True)
    again.run()
    assert sorted(p.parent for p in cache.rglob("training.json")) == experts

    # the same name, other content: refused before anything is trained or scored
    reviews(data, flip=True)
    snapshot = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="expert_cache .* task 'reviews' made with different data") \
            as error:
        run(config("c"))
    assert "new name" in error.value.fix
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == snapshot
    assert not (tmp_path / "c" / "strategies").exists() and not (tmp_path / "c" / "evals").exists()
    # the run folder that scored the old file refuses it too
    with pytest.raises(ConfigError, match="run folder .* task 'reviews' made with different data"):
        run(config("a"))

    # the fix it names: the changed task under a new name trains its own expert
    renamed = run(config("d", name="reviews_v2"))
    assert [t["name"] for t in renamed["tasks"]] == ["alpha", "reviews_v2"]
    assert len(list(cache.rglob("training.json"))) == len(experts) + 1


def test_a_changed_spec_under_the_same_name_is_refused(tiny_models, tmp_path):
    data = reviews(tmp_path / "reviews.jsonl")
    cache = tmp_path / "experts"
    raw = tiny_config(tiny_models["base"], tmp_path / "a", [local_spec(data)], ["expert"],
                      expert_cache=str(cache))
    run(raw)
    changed = {**raw, "run_dir": str(tmp_path / "b"),
               "tasks": [local_spec(data, instruction="Is the word a good one?")]}
    with pytest.raises(ConfigError, match="made with a different spec and different data"):
        run(changed)


# --- (d) local tasks: `name:` and list targets ----------------------------------------------

def test_a_local_dict_spec_is_called_by_its_name(tmp_path):
    folder = tmp_path / "exported_split_folder"
    reviews(folder / "train.jsonl", count=12)
    reviews(folder / "test.jsonl", count=4)
    named = load_task(local_spec(folder, name="reviews"))
    assert named.name == "reviews"
    assert load_task(local_spec(folder)).name == "exported_split_folder"
    assert load_task(f"local:{folder / 'test.jsonl'}", target_field="label",
                     labels=["yes", "no"]).name == "test"


def test_local_targets_may_list_several_correct_answers(tmp_path):
    from recall_merge.continual.scoring import generation_scores, gold_answers

    path = write_jsonl(tmp_path / "capitals.jsonl", [
        {"input": f"q{k}", "target": ["Paris", "paris city"] if k % 2 else "Rome"}
        for k in range(10)])
    task = load_task(f"local:{path}", n_dev=0, dev_fraction=0.0, test_fraction=0.0)
    listed = [ex for ex in task.train if ex.target == "Paris"]
    assert listed and all(ex.references == ("Paris", "paris city") for ex in listed)
    assert all(ex.references == () for ex in task.train if ex.target == "Rome")
    scores = generation_scores(["paris city", "Paris"], [gold_answers(ex) for ex in listed[:2]],
                               with_bleu=False)
    assert scores["exact_match"] == 1.0


def test_a_classification_record_may_name_several_correct_labels(tiny_models, tmp_path):
    from recall_merge.continual.scoring import score_task
    from recall_merge.continual.training import load_causal_lm
    from recall_merge.recall.representations import load_tokenizer

    path = write_jsonl(tmp_path / "any.jsonl", [
        {"input": f"item {k}", "label": ["yes", "no"]} for k in range(10)])
    task = load_task(local_spec(path))
    assert task.test and all(ex.references == ("yes", "no") for ex in task.test)
    model = load_causal_lm(tiny_models["base"])
    scores = score_task(model, load_tokenizer(tiny_models["base"]), task, task.test, 4, 48, 2)
    assert scores["accuracy"] == 1.0, "whichever label is predicted, it is a correct one"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input": "x", "label": ["yes", "maybe"]}])
    with pytest.raises(DataError, match="'maybe' .* is not one of labels"):
        load_task(local_spec(bad))


@pytest.mark.parametrize("target", [None, [], {"text": "yes"}, ["yes", None], [["yes"]]])
def test_a_target_of_another_type_is_refused_clearly(tmp_path, target):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"input": "a", "target": "fine"},
                                                {"input": "b", "target": target}])
    with pytest.raises(DataError, match="target field 'target'") as error:
        load_task(f"local:{path}")
    assert "non-empty list of strings" in error.value.fix


def test_a_huge_bad_target_is_quoted_as_an_excerpt(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"input": "a", "target": {"x" * 5000: 1}}])
    with pytest.raises(DataError) as error:
        load_task(f"local:{path}")
    assert len(str(error.value)) < 600
    records = write_jsonl(tmp_path / "lists.jsonl", [["not", "an", "object"]])
    with pytest.raises(DataError, match="not an object"):
        load_task(f"local:{records}")


# --- (e) quiet is quiet; a loud run says what it is doing ------------------------------------

def test_quiet_hides_every_progress_bar_and_a_loud_run_names_each_stage(tiny_models, tmp_path,
                                                                        capfd):
    def config(run_dir: str) -> dict:
        raw = tiny_config(tiny_models["base"], tmp_path / run_dir, ["synthetic:alpha"],
                          ["sequential"])
        raw["training"]["progress"] = True  # the config asks for bars: --quiet still wins
        return raw

    capfd.readouterr()
    run(config("quiet"), quiet=True)
    quiet = capfd.readouterr()
    assert "%|" not in quiet.err and "it/s" not in quiet.err, quiet.err[-2000:]
    assert "[continual]" not in quiet.err and quiet.out == ""

    run(config("loud"), quiet=False)
    loud = capfd.readouterr().err
    assert "%|" in loud, "the training bar the config asked for"
    assert "[continual] scoring base on task alpha (6 items)..." in loud
    assert "[continual] training strategies/sequential/step1 on 12 examples..." in loud
    assert "[continual] scoring strategies/sequential/step1 on task alpha (6 items)..." in loud
    assert loud.index("scoring base") < loud.index("training strategies")


# --- (f) names that would make unsafe or shared folders -------------------------------------

@pytest.mark.parametrize(("names", "message"), [
    ([".."], "cannot be a folder name"),
    (["."], "cannot be a folder name"),
    ([".hidden"], "cannot be a folder name"),
    (["x" * 300], "cannot be a folder name"),
    (["a/b", "a_b"], "would share the folder 'a_b'"),
    (["a b", "a?b"], "would share the folder"),
    (["Ewc", "ewc"], "would share the folder"),
])
def test_strategy_names_that_break_or_share_folders_are_refused(tiny_models, tmp_path, names,
                                                                message):
    strategies = [{"kind": "sequential", "name": name} for name in names]
    with pytest.raises(ConfigError, match=message) as error:
        load_continual_config(tiny_config(tiny_models["base"], tmp_path / "run",
                                          ["synthetic:alpha"], strategies))
    assert "name" in error.value.fix and len(str(error.value)) < 600


def test_task_names_that_share_a_folder_are_refused_before_anything_is_built(tiny_models,
                                                                             tmp_path):
    data = reviews(tmp_path / "r.jsonl")
    tasks = [local_spec(data, name="my reviews"), local_spec(data, name="my/reviews")]
    with pytest.raises(ConfigError, match="task names 'my reviews' and 'my/reviews' would share"):
        run(tiny_config(tiny_models["base"], tmp_path / "run", tasks, ["expert"]))
    assert not (tmp_path / "run").exists()
    dots = [local_spec(data, name="..")]
    with pytest.raises(ConfigError, match="task name '..' cannot be a folder name"):
        run(tiny_config(tiny_models["base"], tmp_path / "run", dots, ["expert"]))


def test_an_odd_but_safe_name_stays_inside_the_run_folder(tiny_models, tmp_path):
    strategies = [{"kind": "sequential", "name": "../../escape <me>"}]
    with pytest.raises(ConfigError):  # starts with a dot once slugged
        load_continual_config(tiny_config(tiny_models["base"], tmp_path / "run",
                                          ["synthetic:alpha"], strategies))
    strategies = [{"kind": "sequential", "name": "seq/../../escape <me>"}]
    results = run(tiny_config(tiny_models["base"], tmp_path / "run", ["synthetic:alpha"],
                              strategies))
    assert "error" not in results["methods"]["seq/../../escape <me>"]
    assert (tmp_path / "run" / "strategies" / "seq_.._.._escape__me_" / "step1").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_every_refusal_is_a_recall_error():
    # the CLI turns exactly these into exit 2 without a traceback
    from recall_merge.continual.training import TrainingError

    assert issubclass(DataError, RecallError) and issubclass(TrainingError, RecallError)


@pytest.mark.parametrize("bad", [{"seed": -1}, {"seed": 2**32}, {"device": "tpu"}, {"device": "cuda:99"}])
def test_seed_and_device_are_checked_when_the_config_is_read(bad, tmp_path, capsys):
    """The continual config refuses what the merge config refuses: a seed outside 0..2**32-1 and a
    device this machine cannot serve (checked against the machine, so cuda:99 never exists)."""
    import yaml

    from recall_merge.cli import main as cli_main

    config = {"model": "tiny-random", "tasks": ["synthetic:alpha"], "strategies": ["sequential"],
              "run_dir": str(tmp_path / "run"), **bad}
    path = tmp_path / "continual.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli_main(["continual", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "fix:" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
