"""LoRA out: a merge of LoRA experts written as one PEFT adapter (exact when the rank fits, its
truncation error reported when not), and `recall extract-lora` against mergekit-extract-lora."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from recall_merge import merge
from recall_merge.cli import main as cli_main
from recall_merge.errors import OutputError
from recall_merge.io import lora_out
from recall_merge.testing import make_tiny_lora

TOKENS = torch.tensor([[1, 5, 9, 22, 40, 7, 3, 11, 64, 2]])


def _logits_dense(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(TOKENS).logits


def _logits_peft(base: Path, adapter: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        return PeftModel.from_pretrained(model, adapter)(TOKENS).logits


def _lora_with_saved_modules(folder: Path, base: Path, seed: int) -> Path:
    """A PEFT adapter that adapts o_proj/down_proj at rank 2 and trains lm_head and the final norm
    whole (modules_to_save), every trained value seeded and non-zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["o_proj", "down_proj"],
                                                  modules_to_save=["lm_head", "model.norm"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
            elif "modules_to_save" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def experts(tiny_models, tiny_loras, tmp_path_factory) -> dict[str, Path]:
    """The two rank-4 q/v adapters of conftest, a rank-2 adapter on o_proj/down_proj/gate_proj
    (so the merged modules have different ranks), and one with modules_to_save."""
    root = tmp_path_factory.mktemp("lora_out")
    return {**tiny_loras,
            "l3": make_tiny_lora(root / "l3", tiny_models["base"], seed=7, rank=2,
                                 target_modules=("v_proj", "o_proj", "gate_proj")),
            "saved": _lora_with_saved_modules(root / "saved", tiny_models["base"], seed=9)}


def _merge_both(tiny, models: list[Path], tmp_path: Path, method: str, parameters: dict,
                lora_output: dict | None = None):
    common = {"method": method, "base": str(tiny["base"]), "models": [str(m) for m in models],
              "samples": str(tiny["samples"]), "parameters": parameters, "seed": 0}
    dense = merge({**common, "output": str(tmp_path / "dense")}, quiet=True)
    extra = {"lora_output": lora_output} if lora_output else {}
    adapter = merge({**common, "output": str(tmp_path / "adapter"), "output_format": "lora", **extra}, quiet=True)
    return dense, adapter


@pytest.mark.parametrize("method, parameters, how", [
    ("task_arithmetic", {"lambda": 0.7, "weights": [1.0, 0.5, -0.3]}, {"concatenated"}),
    ("recall", {"num_typical": 3}, {"concatenated"}),
    ("ties", {"density": 0.5}, {"svd of the merged delta"}),
])
def test_lora_out_loads_in_peft_and_matches_the_dense_merge(method, parameters, how, tiny_models, experts,
                                                            tmp_path):
    models = [experts["l1"], experts["l2"], experts["l3"]]
    dense, adapter = _merge_both(tiny_models, models, tmp_path, method, parameters)
    section = adapter.report["lora_output"]
    assert {entry["how"] for entry in section["modules"].values()} == how
    assert section["max_relative_error"] <= 1e-5
    if how == {"concatenated"}:  # no SVD: rank Σ r_k where the experts overlap (v_proj: 4 + 4 + 2)
        assert section["modules"]["model.layers.0.self_attn.v_proj"]["rank"] == 10
        assert section["modules"]["model.layers.0.self_attn.q_proj"]["rank"] == 8
    config = json.loads((adapter.output / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and set(config["target_modules"]) == set(section["modules"])
    assert sorted(p.name for p in adapter.output.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "recall_report.json"]
    difference = (_logits_dense(dense.output) - _logits_peft(tiny_models["base"], adapter.output)).abs().max()
    assert float(difference) <= 1e-4
    card = (adapter.output / "README.md").read_text()
    assert "library_name: peft" in card and "output_format: lora" in card


def _deltas_of_dense_merge(dense: Path, base: Path) -> dict[str, torch.Tensor]:
    merged, original = load_file(dense / "model.safetensors"), load_file(base / "model.safetensors")
    return {name.removesuffix(".weight"): merged[name] - original[name] for name in merged}


def _reconstructed(adapter: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(adapter / "adapter_model.safetensors")
    out = {}
    for key, lora_b in tensors.items():
        if key.endswith(".lora_B.weight"):
            module = key.removeprefix(lora_out.PEFT_PREFIX).removesuffix(".lora_B.weight")
            out[module] = lora_b.double() @ tensors[key.replace(".lora_B.", ".lora_A.")].double()
    return out


@pytest.mark.parametrize("lora_output", [{"rank": 3}, {"energy": 0.8}, {"rank": 6, "energy": 0.95}])
def test_truncated_lora_out_reports_its_true_error(lora_output, tiny_models, experts, tmp_path):
    models = [experts["l1"], experts["l2"], experts["l3"]]
    dense, adapter = _merge_both(tiny_models, models, tmp_path, "task_arithmetic", {"lambda": 0.8}, lora_output)
    section = adapter.report["lora_output"]
    deltas = _deltas_of_dense_merge(dense.output, tiny_models["base"])
    products = _reconstructed(adapter.output)
    assert set(products) == set(section["modules"])
    truncated = 0
    for module, entry in section["modules"].items():
        delta = deltas[module].double()
        true_error = float((delta - products[module]).norm() / delta.norm())
        assert abs(true_error - entry["relative_error"]) <= 1e-4, module
        assert entry["rank"] <= lora_output.get("rank", 10**6)
        if "energy" in lora_output and entry["rank"] < lora_output.get("rank", 10**6):
            assert entry["relative_error"] ** 2 <= 1 - lora_output["energy"] + 1e-6  # kept ≥ energy
        truncated += entry["how"] == "svd of the factors"
    assert truncated > 0 and section["max_relative_error"] > 0.01
    # the adapter PEFT loads is that truncation: its logits move away from the dense merge's
    assert float((_logits_dense(dense.output) - _logits_peft(tiny_models["base"], adapter.output)).abs().max()) > 1e-3


def test_replaced_modules_are_written_whole_as_modules_to_save(tiny_models, experts, tmp_path):
    dense, adapter = _merge_both(tiny_models, [experts["l1"], experts["saved"]], tmp_path, "task_arithmetic",
                                 {"weights": [0.6, 0.9]})
    config = json.loads((adapter.output / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["lm_head", "model.norm"]
    assert adapter.report["lora_output"]["modules_to_save"] == ["lm_head", "model.norm"]
    tensors = load_file(adapter.output / "adapter_model.safetensors")
    merged = load_file(dense.output / "model.safetensors")
    assert tensors["base_model.model.lm_head.weight"].equal(merged["lm_head.weight"])
    assert tensors["base_model.model.model.norm.weight"].equal(merged["model.norm.weight"])
    difference = (_logits_dense(dense.output) - _logits_peft(tiny_models["base"], adapter.output)).abs().max()
    assert float(difference) <= 1e-4


def _cli_merge(tmp_path: Path, capsys, **config) -> tuple[int, str]:
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump({"output": str(tmp_path / "out"), **config}))
    code = cli_main(["merge", str(path), "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("extra, expected", [
    ({"lora_output": {"rank": 0}}, "rank 0 of lora_output is out of range"),
    ({"lora_output": {"rank": 2.5}}, "rank 2.5 of lora_output is not a whole number"),
    ({"lora_output": {"energy": 1.5}}, "energy 1.5 of lora_output is outside (0, 1]"),
    ({"lora_output": {"energy": 0}}, "energy 0 of lora_output is outside (0, 1]"),
    ({"lora_output": {"energy": "high"}}, "energy 'high' of lora_output is not a number"),
    ({"output_format": "full", "lora_output": {"rank": 4}}, "lora_output is set, but output_format is 'full'"),
    ({"output_format": "adapter"}, "output_format"),
])
def test_bad_lora_options_exit_2_before_anything_is_read(extra, expected, tiny_models, experts, tmp_path,
                                                         capsys):
    config = {"method": "task_arithmetic", "base": str(tiny_models["base"]),
              "models": [str(experts["l1"])], "output_format": "lora", **extra}
    code, err = _cli_merge(tmp_path, capsys, **config)
    assert code == 2 and expected in err and "fix:" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_lora_out_refuses_full_experts_and_base_changing_methods(tiny_models, experts, tmp_path, capsys,
                                                                 monkeypatch):
    def no_weight_read(*args, **kwargs):
        raise AssertionError("a weight was merged before the refusal")

    monkeypatch.setattr(lora_out, "_module_factors", no_weight_read)
    code, err = _cli_merge(tmp_path, capsys, method="task_arithmetic", base=str(tiny_models["base"]),
                           models=[str(experts["l1"]), str(tiny_models["e1"])], output_format="lora")
    assert code == 2 and "models[1]" in err and "is a full checkpoint" in err and "recall extract-lora" in err
    # linear without normalize scales the base itself: no adapter holds that
    code, err = _cli_merge(tmp_path, capsys, method="linear", base=str(tiny_models["base"]),
                           models=[str(experts["l1"]), str(experts["l2"])], output_format="lora",
                           parameters={"normalize": False})
    assert code == 2 and "changes tensors that no expert changes" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_lora_out_is_written_atomically(tiny_models, experts, tmp_path, monkeypatch):
    config = {"method": "task_arithmetic", "base": str(tiny_models["base"]),
              "models": [str(experts["l1"]), str(experts["l2"])], "output": str(tmp_path / "out"),
              "output_format": "lora"}
    first = merge(config, quiet=True)
    before = (first.output / "adapter_model.safetensors").read_bytes()

    calls = {"count": 0}
    real_write = lora_out.StreamingShardWriter.write

    def failing_write(self, name, tensor):
        calls["count"] += 1
        if calls["count"] == 3:
            raise OSError(28, "No space left on device")
        return real_write(self, name, tensor)

    monkeypatch.setattr(lora_out.StreamingShardWriter, "write", failing_write)
    with pytest.raises(OutputError, match="the disk is full"):
        merge({**config, "lora_output": {"rank": 2}}, overwrite=True, quiet=True)
    assert (first.output / "adapter_model.safetensors").read_bytes() == before  # the old one stands
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind
    monkeypatch.undo()
    again = merge({**config, "lora_output": {"rank": 2}}, overwrite=True, quiet=True)
    assert again.report["lora_output"]["max_rank"] == 2


# ------------------------------------------------------------------------------ extract-lora
EXTRACT_RANKS = (4, 40)  # 40: k_proj and v_proj (32 × 64) stop at 32, so rank_pattern is exercised


@pytest.fixture(scope="module")
def mergekit_extractions(tiny_models, tmp_path_factory) -> dict[int, Path]:
    """mergekit-extract-lora 0.1.5 of e1 on the base at each rank, in one process (its import is
    most of the cost). Absolute paths: mergekit's card asks the hub about paths that look like ids."""
    root = tmp_path_factory.mktemp("mergekit_extract")
    runs = [["--model", str(tiny_models["e1"].resolve()), "--base-model", str(tiny_models["base"].resolve()),
             "--out-path", str(root / f"rank{rank}"), "--max-rank", str(rank)] for rank in EXTRACT_RANKS]
    script = ("import sys, json\nfrom mergekit.scripts.extract_lora import main\n"
              "for argv in json.loads(sys.argv[1]):\n    main.main(argv, standalone_mode=False)\n")
    result = subprocess.run([sys.executable, "-c", script, json.dumps(runs)], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return {rank: root / f"rank{rank}" for rank in EXTRACT_RANKS}


@pytest.mark.parametrize("rank", EXTRACT_RANKS)
def test_extract_lora_equals_mergekit_extract_lora(rank, tiny_models, mergekit_extractions, tmp_path, capsys):
    ours, theirs = tmp_path / "ours", mergekit_extractions[rank]
    code = cli_main(["extract-lora", str(tiny_models["e1"]), "--base", str(tiny_models["base"]),
                     "--rank", str(rank), "--output", str(ours), "--quiet"])
    assert code == 0, capsys.readouterr().err
    mine = load_file(ours / "adapter_model.safetensors")
    reference = load_file(theirs / "adapter_model.safetensors")
    assert mine.keys() == reference.keys()
    for key in mine:
        assert mine[key].shape == reference[key].shape and mine[key].dtype == reference[key].dtype, key
        assert float((mine[key] - reference[key]).abs().max()) <= 1e-5, key
    config, reference_config = (json.loads((folder / "adapter_config.json").read_text()) for folder in (ours, theirs))
    for key in ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "peft_type", "use_rslora", "task_type"):
        assert config[key] == reference_config[key], key
    for key in ("target_modules", "modules_to_save"):
        assert sorted(config[key]) == sorted(reference_config[key]), key
    if rank == 40:
        assert config["rank_pattern"] == {f"model.layers.{i}.self_attn.{m}": 32 for i in (0, 1)
                                          for m in ("k_proj", "v_proj")}


def test_extracted_lora_at_full_rank_reproduces_the_model(tiny_models, tmp_path, capsys):
    out = tmp_path / "adapter"
    assert cli_main(["extract-lora", str(tiny_models["e2"]), "--base", str(tiny_models["base"]),
                     "--rank", "128", "--output", str(out), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["max_relative_error"] <= 1e-5
    difference = (_logits_dense(tiny_models["e2"]) - _logits_peft(tiny_models["base"], out)).abs().max()
    assert float(difference) <= 1e-4
    report = json.loads((out / "recall_report.json").read_text())
    assert report["modules"]["model.layers.0.self_attn.q_proj"]["rank"] == 64


def test_extract_lora_reports_the_truncation_error(tiny_models, tmp_path, capsys):
    out = tmp_path / "adapter"
    assert cli_main(["extract-lora", str(tiny_models["e3"]), "--base", str(tiny_models["base"]),
                     "--rank", "5", "--output", str(out), "--quiet"]) == 0
    report = json.loads((out / "recall_report.json").read_text())
    deltas = _deltas_of_dense_merge(tiny_models["e3"], tiny_models["base"])
    products = _reconstructed(out)
    for module, entry in report["modules"].items():
        true_error = float((deltas[module].double() - products[module]).norm() / deltas[module].double().norm())
        assert abs(true_error - entry["relative_error"]) <= 1e-4, module
    assert 0.3 < report["max_relative_error"] < 1.0  # random noise: rank 5 of 64 keeps little


@pytest.mark.parametrize("arguments, expected", [
    (["--rank", "0"], "--rank 0 is not a rank"),
    (["--rank", "4", "--base", "LORA"], "base"),
    (["--rank", "4", "MODEL=LORA"], "already a LoRA adapter"),
    (["--rank", "4", "--output", "EXISTING"], "already exists"),
])
def test_extract_lora_bad_inputs_exit_2(arguments, expected, tiny_models, experts, tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("a user's file")
    substitutions = {"LORA": str(experts["l1"]), "EXISTING": str(existing)}
    model = str(tiny_models["e1"])
    options = {"--base": str(tiny_models["base"]), "--output": str(tmp_path / "out")}
    rest = []
    index = 0
    while index < len(arguments):
        item = arguments[index]
        if item.startswith("MODEL="):
            model = substitutions[item.split("=", 1)[1]]
        elif item in ("--base", "--output"):
            options[item] = substitutions[arguments[index + 1]]
            index += 1
        else:
            rest.append(item)
        index += 1
    argv = ["extract-lora", model, "--quiet", *rest]
    for key, value in options.items():
        argv += [key, value]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "fix:" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and (existing / "keep.txt").read_text() == "a user's file"


def test_extract_lora_is_described_in_the_help(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "extract-lora" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["extract-lora", "--help"])
    text = capsys.readouterr().out
    assert "mergekit-extract-lora" in text and "--rank" in text and "--base" in text


def test_the_lora_output_check_refuses_a_non_finite_entry_and_reads_the_sum_first():
    """The written factors' finite check: a sum that overflows although every entry is finite
    passes; one NaN or Inf entry is refused with the tensor's name. Synthetic tensors."""
    from recall_merge.config import MergeConfig
    from recall_merge.errors import OutputError
    from recall_merge.io.lora_out import _check_output_finite

    config = MergeConfig.model_validate({"method": "linear", "base": "b", "models": ["a"],
                                         "output": "o", "dtype": "bfloat16"})
    _check_output_finite("lora_A", torch.full((4, 3), 3e38).to(torch.bfloat16), config)
    for bad in (float("nan"), float("inf")):
        tensor = torch.zeros(4, 3, dtype=torch.bfloat16)
        tensor[1, 2] = bad
        with pytest.raises(OutputError, match="lora_A"):
            _check_output_finite("lora_A", tensor, config)
