"""The continual run folder's machinery without a model: durable stages built in marked temporary
folders, the sweep of what killed runs left (only this tool's temporaries, only of processes that
are gone), the strategy table, and the source kept free of test hooks and private imports."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from recall_merge.continual.config import StrategyKind
from recall_merge.continual.store import RunStore, discard_temporaries, stamp_or_refuse
from recall_merge.continual.strategies import STRATEGIES, Learner
from recall_merge.errors import ConfigError
from recall_merge.io.atomic import MARKER, is_marked_folder, make_marked_folder

CONTINUAL = Path(__file__).resolve().parents[1] / "src" / "recall_merge" / "continual"


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def store(root: Path) -> tuple[RunStore, list[str]]:
    lines: list[str] = []
    return RunStore(root, lines.append), lines


def test_a_folder_stage_appears_whole_or_not_at_all(tmp_path):
    run, log = store(tmp_path / "run")
    seen: list[Path] = []

    def build(folder: Path) -> None:
        seen.append(folder)
        assert is_marked_folder(folder), "built inside a marked temporary folder"
        assert not (tmp_path / "run" / "stage").exists(), "nothing at the path while building"
        (folder / "weights.bin").write_bytes(b"1234")

    final = run.folder_stage("stage", build)
    assert (final / "weights.bin").read_bytes() == b"1234"
    assert not (final / MARKER).exists() and not seen[0].exists()
    assert run.new_stages == 1 and log[-1].startswith("done: stage")
    # an existing stage is not built again
    assert run.folder_stage("stage", lambda folder: pytest.fail("rebuilt")) == final
    assert run.new_stages == 1


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_build_leaves_nothing(tmp_path, failure):
    run, _ = store(tmp_path / "run")
    made: list[Path] = []

    def build(folder: Path) -> None:
        made.append(folder)
        (folder / "half.bin").write_bytes(b"12")
        raise failure

    with pytest.raises(type(failure)):
        run.folder_stage("strategies/s/step1", build)
    assert not made[0].exists() and not (tmp_path / "run" / "strategies" / "s" / "step1").exists()
    assert run.new_stages == 0


def test_two_processes_that_need_one_stage_build_it_once(tmp_path):
    """Two benchmark lanes needing the same expert of the expert cache: the second waits on the
    first's lock and finds the stage built, instead of training it a second time."""
    script = f"""
import sys, time
from pathlib import Path
from recall_merge.continual.store import RunStore
def build(tmp):
    (tmp / "built_by").write_text(sys.argv[1])
    time.sleep(1.5)
RunStore(Path({str(tmp_path)!r}), print).folder_stage("expert", build)
print("built" if (Path({str(tmp_path)!r}) / "expert" / "built_by").read_text() == sys.argv[1]
      else "found")
"""
    children = [subprocess.Popen([sys.executable, "-c", script, name], stdout=subprocess.PIPE,
                                 text=True) for name in ("one", "two")]
    outputs = sorted(child.communicate(timeout=120)[0].split()[-1] for child in children)
    assert all(child.returncode == 0 for child in children)
    assert outputs == ["built", "found"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".expert.lock", "expert"]


def test_json_and_text_stages_are_written_once(tmp_path):
    run, _ = store(tmp_path / "run")
    assert run.json_stage("evals/x.json", lambda: {"score": 0.5}) == {"score": 0.5}
    assert run.json_stage("evals/x.json", lambda: pytest.fail("recomputed")) == {"score": 0.5}
    path = run.text_stage("samples/step1.jsonl", lambda: '{"text": "a"}\n')
    assert path.read_text() == '{"text": "a"}\n'
    assert run.new_stages == 2
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == [
        "evals", "samples", "step1.jsonl", "x.json"], "no temporary file is left"


def test_the_sweep_removes_only_this_tools_temporaries_of_dead_runs(tmp_path):
    gone, alive = dead_pid(), os.getpid()
    root = tmp_path / "run"
    stage_dir = root / "strategies" / "seq"
    stage_dir.mkdir(parents=True)
    killed = make_marked_folder(stage_dir / f".step2.tmp-{gone}")
    (killed / "half.safetensors").write_bytes(b"0" * 32)
    (root / "experts" / "full-1234abcd").mkdir(parents=True)
    nested = make_marked_folder(root / "experts" / "full-1234abcd" / f".step1.tmp-{gone}")
    live = make_marked_folder(stage_dir / f".step3.tmp-{alive}")  # a run still at work
    lookalike = stage_dir / f".step4.tmp-{gone}"  # the user's, no marker
    lookalike.mkdir()
    fake_marker = stage_dir / f".step5.tmp-{gone}"  # a marker file that is not ours
    fake_marker.mkdir()
    (fake_marker / MARKER).write_text(json.dumps({"created_by": "someone else"}))
    old_style = stage_dir / "step6.partial"  # what older versions wrote: not marked, kept
    old_style.mkdir()
    partial_file = root / "evals" / f".base.json.recall-partial-{gone}"
    partial_file.parent.mkdir()
    partial_file.write_text("{")
    user_file = root / "evals" / "notes.recall-partial-draft"
    user_file.write_text("mine")

    discard_temporaries(root)
    assert not killed.exists() and not nested.exists() and not partial_file.exists()
    for kept in (live, lookalike, fake_marker, old_style, user_file):
        assert kept.exists(), kept
    discard_temporaries(None)  # no expert cache: nothing to do
    discard_temporaries(tmp_path / "missing")


def test_a_stamp_refuses_other_values_and_names_the_keys(tmp_path):
    path = tmp_path / "config.json"
    stamp_or_refuse(path, {"a": 1, "b": 2}, "problem", "fix")
    stamp_or_refuse(path, {"a": 1, "b": 2}, "problem", "fix")
    with pytest.raises(ConfigError, match=r"problem \(differs in: b, c\)"):
        stamp_or_refuse(path, {"a": 1, "b": 3, "c": 0}, "problem", "fix")


def test_every_strategy_kind_has_one_object_in_the_table():
    assert set(STRATEGIES) == set(get_args(StrategyKind))
    assert all(isinstance(entry, Learner) for entry in STRATEGIES.values())
    assert all(type(entry).models is not Learner.models for entry in STRATEGIES.values())


def _imports(path: Path) -> list[ast.ImportFrom]:
    return [node for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.ImportFrom)]


def test_the_continual_package_holds_no_test_hook_and_no_private_import():
    sources = sorted(CONTINUAL.glob("*.py"))
    assert sources
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert "os._exit" not in text and "ABORT_AFTER" not in text, path.name
        for node in _imports(path):
            if (node.module or "").startswith("recall_merge.continual"):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, (path.name, node.module, private)


def test_the_runner_dispatches_strategies_through_the_table():
    tree = ast.parse((CONTINUAL / "runner.py").read_text(encoding="utf-8"))
    kinds = set(get_args(StrategyKind))
    compared = [node for node in ast.walk(tree) if isinstance(node, ast.Compare)
                and any(isinstance(c, ast.Constant) and c.value in kinds for c in node.comparators)]
    assert not compared, "a strategy kind is tested in runner.py instead of looked up"
