"""The classic methods through the engine: MagMax (not in mergekit), option checks, the report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recall_merge import merge
from recall_merge.config import MergeConfig
from recall_merge.errors import ConfigError
from recall_merge.methods import ops
from recall_merge.methods.registry import available_methods, get_method


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(Path(folder).glob("*.safetensors")) for k, v in load_file(f).items()}


def test_all_classic_methods_registered() -> None:
    for name in ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
                 "breadcrumbs_ties", "magmax"):
        assert name in available_methods()


def test_magmax_through_the_engine(tiny_models, tmp_path) -> None:
    m = tiny_models
    config = {"method": "magmax", "base": str(m["base"]), "models": [str(m["e1"]), str(m["e2"])],
              "output": str(tmp_path / "out"), "parameters": {"lambda": 0.5, "weights": [1.0, 2.0]}}
    result = merge(config, overwrite=True, quiet=True)
    out, base = _tensors(result.output), _tensors(m["base"])
    experts = [_tensors(m["e1"]), _tensors(m["e2"])]
    for name in ("model.layers.1.self_attn.q_proj.weight", "lm_head.weight"):
        deltas = torch.stack([experts[0][name] - base[name], 2.0 * (experts[1][name] - base[name])])
        expected = base[name] + 0.5 * ops.magmax(deltas)
        assert (out[name] - expected).abs().max() <= 1e-6
    assert result.report["applied"]["lambda"] == 0.5


def test_lora_experts_zero_delta_outside_targets(tiny_models, tiny_loras, tmp_path) -> None:
    """Tensors a LoRA does not touch come out equal to the base for every task-vector method."""
    m = tiny_models
    base = _tensors(m["base"])
    for method in ("task_arithmetic", "ties", "dare_ties", "breadcrumbs", "magmax"):
        parameters = {} if method in ("task_arithmetic", "magmax") else {"density": 0.5}
        config = {"method": method, "base": str(m["base"]), "models": [str(tiny_loras["l1"]), str(tiny_loras["l2"])],
                  "output": str(tmp_path / method), "parameters": parameters}
        out = _tensors(merge(config, overwrite=True, quiet=True).output)
        assert torch.equal(out["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
        assert not torch.equal(out["model.layers.0.self_attn.q_proj.weight"],
                               base["model.layers.0.self_attn.q_proj.weight"])


def test_wrong_number_of_weights_is_a_config_error() -> None:
    config = MergeConfig(method="ties", base="/b", models=["/x", "/y"], output=Path("/o"),
                         parameters={"weights": [1.0]})
    with pytest.raises(ConfigError) as error:
        get_method("ties")(config.method_parameters(), config, 2)
    assert "weights" in error.value.problem and error.value.fix


@pytest.mark.parametrize("parameters", [{"density": 0.0}, {"density": [0.5, 1.5]}, {"gamma": 1.0},
                                        {"rescale_norm": "l3"}, {"dencity": 0.5}])
def test_bad_parameters_are_refused(parameters) -> None:
    config = MergeConfig(method="ties", base="/b", models=["/x", "/y"], output=Path("/o"), parameters=parameters)
    with pytest.raises(ConfigError):
        config.method_parameters()


def test_report_lists_per_layer_weights(tiny_models, tmp_path) -> None:
    m = tiny_models
    config = {"method": "linear", "base": str(m["base"]), "models": [str(m["e1"]), str(m["e2"])],
              "output": str(tmp_path / "out"),
              "parameters": {"weights": [[1.0, 3.0], 1.0], "include_base": True, "base_weight": 0.5}}
    report = merge(config, overwrite=True, quiet=True).report
    assert [layer["weights"] for layer in report["layers"]] == [[1.0, 1.0], [3.0, 1.0]]
    assert [layer["base_weight"] for layer in report["layers"]] == [0.5, 0.5]
    assert report["applied"]["normalize"] is True and report["applied"]["include_base"] is True
    assert report["tensors_merged"] > 0
