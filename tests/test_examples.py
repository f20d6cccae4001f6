"""The shipped examples run as their comments say.

Every file in examples/ is run end to end by a test here, with the very command its comments
document, so a stale path, option or folder name fails the suite. The commands run with the
working directory at a copy of the repository layout in tmp_path (examples/ beside runs/), so the
examples' relative paths (``../runs/...`` from a config, ``runs/...`` from the root) resolve
inside tmp_path.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recall_merge.config import load_config
from recall_merge.continual.config import expand_strategies, load_continual_config
from recall_merge.continual.strategies import merge_methods
from recall_merge.demo import demo_config
from recall_merge.methods.registry import available_methods, parameters_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# The commands the examples document, exactly as written in their comments.
TWO_EXPERTS = "python examples/two_experts.py --steps 2 --test 4 --samples 24"
MERGE_RECALL = "recall merge examples/merge_recall.yaml --overwrite --quiet"
MERGE_TIES = ("recall merge examples/merge_ties.yaml --overwrite --quiet "
              "--emit-mergekit runs/two_experts/ties_mergekit.yaml")
CONTINUAL_TINY = "recall continual examples/continual_tiny.yaml"
CONTINUAL_SMOLLM2 = "recall continual examples/continual_smollm2.yaml"
# Documented and not run as written: two_experts.py at full size (30 steps, 30 test items; several
# minutes). TWO_EXPERTS runs the same script at a tiny size.
TWO_EXPERTS_FULL = "python examples/two_experts.py"

# Per example file: the commands its comments give, and the test that runs it end to end.
DOCUMENTED = {
    "two_experts.py": [TWO_EXPERTS_FULL, TWO_EXPERTS],
    "merge_recall.yaml": [MERGE_RECALL],
    "merge_ties.yaml": [MERGE_TIES],
    "continual_tiny.yaml": [CONTINUAL_TINY],
    "continual_smollm2.yaml": [CONTINUAL_SMOLLM2],
}
RUN_BY = {
    "two_experts.py": "test_two_experts_then_both_merge_yamls",
    "merge_recall.yaml": "test_two_experts_then_both_merge_yamls",
    "merge_ties.yaml": "test_two_experts_then_both_merge_yamls",
    "continual_tiny.yaml": "test_continual_tiny_runs_with_a_subset_of_its_strategies",
    "continual_smollm2.yaml": "test_continual_smollm2_runs_at_a_tiny_budget",
}


def documented_commands(path: Path) -> list[str]:
    """The command lines in an example's comments (YAML) or docstring (Python): indented lines
    that start with ``recall`` or ``python``, without a trailing ``# note`` or ``(note)``."""
    if path.suffix == ".py":
        lines = (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "").splitlines()
        pattern = re.compile(r"^\s{2,}((?:recall|python) .*)$")
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        pattern = re.compile(r"^#\s{2,}((?:recall|python) .*)$")
    commands = []
    for line in lines:
        match = pattern.match(line)
        if match:
            commands.append(re.split(r"\s{2,}[#(]", match.group(1))[0].strip())
    return commands


def copy_examples(root: Path) -> Path:
    shutil.copytree(EXAMPLES, root / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    return root / "examples"


def run_documented(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a documented command (``recall`` is ``python -m recall_merge.cli``) in ``cwd``."""
    argv = shlex.split(command)
    program = {"recall": [sys.executable, "-m", "recall_merge.cli"], "python": [sys.executable]}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(program[argv[0]] + argv[1:], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, (
        f"{command!r} exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result


# --- every example is documented, run, and validates ---------------------------------------------


def test_every_example_is_run_by_a_test():
    files = sorted(p.name for p in EXAMPLES.iterdir() if p.is_file())
    missing = [name for name in files if name not in RUN_BY]
    assert not missing, f"examples without an end-to-end test here: {missing} (add one to RUN_BY)"
    assert sorted(RUN_BY) == files, "RUN_BY names a file examples/ no longer has"
    for test in RUN_BY.values():
        assert callable(globals().get(test)), test


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_documented_commands_are_the_ones_the_tests_run(name):
    assert documented_commands(EXAMPLES / name) == DOCUMENTED[name]


@pytest.mark.parametrize("name", ["merge_recall.yaml", "merge_ties.yaml"])
def test_merge_examples_validate(name):
    config = load_config(EXAMPLES / name)
    assert config.method in available_methods()
    assert config.output.is_absolute()


@pytest.mark.parametrize("name", ["continual_tiny.yaml", "continual_smollm2.yaml"])
def test_continual_examples_validate(name):
    config = load_continual_config(EXAMPLES / name)
    strategies = expand_strategies(config, merge_methods=available_methods())
    assert strategies
    for strategy in strategies:
        if strategy.kind == "merge":
            parameters_model(strategy.method).model_validate(strategy.parameters)


def test_demo_config_validates(tmp_path):
    config = load_continual_config(demo_config(tmp_path / "demo"))
    names = [s.name for s in expand_strategies(config, merge_methods=available_methods())]
    assert "expert" in names and any("recall" in n for n in names)


def test_demo_compares_recall_with_the_default_merge(tmp_path):
    """The demo's task arithmetic is the default merge (the README's first command shows it), not
    a λ of the demo's own."""
    from recall_merge.methods.default import DEFAULT_METHOD, default_parameters

    config = load_continual_config(demo_config(tmp_path / "demo"))
    merges = {s.method: s.parameters for s in expand_strategies(config, merge_methods=available_methods())
              if s.kind == "merge"}
    assert set(merges) == {"recall", DEFAULT_METHOD}
    assert merges[DEFAULT_METHOD] == default_parameters()


# --- two_experts.py, then merge_recall.yaml and merge_ties.yaml on what it wrote ------------------


def assert_merged_folder(folder: Path, method: str, models: list[Path]) -> dict:
    """A complete HF folder: its weights (one file or shards), report and model card."""
    report = json.loads((folder / "recall_report.json").read_text())
    assert report["method"] == method
    assert [Path(m) for m in report["config"]["models"]] == models
    assert report["model_kinds"] == ["base"] + ["lora"] * len(models)
    weights = report["output_files"]
    assert weights == ["model.safetensors"] or all(
        re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", w) for w in weights), weights
    for name in weights:
        assert (folder / name).stat().st_size > 0, name
    assert (folder / "README.md").read_text().strip()
    assert (folder / "config.json").is_file()
    return report


@pytest.mark.integration
def test_two_experts_then_both_merge_yamls(smollm2, tmp_path):
    copy_examples(tmp_path)
    out = tmp_path / "runs" / "two_experts"

    run_documented(TWO_EXPERTS, tmp_path)
    experts = sorted(e.resolve() for e in (out / "experts").iterdir())
    assert [e.name for e in experts] == ["bbc", "word_sentiment"]
    assert all((e / "adapter_model.safetensors").is_file() for e in experts)
    assert len((out / "samples.jsonl").read_text().splitlines()) == 24
    scores = json.loads((out / "scores.json").read_text())
    assert list(scores) == ["base", "expert bbc", "expert word_sentiment", "recall merge"]
    for row in scores.values():
        assert set(row) == {"bbc", "word_sentiment"}
        assert all(0.0 <= value <= 1.0 for value in row.values())
    assert_merged_folder(out / "merged", "recall", experts)

    # the YAMLs name exactly the experts two_experts.py wrote (a stale folder name fails here,
    # before the merge's own error)
    for name in ("merge_recall.yaml", "merge_ties.yaml"):
        config = load_config(tmp_path / "examples" / name)
        assert config.models == [str(e) for e in experts], name

    run_documented(MERGE_RECALL, tmp_path)
    report = assert_merged_folder(out / "merged_from_yaml", "recall", experts)
    assert len(report["layers"]) == 30
    for layer in report["layers"]:
        assert sum(layer["alpha"]) == pytest.approx(1.0)

    run_documented(MERGE_TIES, tmp_path)
    assert_merged_folder(out / "merged_ties", "ties", experts)
    emitted = yaml.safe_load((out / "ties_mergekit.yaml").read_text())
    assert emitted["merge_method"] == "ties"
    assert [m["model"].split("+")[-1] for m in emitted["models"]] == [str(e) for e in experts]


# --- continual_tiny.yaml -------------------------------------------------------------------------

# All of continual_tiny.yaml's strategies (25 once merge:all expands) take about two minutes on two
# cores, too slow for the default suite. This runs the file's command on a copy with the same
# model, tasks and settings and the strategies below, taken from the file by name: each form the
# file uses (a shorthand, a dict with training overrides, LoRA, EWC, expert, a merge shorthand, a
# dict merge with LoRA experts). Not run here: lwf, replay, joint, merge:all:experts:base,
# merge:recall:experts:previous, merge:recall:previous:previous, merge:ties:previous:previous
# (tests/test_continual_run.py runs lwf, replay, joint and merges from a previous merge on a tiny
# model). test_continual_tiny_lists_strategies_that_all_expand checks every listed strategy.
TINY_RUN = ["sequential", "sequential_top1", "sequential_lora", "ewc", "expert",
            "merge:recall:previous:base", "merge:recall:lora_experts"]


def _entry_name(entry: str | dict) -> str:
    return entry if isinstance(entry, str) else entry["name"]


def test_continual_tiny_lists_strategies_that_all_expand():
    entries = yaml.safe_load((EXAMPLES / "continual_tiny.yaml").read_text())["strategies"]
    config = load_continual_config(EXAMPLES / "continual_tiny.yaml")
    strategies = expand_strategies(config, merge_methods=merge_methods())
    names = [s.name for s in strategies]
    # merge:all becomes one strategy per registered method that merges any number of experts
    # (not slerp: exactly one), every other entry exactly one
    assert "slerp" in available_methods() and "slerp" not in merge_methods()
    assert len(strategies) == len(entries) - 1 + len(merge_methods())
    assert {f"merge:{m}:experts:base" for m in merge_methods()} <= set(names)
    assert set(TINY_RUN) <= {_entry_name(e) for e in entries}, "TINY_RUN names a strategy the file dropped"


def test_continual_tiny_runs_with_a_subset_of_its_strategies(tmp_path):
    examples = copy_examples(tmp_path)
    path = examples / "continual_tiny.yaml"
    config = yaml.safe_load(path.read_text())
    config["strategies"] = [e for e in config["strategies"] if _entry_name(e) in TINY_RUN]
    assert [_entry_name(e) for e in config["strategies"]] == TINY_RUN
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    run_documented(CONTINUAL_TINY, tmp_path)
    run_dir = tmp_path / "runs" / "continual_tiny"
    results = json.loads((run_dir / "results.json").read_text())
    assert [t["name"] for t in results["tasks"]] == ["alpha", "beta", "gamma"]
    assert sorted(results["methods"]) == sorted(TINY_RUN)
    for name, entry in results["methods"].items():
        assert "error" not in entry, (name, entry.get("error"))
        assert len(entry["R"]) == 4 and all(len(row) == 3 for row in entry["R"]), name
        assert all(0.0 <= value <= 1.0 for row in entry["R"] for value in row), name
    assert (run_dir / "results.csv").is_file() and (run_dir / "report.html").is_file()


# --- continual_smollm2.yaml ----------------------------------------------------------------------

# The file as written takes about 5.5 minutes on two cores. This runs its command on a copy with
# the same model, tasks, strategies and training settings at a tiny budget: 1 step, 8 training, 2
# dev and 4 test items per task, and at most 8 generated tokens (the past tense is one word).
TINY_BUDGET = {"max_train": 8, "max_dev": 2, "max_test": 4}


@pytest.mark.integration
def test_continual_smollm2_runs_at_a_tiny_budget(smollm2, tmp_path):
    examples = copy_examples(tmp_path)
    path = examples / "continual_smollm2.yaml"
    config = yaml.safe_load(path.read_text())
    strategies = [_entry_name(e) for e in config["strategies"]]
    config.update(TINY_BUDGET)
    config["training"]["max_steps"] = 1
    config["evaluation"]["max_new_tokens"] = 8
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    run_documented(CONTINUAL_SMOLLM2, tmp_path)
    results = json.loads((tmp_path / "runs" / "continual_smollm2" / "results.json").read_text())
    assert [t["name"] for t in results["tasks"]] == ["bbc", "word_sentiment", "past_tense"]
    assert sorted(results["methods"]) == sorted(strategies)
    for name, entry in results["methods"].items():
        assert "error" not in entry, (name, entry.get("error"))
        assert len(entry["R"]) == 4 and all(len(row) == 3 for row in entry["R"]), name
        assert all(0.0 <= value <= 1.0 for row in entry["R"] for value in row), name


def test_readme_merge_config_is_the_example_merge():
    """The config README.md shows under "Merge your own models" merges the same files as
    examples/merge_recall.yaml (which tests above run end to end), from the repository root."""
    import yaml

    repo = EXAMPLES.parent
    readme = (repo / "README.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in readme.split("```yaml\n")[1:]]
    shown = yaml.safe_load(next(block for block in blocks if block.startswith("method: recall")))
    example = yaml.safe_load((EXAMPLES / "merge_recall.yaml").read_text(encoding="utf-8"))
    for key in ("models", "samples"):
        ours = shown[key] if isinstance(shown[key], list) else [shown[key]]
        theirs = example[key] if isinstance(example[key], list) else [example[key]]
        assert [(repo / p).resolve() for p in ours] == [(EXAMPLES / p).resolve() for p in theirs], key
    assert shown["base"] == example["base"] and shown["method"] == example["method"]
