"""The command line a user meets first, and what every merge output holds: its own model card, no
base card, no code file, never a non-finite tensor, and a clean refusal when the OS refuses."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from recall_merge import merge
from recall_merge.cli import main as cli_main
from recall_merge.errors import OutputError
from recall_merge.methods.default import DEFAULT_METHOD
from recall_merge.methods.registry import available_methods


def _config(tiny, output: Path, method: str = "linear", **extra) -> dict:
    return {"method": method, "base": str(tiny["base"]), "models": [str(tiny["e1"]), str(tiny["e2"])],
            "samples": str(tiny["samples"]), "output": str(output), "seed": 0,
            "parameters": {"num_typical": 3} if method == "recall" else {}, **extra}


def test_version_and_bare_command_print_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("recall-merge ")
    assert cli_main([]) == 0
    out = capsys.readouterr().out
    for command in ("merge", "continual", "methods", "cache", "demo", "analyze", "report"):
        assert command in out


def test_every_subcommand_has_a_description(capsys):
    for command in ("merge", "continual", "methods", "cache", "demo", "analyze", "report"):
        with pytest.raises(SystemExit):
            cli_main([command, "--help"])
        text = capsys.readouterr().out
        # the description is the paragraph after the usage lines
        paragraphs = [p for p in text.split("\n\n") if p.strip()]
        assert len(paragraphs) >= 3 and not paragraphs[1].lstrip().startswith(("positional", "options")), command


def test_methods_prints_one_described_line_per_method(capsys):
    assert cli_main(["methods"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == available_methods()
    assert all(len(line.split(None, 1)) == 2 for line in lines)
    assert [line.split()[0] for line in lines if "the default when a config names no method" in line] \
        == [DEFAULT_METHOD]


def test_merged_folder_has_its_own_model_card_never_the_base_one(tiny_models, tmp_path):
    base = tmp_path / "base"
    import shutil

    shutil.copytree(tiny_models["base"], base)
    (base / "README.md").write_text("---\nlicense: other\n---\n# The base model's card\n")
    (base / "tokenization_evil.py").write_text("raise SystemExit('should never be copied')\n")
    config = _config(tiny_models, tmp_path / "out", "recall")
    config["base"] = str(base)
    output = merge(config, quiet=True).output
    card = (output / "README.md").read_text()
    assert "The base model's card" not in card
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == str(base)
    assert front["tags"][:2] == ["merge", "recall-merge"] and "recall" in front["tags"]
    assert "## Weights per block" in card and "α M_0" in card
    reproduced = yaml.safe_load(card.split("```yaml")[1].split("```")[0])
    assert reproduced["method"] == "recall" and reproduced["models"] == config["models"]
    assert not (output / "tokenization_evil.py").exists()


def test_a_non_finite_merged_tensor_aborts_and_leaves_nothing(tiny_models, tmp_path, monkeypatch):
    from recall_merge.methods import classic

    def broken(self, name, position, base, experts):
        return torch.full_like(base, float("inf"))

    monkeypatch.setattr(classic.Linear, "merge_tensor", broken)
    output = tmp_path / "out"
    with pytest.raises(OutputError, match="non-finite"):
        merge(_config(tiny_models, output), quiet=True)
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary left either


def test_float16_overflow_is_caught_after_the_cast(tiny_models, tmp_path, monkeypatch):
    from recall_merge.methods import classic

    def huge(self, name, position, base, experts):
        return base + 1e6  # finite in float32, infinite in float16

    monkeypatch.setattr(classic.Linear, "merge_tensor", huge)
    with pytest.raises(OutputError, match="float16"):
        merge(_config(tiny_models, tmp_path / "out", dtype="float16"), quiet=True)
    assert not (tmp_path / "out").exists()


def test_the_output_check_reads_the_sum_first_and_only_refuses_a_non_finite_entry():
    """The output check tries the tensor's sum (cheap) before the elementwise check: a sum that
    overflows although every entry is finite passes, one Inf or NaN entry is refused. Synthetic."""
    from recall_merge.config import MergeConfig
    from recall_merge.io.output import check_output_finite

    config = MergeConfig.model_validate({"method": "linear", "base": "b", "models": ["a"],
                                         "output": "o", "dtype": "bfloat16"})
    large = torch.full((4, 3), 3e38).to(torch.bfloat16)  # finite entries, an infinite sum
    assert not torch.isfinite(large.sum()) and torch.isfinite(large).all()
    check_output_finite("w", large, config)
    for bad in (float("inf"), float("nan")):
        tensor = torch.zeros(4, 3, dtype=torch.bfloat16)
        tensor[2, 1] = bad
        with pytest.raises(OutputError, match="1 non-finite value"):
            check_output_finite("w", tensor, config)


def test_file_size_limit_is_a_clean_refusal(tiny_models, tmp_path):
    """A real EFBIG: the child process runs under a 32 KB file-size limit (ulimit -f)."""
    config_path = tmp_path / "merge.yaml"
    config_path.write_text(yaml.safe_dump(_config(tiny_models, tmp_path / "out")))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (32_768, 32_768))

    done = subprocess.run([sys.executable, "-m", "recall_merge.cli", "merge", str(config_path), "--quiet"],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "file-size limit" in done.stderr and "fix:" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_read_only_file_system_is_a_clean_refusal(tiny_models, tmp_path, monkeypatch, capsys):
    """EROFS as the OS reports it (simulated: mounting a read-only file system needs root)."""
    import errno

    from recall_merge.io import atomic

    def read_only(folder):
        raise OSError(errno.EROFS, "Read-only file system", str(folder))

    monkeypatch.setattr(atomic, "make_marked_folder", read_only)
    config_path = tmp_path / "merge.yaml"
    config_path.write_text(yaml.safe_dump(_config(tiny_models, tmp_path / "out")))
    assert cli_main(["merge", str(config_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "read-only" in err and "fix:" in err and "Traceback" not in err


def test_printed_matrices_keep_whole_task_names():
    import io

    from recall_merge.demo import print_matrices

    names = ["bbc", "a_rather_long_task_name_for_sentiment"]
    results = {"tasks": [{"name": n} for n in names],
               "rows": ["base"] + [f"after step {i} ({n})" for i, n in enumerate(names, 1)],
               "methods": {"expert": {"R": [[0.5, 0.25], [0.75, 0.25], [0.5, 1.0]]}}}
    stream = io.StringIO()
    print_matrices(results, stream)
    text = stream.getvalue()
    assert "after step 2 (a_rather_long_task_name_for_sentiment)" in text
    assert " a_rather_long_task_name_for_sentiment" in text.splitlines()[2]
