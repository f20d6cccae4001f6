"""TSV-M, Iso-C, Iso-CTS and the LiNeS ramp: properties of the tensor functions (hypothesis, small
shapes), option checks, and `recall merge` with each method on the tiny models (full and LoRA)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from recall_merge import merge
from recall_merge.cli import main as cli_main
from recall_merge.config import MergeConfig
from recall_merge.errors import ConfigError
from recall_merge.io.pool import tensor_position
from recall_merge.methods import ops, svd_ops
from recall_merge.methods.lines import auto_alpha
from recall_merge.methods.registry import available_methods, get_method

SVD_METHODS = ("tsv_m", "iso_c", "iso_cts")
FEW = settings(max_examples=15, deadline=None)


def _matrices(seed: int, count: int, rows: int, cols: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, cols, generator=generator) for _ in range(count)]


def _method(name: str, num_experts: int, parameters: dict | None = None, num_layers: int = 2):
    config = MergeConfig(method=name, base="/b", models=[f"/m{k}" for k in range(num_experts)],
                         output=Path("/o"), parameters=parameters or {})
    return get_method(name)(config.method_parameters(), config, num_layers)


shapes = st.tuples(st.integers(2, 9), st.integers(2, 9))
seeds = st.integers(0, 2**16)

# ---------------------------------------------------------------------------------------------
# Tensor functions


@FEW
@given(shape=shapes, seed=seeds)
def test_tsv_m_with_one_task_keeps_all_components(shape, seed) -> None:
    """T = 1 keeps ⌊r/1⌋ = r components: the whitening is a no-op and TSV-M returns τ itself."""
    (delta,) = _matrices(seed, 1, *shape)
    keep = svd_ops.tsv_kept_rank(min(shape), 1)
    assert keep == min(shape)
    assert torch.allclose(svd_ops.tsv_merge([delta], keep), delta, atol=1e-4)


@FEW
@given(shape=shapes, seed=seeds, count=st.integers(2, 4))
def test_tsv_m_rank_never_exceeds_the_kept_components(shape, seed, count) -> None:
    deltas = _matrices(seed, count, *shape)
    keep = svd_ops.tsv_kept_rank(min(shape), count)
    if keep == 0:
        return  # rank below T: the method merges the mean instead (checked below)
    merged = svd_ops.tsv_merge(deltas, keep)
    assert int(torch.linalg.matrix_rank(merged, atol=1e-4)) <= count * keep
    assert torch.isfinite(merged).all()


@FEW
@given(shape=shapes, seed=seeds, count=st.integers(1, 4))
def test_iso_c_delta_has_one_repeated_singular_value(shape, seed, count) -> None:
    """Iso-C's merged matrix is s̄·U Vᵀ: all its r singular values equal s̄ (a flat spectrum)."""
    deltas = _matrices(seed, count, *shape)
    merged = svd_ops.isotropic_merge(svd_ops.sum_task_vectors(deltas))
    values = torch.linalg.svdvals(merged.delta)
    assert merged.mean_singular_value > 0
    assert torch.allclose(values, torch.full_like(values, merged.mean_singular_value), rtol=1e-4, atol=1e-5)
    # the flattened value is the mean of Σ τ_k's spectrum
    expected = torch.linalg.svdvals(torch.stack(deltas).sum(0)).mean()
    assert merged.mean_singular_value == pytest.approx(float(expected), rel=1e-5)


def _lora_like(seed: int, count: int, shape: tuple[int, int], rank: int) -> list[torch.Tensor]:
    """SYNTHETIC low-rank task vectors B·A, as LoRA experts give."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape[0], rank, generator=generator)
            @ torch.randn(rank, shape[1], generator=generator) * 0.01 for _ in range(count)]


@FEW
@given(seed=seeds, count=st.integers(1, 4), rank=st.integers(1, 4))
def test_iso_c_on_low_rank_updates_flattens_only_their_subspace(seed, count, rank) -> None:
    """A sum of LoRA updates has rank ≤ T·r. By default Iso-C flattens the spectrum over that
    numerical rank (the merged delta keeps the sum's row and column spaces); ``full_spectrum``
    (FusionBench) gives s̄ to every one of min(m, n) directions, most of them rounding noise."""
    shape = (48, 40)
    deltas = _lora_like(seed, count, shape, rank)
    total = svd_ops.sum_task_vectors(deltas)
    true_rank = int(torch.linalg.matrix_rank(total))
    merged = svd_ops.isotropic_merge(total)
    values = torch.linalg.svdvals(merged.delta)
    assert int((values > 1e-4 * values[0]).sum()) == true_rank
    assert torch.allclose(values[:true_rank], torch.full((true_rank,), merged.mean_singular_value),
                          rtol=1e-4)
    assert merged.mean_singular_value == pytest.approx(
        float(torch.linalg.svdvals(total)[:true_rank].mean()), rel=1e-5)
    # the merged delta lies in the sum's column space
    u = torch.linalg.svd(total, full_matrices=False)[0][:, :true_rank]
    assert torch.allclose(u @ (u.T @ merged.delta), merged.delta, atol=1e-5)
    full = svd_ops.isotropic_merge(total, full_spectrum=True)
    assert int(torch.linalg.matrix_rank(full.delta)) == min(shape)  # noise directions filled
    cts = svd_ops.iso_cts_merge(deltas, 0.8)
    assert int(torch.linalg.matrix_rank(cts.delta, rtol=1e-4)) <= true_rank


@FEW
@given(shape=shapes, seed=seeds, count=st.integers(1, 4))
def test_iso_default_equals_fusionbench_spectrum_on_full_rank_sums(shape, seed, count) -> None:
    """On full-rank sums (full fine-tuning, the paper's setting) the numerical rank is min(m, n),
    so both spectra give the same merge."""
    total = svd_ops.sum_task_vectors(_matrices(seed, count, *shape))
    assert torch.equal(svd_ops.isotropic_merge(total).delta,
                       svd_ops.isotropic_merge(total, full_spectrum=True).delta)


@FEW
@given(shape=shapes, seed=seeds, fraction=st.sampled_from([0.0, 0.3, 0.8, 1.0]))
def test_iso_cts_with_one_task_is_iso_c(shape, seed, fraction) -> None:
    """With T = 1 the common and task subspaces together are all of τ's singular vectors."""
    (delta,) = _matrices(seed, 1, *shape)
    common, per_task = svd_ops.iso_cts_split(min(shape), 1, fraction)
    assert common + per_task == min(shape)
    cts = svd_ops.iso_cts_merge([delta], fraction, full_spectrum=True)
    assert (cts.common, cts.per_task) == (common, per_task)
    iso = svd_ops.isotropic_merge(delta)
    assert torch.allclose(cts.delta, iso.delta, atol=1e-4)


@FEW
@given(rank=st.integers(1, 64), tasks=st.integers(1, 8), fraction=st.floats(0, 1))
def test_iso_cts_split_covers_the_rank(rank, tasks, fraction) -> None:
    common, per_task = svd_ops.iso_cts_split(rank, tasks, fraction)
    assert common >= 0 and per_task >= 0
    assert common + tasks * per_task == rank


@FEW
@given(shape=shapes, seed=seeds, count=st.integers(2, 4), data=st.data())
def test_every_svd_method_is_invariant_to_the_order_of_the_experts(shape, seed, count, data) -> None:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator)
    experts = [base + torch.randn(shape, generator=generator) for _ in range(count)]
    weights = [0.5 + k for k in range(count)]
    order = data.draw(st.permutations(range(count)))
    name = "model.layers.0.self_attn.q_proj.weight"
    position = tensor_position(name, 2)
    for method in SVD_METHODS:
        parameters = {"weights": weights} if method == "tsv_m" else {}
        permuted = {"weights": [weights[k] for k in order]} if method == "tsv_m" else {}
        first = _method(method, count, parameters).merge_tensor(name, position, base.clone(), experts)
        second = _method(method, count, permuted).merge_tensor(
            name, position, base.clone(), [experts[k] for k in order])
        assert torch.allclose(first, second, atol=1e-4), method


def test_lazy_task_vectors_are_weighted_differences() -> None:
    base = torch.tensor([1.0, 2.0])
    deltas = svd_ops.LazyTaskVectors(base, [torch.tensor([2.0, 2.0]), torch.tensor([0.0, 5.0])], [2.0, 1.0])
    assert len(deltas) == 2
    assert torch.equal(deltas[0], torch.tensor([2.0, 0.0]))
    assert [d.tolist() for d in deltas] == [[2.0, 0.0], [-1.0, 3.0]]
    assert torch.equal(svd_ops.mean_task_vector(deltas), torch.tensor([0.5, 1.5]))
    assert torch.equal(base, torch.tensor([1.0, 2.0]))  # never written to


def test_tsv_m_with_fewer_directions_than_tasks_merges_the_mean() -> None:
    """A 2 × n matrix and 3 experts: ⌊2/3⌋ = 0 components each, so the mean of τ_k is used (and
    reported) rather than FusionBench's silent zero update."""
    base = torch.zeros(2, 5)
    experts = _matrices(3, 3, 2, 5)
    method = _method("tsv_m", 3)
    name = "model.layers.1.mlp.gate_proj.weight"
    merged = method.merge_tensor(name, tensor_position(name, 2), base, experts)
    assert torch.allclose(merged, torch.stack(experts).mean(0), atol=1e-6)
    assert method.chosen[name]["merged_as"] == "mean" and method.chosen[name]["kept_per_task"] == 0


# ---------------------------------------------------------------------------------------------
# LiNeS


def test_lines_scale_ramps_over_the_blocks() -> None:
    assert [ops.lines_scale(0.2, 0.6, "block", layer, 4) for layer in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    for kind in ("embedding", "norm", "head", "other"):
        assert ops.lines_scale(0.2, 0.6, kind, None, 4) == 0.2
    assert ops.lines_scale(0.2, 0.6, "block", 0, 1) == 0.2  # a single block gets alpha


def test_auto_alpha_is_the_norm_ratio_over_the_number_of_tasks() -> None:
    assert auto_alpha(6.0, 2.0, 3) == pytest.approx(1.0)
    assert auto_alpha(5.0, 0.0, 2) == pytest.approx(0.5)  # nothing merged: 1/T


def test_lines_scales_each_block_of_an_svd_merge(tiny_models, tmp_path) -> None:
    """θ_lines − θ_base = λ_ℓ (θ_plain − θ_base) with λ = α + β·ℓ/(L−1), α outside the blocks."""
    m = tiny_models
    common = {"method": "iso_c", "base": str(m["base"]), "models": [str(m["e1"]), str(m["e2"])]}
    plain = merge({**common, "output": str(tmp_path / "plain")}, quiet=True)
    ramped = merge({**common, "output": str(tmp_path / "lines"),
                    "parameters": {"lines": {"alpha": 0.5, "beta": 1.0}}}, quiet=True)
    base, one, two = _tensors(m["base"]), _tensors(plain.output), _tensors(ramped.output)
    for name, scale in (("model.layers.0.mlp.up_proj.weight", 0.5), ("model.layers.1.mlp.up_proj.weight", 1.5),
                        ("model.norm.weight", 0.5), ("model.embed_tokens.weight", 0.5)):
        assert torch.allclose(two[name] - base[name], scale * (one[name] - base[name]), atol=1e-5), name
    lines = ramped.report["applied"]["lines"]
    assert lines["block_scales"] == pytest.approx([0.5, 1.5]) and lines["outside_blocks_scale"] == 0.5
    assert ramped.report["layers"][1]["tensors"]["model.layers.1.mlp.up_proj.weight"]["scale"] == 1.5


def test_lines_auto_alpha_reads_the_norms_first(tiny_models, tmp_path) -> None:
    m = tiny_models
    result = merge({"method": "tsv_m", "base": str(m["base"]), "models": [str(m["e1"]), str(m["e2"])],
                    "output": str(tmp_path / "auto"), "parameters": {"lines": {"alpha": "auto", "beta": 0.5}}},
                   quiet=True)
    lines = result.report["applied"]["lines"]
    norms = lines["norms"]
    assert norms["sum_of_task_vectors_l1"] > 0 and norms["merged_task_vector_l1"] > 0
    expected = norms["sum_of_task_vectors_l1"] / norms["merged_task_vector_l1"] / 2
    assert lines["alpha"] == pytest.approx(expected) and lines["alpha_given"] == "auto"
    assert lines["block_scales"] == pytest.approx([expected, expected + 0.5])


# ---------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize(("method", "parameters", "words"), [
    ("iso_c", {"alpha": 1.2, "lines": {"alpha": 0.3, "beta": 1.0}}, "lines"),
    ("tsv_m", {"weights": [1.0]}, "weights"),
])
def test_conflicting_or_miscounted_options_are_config_errors(method, parameters, words) -> None:
    with pytest.raises(ConfigError) as error:
        _method(method, 2, parameters)
    assert words in error.value.problem and error.value.fix


@pytest.mark.parametrize(("method", "parameters"), [
    ("iso_cts", {"common_space_fraction": 1.5}),
    ("iso_c", {"lines": {"alpha": 0.3}}),
    ("iso_c", {"lines": {"alpha": "sometimes", "beta": 1.0}}),
    ("tsv_m", {"common_space_fraction": 0.5}),
])
def test_invalid_parameters_are_refused_when_the_config_is_read(method, parameters) -> None:
    config = MergeConfig(method=method, base="/b", models=["/x", "/y"], output=Path("/o"), parameters=parameters)
    with pytest.raises(ConfigError):
        config.method_parameters()


# ---------------------------------------------------------------------------------------------
# Through `recall merge`


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(Path(folder).glob("*.safetensors")) for k, v in load_file(f).items()}


def test_svd_methods_are_registered_with_a_summary(capsys) -> None:
    assert cli_main(["methods"]) == 0
    printed = capsys.readouterr().out
    for name in SVD_METHODS:
        assert name in available_methods()
        assert get_method(name).summary
        assert name in printed


@pytest.mark.parametrize("method", SVD_METHODS)
def test_recall_merge_with_each_svd_method(method, tiny_models, tmp_path) -> None:
    m = tiny_models
    output = tmp_path / method
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({
        "method": method, "base": str(m["base"]), "models": [str(m["e1"]), str(m["e2"]), str(m["e3"])],
        "output": str(output), "dtype": "float32"}))
    assert cli_main(["merge", str(config_path), "--quiet"]) == 0
    merged, base = _tensors(output), _tensors(m["base"])
    assert merged.keys() == base.keys()
    assert all(torch.isfinite(tensor).all() for tensor in merged.values())
    name = "model.layers.1.self_attn.q_proj.weight"
    assert not torch.equal(merged[name], base[name])
    report = json.loads((output / "recall_report.json").read_text())
    assert report["method"] == method and report["tensors_merged"] == len(base)
    record = report["layers"][1]["tensors"][name]
    assert record["merged_as"] == method and record["rank"] == min(base[name].shape) and record["scale"] == 1.0
    if method == "tsv_m":
        assert record["kept_per_task"] == record["rank"] // 3 and record["kept_total"] == 3 * record["kept_per_task"]
    else:
        assert record["mean_singular_value"] > 0
    if method == "iso_cts":
        assert record["common"] + 3 * record["per_task"] == record["rank"]
    norm = report["layers"][0]["tensors"]["model.layers.0.input_layernorm.weight"]
    assert norm["merged_as"] == "mean"
    assert "model.norm.weight" in report["outside_blocks"]["tensors"]


@pytest.mark.parametrize("method", SVD_METHODS)
def test_svd_methods_on_lora_experts(method, tiny_models, tiny_loras, tmp_path) -> None:
    """LoRA experts arrive as base + B·A (rebuilt by the engine); a matrix no adapter touches has
    τ_k = 0 for every k and stays the base."""
    m = tiny_models
    result = merge({"method": method, "base": str(m["base"]),
                    "models": [str(tiny_loras["l1"]), str(tiny_loras["l2"])],
                    "output": str(tmp_path / method)}, quiet=True)
    merged, base = _tensors(result.output), _tensors(m["base"])
    assert all(torch.isfinite(tensor).all() for tensor in merged.values())
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])
    assert result.report["model_kinds"] == ["base", "lora", "lora"]


def test_an_svd_that_does_not_converge_in_float32_is_redone_in_float64(monkeypatch) -> None:
    real_svd = torch.linalg.svd

    def flaky(matrix, full_matrices=True):
        if matrix.dtype == torch.float32:
            raise torch.linalg.LinAlgError("gesdd did not converge")
        return real_svd(matrix, full_matrices=full_matrices)

    monkeypatch.setattr(torch.linalg, "svd", flaky)
    (delta,) = _matrices(5, 1, 4, 6)
    u, s, vh = svd_ops.thin_svd(delta)
    assert u.dtype == s.dtype == vh.dtype == torch.float32
    assert torch.allclose((u * s) @ vh, delta, atol=1e-5)
