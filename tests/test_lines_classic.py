"""LiNeS' depth ramp on the classic task-vector methods (``parameters.lines``).

The ramp replaces ``lambda``: block ℓ of L gets λ_ℓ = α + β·ℓ/(L − 1), every tensor outside the
blocks gets α. The models have three blocks, so the middle block gets a value strictly between
the ends.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from recall_merge import merge
from recall_merge.cli import main as cli_main
from recall_merge.config import MergeConfig
from recall_merge.errors import ConfigError
from recall_merge.methods.lines import LinesScaling
from recall_merge.methods.registry import get_method
from recall_merge.testing import make_tiny_llama

NUM_LAYERS = 3
ALPHA, BETA = 0.4, 0.8
RAMP = [ALPHA, ALPHA + BETA / 2, ALPHA + BETA]  # λ per block
TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
                       "breadcrumbs_ties", "magmax")


@pytest.fixture(scope="module")
def ramp_models(tmp_path_factory) -> dict[str, Path]:
    """A base and two experts (base + seeded noise) with three blocks."""
    root = tmp_path_factory.mktemp("lines_classic")
    base = make_tiny_llama(root / "base", seed=0, num_layers=NUM_LAYERS, hidden=32)
    models = {"base": base}
    for k in (1, 2):
        models[f"e{k}"] = make_tiny_llama(root / f"e{k}", seed=100 + k, num_layers=NUM_LAYERS, hidden=32,
                                          tokenizer_from=base, perturb_from=base)
    return models


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(Path(folder).glob("*.safetensors")) for k, v in load_file(f).items()}


def _config(models: dict[str, Path], method: str, output: Path, parameters: dict) -> dict:
    return {"method": method, "base": str(models["base"]), "models": [str(models["e1"]), str(models["e2"])],
            "output": str(output), "seed": 3, "parameters": parameters}


def _block_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if name.startswith("model.layers.") else None


def _method(name: str, parameters: dict) -> object:
    config = MergeConfig(method=name, base="/b", models=["/x", "/y"], output=Path("/o"), parameters=parameters)
    return get_method(name)(config.method_parameters(), config, NUM_LAYERS)


def test_task_arithmetic_with_lines_is_the_ramp_times_the_weighted_sum(ramp_models, tmp_path) -> None:
    """θ_ℓ = θ_base + (α + β·ℓ/(L − 1))·Σ_k w_k τ_k, to the bit; α outside the blocks. A tiny
    block_size makes the engine hand the method row blocks, which must get their tensor's scale."""
    weights = [1.0, 0.5]
    config = _config(ramp_models, "task_arithmetic", tmp_path / "out",
                     {"weights": weights, "lines": {"alpha": ALPHA, "beta": BETA}})
    result = merge({**config, "block_size": "4KB"}, quiet=True)
    out, base = _tensors(result.output), _tensors(ramp_models["base"])
    experts = [_tensors(ramp_models["e1"]), _tensors(ramp_models["e2"])]
    seen = set()
    for name, merged in out.items():
        block = _block_of(name)
        scale = ALPHA if block is None else RAMP[block]
        summed = weights[0] * (experts[0][name] - base[name]) + weights[1] * (experts[1][name] - base[name])
        assert torch.equal(merged, base[name] + summed * scale), name
        seen.add(block)
    assert seen == {None, 0, 1, 2}
    applied = result.report["applied"]
    assert applied["lambda"] is None  # not applied: the ramp replaces it
    assert applied["lines"]["block_scales"] == pytest.approx(RAMP)
    assert applied["lines"]["outside_blocks_scale"] == ALPHA and applied["lines"]["alpha_given"] == ALPHA


@pytest.mark.parametrize("method", TASK_VECTOR_METHODS)
def test_lines_equals_lambda_set_to_the_ramp_value_per_block(method, ramp_models, tmp_path) -> None:
    """Each block of a LiNeS merge is bit-equal to the same block of a plain merge whose lambda is
    that block's ramp value (TIES and DARE included: the scale comes after the trim, the sign
    election and the normalisation; DARE's masks depend on the seed and the tensor name only)."""
    parameters = {} if method in ("task_arithmetic", "magmax") else {"density": 0.5}
    ramped = _tensors(merge(_config(ramp_models, method, tmp_path / "lines",
                                    {**parameters, "lines": {"alpha": ALPHA, "beta": BETA}}), quiet=True).output)
    per_scale = {scale: _tensors(merge(_config(ramp_models, method, tmp_path / f"lambda{index}",
                                               {**parameters, "lambda": scale}), quiet=True).output)
                 for index, scale in enumerate(RAMP)}
    base = _tensors(ramp_models["base"])
    for name, merged in ramped.items():
        block = _block_of(name)
        plain = per_scale[ALPHA if block is None else RAMP[block]]
        assert torch.equal(merged, plain[name]), name
    # The ramp does change the model: the deepest block differs from a merge at lambda = alpha.
    deep = "model.layers.2.mlp.down_proj.weight"
    assert not torch.equal(ramped[deep], per_scale[ALPHA][deep]) and not torch.equal(ramped[deep], base[deep])


def test_auto_alpha_of_task_arithmetic_is_one_over_the_number_of_tasks(ramp_models, tmp_path) -> None:
    """For a plain sum of task vectors ‖Σ τ_k‖₁ / ‖τ_merged‖₁ = 1, so α = 1/T."""
    result = merge(_config(ramp_models, "task_arithmetic", tmp_path / "auto",
                           {"lines": {"alpha": "auto", "beta": BETA}}), quiet=True)
    lines = result.report["applied"]["lines"]
    assert lines["alpha_given"] == "auto" and lines["alpha"] == pytest.approx(0.5, rel=1e-5)
    assert lines["norms"]["merged_task_vector_l1"] == pytest.approx(lines["norms"]["sum_of_task_vectors_l1"],
                                                                    rel=1e-5)
    assert lines["block_scales"] == pytest.approx([lines["alpha"] + BETA * ell / 2 for ell in range(3)])
    # The planning pass merges nothing: only the streaming pass counts.
    assert result.report["tensors_merged"] == len(_tensors(result.output))


def test_auto_alpha_of_ties_is_reported_and_applied(ramp_models, tmp_path) -> None:
    """TIES trims, so ‖τ_merged‖₁ < ‖Σ τ_k‖₁ and α > 1/T; the merge equals one with that α given."""
    auto = merge(_config(ramp_models, "ties", tmp_path / "auto",
                         {"density": 0.3, "lines": {"alpha": "auto", "beta": BETA}}), quiet=True)
    lines = auto.report["applied"]["lines"]
    norms = lines["norms"]
    assert norms["merged_task_vector_l1"] > 0
    expected = norms["sum_of_task_vectors_l1"] / norms["merged_task_vector_l1"] / 2
    assert lines["alpha"] == pytest.approx(expected) and lines["alpha"] > 0.5
    given = merge(_config(ramp_models, "ties", tmp_path / "given",
                          {"density": 0.3, "lines": {"alpha": lines["alpha"], "beta": BETA}}), quiet=True)
    one, two = _tensors(auto.output), _tensors(given.output)
    assert all(torch.equal(one[name], two[name]) for name in one)


def test_without_lines_nothing_changes_in_the_scale(ramp_models, tmp_path) -> None:
    """No `lines`: lambda is applied and reported as before, and lines is reported as absent."""
    result = merge(_config(ramp_models, "ties", tmp_path / "plain", {"density": 0.5, "lambda": 0.7}), quiet=True)
    assert result.report["applied"]["lambda"] == 0.7 and result.report["applied"]["lines"] is None


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "magmax"])
def test_lines_and_lambda_together_are_refused(method) -> None:
    with pytest.raises(ConfigError) as error:
        _method(method, {"lambda": 1.0, "lines": {"alpha": ALPHA, "beta": BETA}})
    assert "lambda" in error.value.problem and "lines" in error.value.problem
    assert "lines.alpha" in error.value.fix


def test_lines_on_linear_is_refused() -> None:
    with pytest.raises(ConfigError) as error:
        _method("linear", {"lines": {"alpha": ALPHA, "beta": BETA}})
    assert "linear" in error.value.problem and "task-vector" in error.value.problem
    assert "task_arithmetic" in error.value.fix


@pytest.mark.parametrize("lines", [{"alpha": 1e6, "beta": 0.0}, {"alpha": 0.5, "beta": -2e3}])
def test_lines_scales_beyond_lambdas_range_are_refused(lines) -> None:
    with pytest.raises(ConfigError) as error:
        _method("task_arithmetic", {"lines": lines})
    assert "1000" in error.value.problem


def test_every_task_vector_method_takes_lines() -> None:
    for method in TASK_VECTOR_METHODS:
        built = _method(method, {"lines": {"alpha": ALPHA, "beta": BETA}})
        assert isinstance(built, LinesScaling) and built.lines is not None, method


def test_emit_mergekit_with_lines_is_refused_before_any_weight_is_read(ramp_models, tmp_path, capsys,
                                                                        monkeypatch) -> None:
    """Exit 2 with the reason; the planning pass (alpha: auto reads every tensor) never starts and
    neither the model nor the YAML is written."""

    def no_planning_pass(*args: object, **kwargs: object) -> None:
        raise AssertionError("the planning pass ran before the export was refused")

    monkeypatch.setattr(LinesScaling, "resolve_lines_alpha", no_planning_pass)
    config = _config(ramp_models, "ties", tmp_path / "out", {"density": 0.5, "lines": {"alpha": "auto", "beta": BETA}})
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    emitted = tmp_path / "mergekit.yaml"
    assert cli_main(["merge", str(path), "--quiet", "--emit-mergekit", str(emitted)]) == 2
    stderr = capsys.readouterr().err
    assert "lines" in stderr and "mergekit" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists() and not emitted.exists()
