"""The merge never deletes a user's files: not the inputs, not a folder it did not write, not a
sibling that only looks like one of its temporaries."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from recall_merge import merge
from recall_merge.cli import main as cli_main
from recall_merge.errors import OutputError


def _digest(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _project(tiny, tmp_path: Path) -> Path:
    """A user's project folder holding the base, two experts and the samples."""
    project = tmp_path / "proj"
    project.mkdir()
    for key, name in (("base", "base"), ("e1", "e1"), ("e2", "e2")):
        shutil.copytree(tiny[key], project / name)
    shutil.copy(tiny["samples"], project / "samples.jsonl")
    return project


def _config(project: Path, output: Path, method: str = "linear") -> dict:
    return {"method": method, "base": str(project / "base"),
            "models": [str(project / "e1"), str(project / "e2")],
            "samples": str(project / "samples.jsonl"), "output": str(output), "seed": 0,
            "parameters": {"num_typical": 3} if method == "recall" else {}}


@pytest.mark.parametrize("method", ["linear", "recall"])
def test_output_holding_the_inputs_is_refused_and_inputs_survive(method, tiny_models, tmp_path, capsys):
    project = _project(tiny_models, tmp_path)
    before = _digest(project)
    with pytest.raises(OutputError, match="contains input"):
        merge(_config(project, project, method), overwrite=True, quiet=True)
    assert _digest(project) == before

    config_path = tmp_path / "merge.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(_config(project, project, method)))
    assert cli_main(["merge", str(config_path), "--quiet", "--overwrite"]) == 2
    assert "contains input" in capsys.readouterr().err
    assert _digest(project) == before


def test_output_above_the_samples_file_is_refused(tiny_models, tmp_path):
    project = _project(tiny_models, tmp_path)
    config = _config(project, tmp_path / "merged")
    # the samples file lies inside the would-be output folder, an earlier merge's
    output = tmp_path / "merged"
    output.mkdir()
    (output / "recall_report.json").write_text("{}")  # looks like an earlier merge output
    shutil.copy(project / "samples.jsonl", output / "samples.jsonl")
    config["samples"] = str(output / "samples.jsonl")
    before = _digest(output)
    with pytest.raises(OutputError, match="contains input"):
        merge(config, overwrite=True, quiet=True)
    assert _digest(output) == before


def test_overwrite_refuses_a_folder_that_is_not_an_earlier_merge(tiny_models, tmp_path):
    project = _project(tiny_models, tmp_path)
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="not an earlier recall-merge output"):
        merge(_config(project, documents), overwrite=True, quiet=True)
    assert (documents / "thesis.tex").read_text() == "years of work"


def test_overwrite_still_replaces_an_earlier_merge_and_an_empty_folder(tiny_models, tmp_path):
    project = _project(tiny_models, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    merge(_config(project, empty), overwrite=True, quiet=True)
    assert (empty / "recall_report.json").is_file()
    merge(_config(project, empty), overwrite=True, quiet=True)  # an earlier merge: replaced
    assert not (empty / ".recall-merge-temporary").exists()


def _dead_pid(pid: int = 4_000_000) -> int:
    """A pid no process has (searching up from near Linux's 4,194,304 pid ceiling)."""
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_stale_sweep_never_removes_a_users_lookalike_sibling(tiny_models, tmp_path):
    project = _project(tiny_models, tmp_path)
    output = tmp_path / "merged"
    dead = _dead_pid()
    # A user's backup whose name matches the temporaries' old pattern, and folders with our
    # exact names but no marker: none of them may be touched.
    lookalikes = [tmp_path / ".merged.backup-20240101", tmp_path / f".merged.tmp-{dead}",
                  tmp_path / f".merged.old-{dead}"]
    for folder in lookalikes:
        folder.mkdir()
        (folder / "precious.txt").write_text("mine")
    # A real leftover of a killed run: our name, our marker, a dead pid: removed.
    leftover = tmp_path / f".merged.tmp-{_dead_pid(dead + 1)}"
    leftover.mkdir()
    (leftover / ".recall-merge-temporary").write_text('{"created_by": "recall-merge", "pid": 1}')

    merge(_config(project, output), quiet=True)
    for folder in lookalikes:
        assert (folder / "precious.txt").read_text() == "mine", folder
    assert not leftover.exists()
    assert not (output / ".recall-merge-temporary").exists()
