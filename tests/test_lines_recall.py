"""LiNeS' depth ramp on RECALL's task-vector variants (``parameters.lines``): each block of a
ramped merge is bit-equal to the same block of a plain merge whose ``scale`` is that block's ramp
value (RECALL's α come from the planning pass, which the ramp does not touch). Tiny random models
and SYNTHETIC samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recall_merge import merge
from recall_merge.config import MergeConfig
from recall_merge.errors import ConfigError
from recall_merge.methods.registry import get_method
from recall_merge.testing import make_tiny_llama, write_samples

NUM_LAYERS = 3
ALPHA, BETA = 0.4, 0.8
RAMP = [ALPHA, ALPHA + BETA / 2, ALPHA + BETA]


@pytest.fixture(scope="module")
def ramp_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lines_recall")
    base = make_tiny_llama(root / "base", seed=0, num_layers=NUM_LAYERS, hidden=32)
    models = {"base": base, "samples": write_samples(root / "samples.jsonl")}
    for k in (1, 2):
        models[f"e{k}"] = make_tiny_llama(root / f"e{k}", seed=200 + k, num_layers=NUM_LAYERS,
                                          hidden=32, tokenizer_from=base, perturb_from=base)
    return models


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(Path(folder).glob("*.safetensors")) for k, v in load_file(f).items()}


def _merge(models: dict[str, Path], output: Path, parameters: dict):
    return merge({"method": "recall", "base": str(models["base"]),
                  "models": [str(models["e1"]), str(models["e2"])], "samples": str(models["samples"]),
                  "output": str(output), "seed": 3,
                  "parameters": {"num_typical": 4, "max_length": 32, **parameters}}, quiet=True)


@pytest.mark.parametrize("variant", ["task_vector", "ties"])
def test_recall_lines_equals_scale_set_to_the_ramp_value_per_block(variant, ramp_models, tmp_path):
    ramped = _merge(ramp_models, tmp_path / "lines",
                    {"variant": variant, "lines": {"alpha": ALPHA, "beta": BETA}})
    per_scale = {scale: _tensors(_merge(ramp_models, tmp_path / f"scale{index}",
                                        {"variant": variant, "scale": scale}).output)
                 for index, scale in enumerate(RAMP)}
    merged = _tensors(ramped.output)
    for name, tensor in merged.items():
        block = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        plain = per_scale[ALPHA if block is None else RAMP[block]]
        assert torch.equal(tensor, plain[name]), name
    deep = "model.layers.2.mlp.down_proj.weight"
    assert not torch.equal(merged[deep], per_scale[ALPHA][deep])
    assert ramped.report["lines"]["block_scales"] == pytest.approx(RAMP)
    assert ramped.report["lines"]["outside_blocks_scale"] == ALPHA


def test_recall_lines_auto_alpha_is_resolved_and_reported(ramp_models, tmp_path):
    """alpha: auto reads the unscaled merged task vector once: α = (‖Σ τ_k‖₁ / ‖τ_merged‖₁) / T."""
    result = _merge(ramp_models, tmp_path / "auto",
                    {"variant": "task_vector", "lines": {"alpha": "auto", "beta": 0.0}})
    lines = result.report["lines"]
    norms = lines["norms"]
    assert norms["merged_task_vector_l1"] > 0
    assert lines["alpha"] == pytest.approx(
        norms["sum_of_task_vectors_l1"] / norms["merged_task_vector_l1"] / 2)
    assert lines["alpha_given"] == "auto"


def _method(parameters: dict):
    config = MergeConfig(method="recall", base="/b", models=["/x", "/y"], output=Path("/o"),
                         samples=Path("/s.jsonl"), parameters=parameters)
    return get_method("recall")(config.method_parameters(), config, NUM_LAYERS)


@pytest.mark.parametrize(("parameters", "words"), [
    ({"lines": {"alpha": ALPHA, "beta": BETA}}, ("variant paper", "task_vector")),
    ({"variant": "task_vector", "scale": 0.5, "lines": {"alpha": ALPHA, "beta": BETA}},
     ("scale", "lines.alpha")),
    ({"variant": "ties", "lines": {"alpha": 2e3, "beta": 0.0}}, ("1000", "between")),
])
def test_recall_lines_refusals(parameters, words, monkeypatch):
    monkeypatch.setattr("recall_merge.recall.method.check_samples_file", lambda path: None)
    with pytest.raises(ConfigError) as error:
        _method(parameters)
    message = error.value.problem + " " + error.value.fix
    assert all(word in message for word in words), message


@pytest.mark.parametrize("variant", ["tsv_m", "iso_c"])
def test_recall_svd_variant_with_uniform_weights_is_that_method(variant, ramp_models, tmp_path):
    """RECALL's tsv_m / iso_c variants put RECALL's per-layer weights N·ᾱ_k on the task vectors
    inside TSV-M / Iso-C. A huge temperature makes α uniform (to ~1e-9), so the merge must equal
    the plain method at α = scale; a tiny one moves it away."""
    recall = _tensors(_merge(ramp_models, tmp_path / "recall",
                             {"variant": variant, "scale": 0.7, "temperature": 1e9}).output)
    plain = _tensors(merge({"method": variant, "base": str(ramp_models["base"]),
                            "models": [str(ramp_models["e1"]), str(ramp_models["e2"])],
                            "output": str(tmp_path / "plain"), "seed": 3,
                            "parameters": {"alpha": 0.7}}, quiet=True).output)
    assert recall.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(recall[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
    skewed = _tensors(_merge(ramp_models, tmp_path / "skewed",
                             {"variant": variant, "scale": 0.7, "temperature": 1e-3}).output)
    deep = "model.layers.2.mlp.down_proj.weight"
    assert not torch.allclose(skewed[deep], plain[deep], rtol=1e-4, atol=1e-6)
