"""Determinism: same config and seed → bit-identical tensors and reports, and full checkpoints
give exactly what the equivalent base + LoRA adapters give."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from recall_merge import merge
from recall_merge.io.lora import LoraAdapter
from recall_merge.io.reader import Checkpoint


def _densify(adapter_folder, base_folder, target):
    """The full checkpoint that base + this adapter stands for (same float32 arithmetic)."""
    base = Checkpoint(base_folder)
    adapter = LoraAdapter(adapter_folder, base)
    shutil.copytree(base_folder, target)
    tensors = {name: adapter.apply(name, base.get(name)).contiguous() for name in base.tensors}
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


def _report_without_run(folder):
    report = json.loads((folder / "recall_report.json").read_text())
    report.pop("run")
    for key in ("models", "config"):
        report.pop(key)
    report.pop("model_kinds")
    return report


@pytest.mark.parametrize("method", ["recall", "ties", "dare_ties"])
def test_full_and_lora_forms_give_bit_identical_merges(method, tiny_models, tiny_loras, tmp_path):
    lora = [tiny_loras["l1"], tiny_loras["l2"]]
    dense = [_densify(folder, tiny_models["base"], tmp_path / f"dense{k}") for k, folder in enumerate(lora)]
    outputs = {}
    for label, models in (("lora", lora), ("full", dense)):
        config = {"method": method, "base": str(tiny_models["base"]), "models": [str(m) for m in models],
                  "samples": str(tiny_models["samples"]), "output": str(tmp_path / f"out_{label}"),
                  "seed": 3, "parameters": {"num_typical": 4} if method == "recall" else {"density": 0.5}}
        outputs[label] = merge(config, quiet=True).output
    first, second = load_file(outputs["lora"] / "model.safetensors"), load_file(outputs["full"] / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        if method == "recall":
            # RECALL is linear in the models, so its LoRA form is merged from the adapters'
            # factors (io.lora.low_rank_combination): the same sum, rounded in another order
            assert first[name].dtype == second[name].dtype, name
            torch.testing.assert_close(first[name].float(), second[name].float(),
                                       rtol=1e-6, atol=1e-7, msg=name)
        else:
            assert first[name].equal(second[name]), name
    assert _report_without_run(outputs["lora"]) == _report_without_run(outputs["full"])


def test_dare_is_reproducible_for_a_seed_and_varies_across_seeds(tiny_models, tmp_path):
    results = []
    for run, seed in enumerate((5, 5, 6)):
        config = {"method": "dare_linear", "base": str(tiny_models["base"]),
                  "models": [str(tiny_models["e1"]), str(tiny_models["e2"])],
                  "output": str(tmp_path / f"out{run}"), "seed": seed, "parameters": {"density": 0.3}}
        results.append((merge(config, quiet=True).output / "model.safetensors").read_bytes())
    assert results[0] == results[1]
    assert results[0] != results[2]
