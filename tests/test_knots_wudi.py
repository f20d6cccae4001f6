"""KnOTS and WUDI-merging: against FusionBench 0.2.33's own functions (read out of its wheel, as in
test_vs_fusionbench.py), properties of the tensor functions (hypothesis, small shapes), and
`recall merge` with each method on the tiny LoRA and full experts, bad options included.

FusionBench's KnOTS file holds only the alignment (``subspace_alignment``: the joint SVD); the
merge of the aligned factors is checked here by building it from FusionBench's factors. Its WUDI
function is the whole method, run here with the same 300 Adam steps on the same float32 tensors:
the two compute the same gradient in different forms (autograd through T m × m products here vs
a closed form there), so they agree to rounding, ≤ 1e-7 measured, checked at ≤ 1e-5.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from test_vs_fusionbench import _load_from_wheel

from recall_merge import merge
from recall_merge.cli import main as cli_main
from recall_merge.config import MergeConfig
from recall_merge.errors import ConfigError
from recall_merge.io.pool import tensor_position
from recall_merge.methods import knots, ops, wudi
from recall_merge.methods.registry import get_method

KNOTS_FILE = "fusion_bench/method/knots/knots_utils.py"
WUDI_FILE = "fusion_bench/method/wudi/wudi.py"
TOLERANCE = 1e-5
NUM_LAYERS = 2
FEW = settings(max_examples=15, deadline=None)
MATRIX = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def knots_utils():
    return _load_from_wheel(KNOTS_FILE)


@pytest.fixture(scope="module")
def wudi_module():
    # wudi.py also imports FusionBench's algorithm base classes and state-dict helpers, which
    # only its WUDIMerging class uses; the function compared here needs none of them.
    return _load_from_wheel(WUDI_FILE, more_stubs={
        "fusion_bench": {"BaseAlgorithm": object, "BaseModelPool": object,
                         "auto_register_config": lambda cls: cls},
        "fusion_bench.mixins": {"LightningFabricMixin": type("LightningFabricMixin", (), {})},
        "fusion_bench.utils.state_dict_arithmetic": {"state_dict_add": None, "state_dict_sub": None},
    })


def _method(name: str, num_experts: int, parameters: dict[str, Any] | None = None):
    config = MergeConfig(method=name, base="/b", models=[f"/m{k}" for k in range(num_experts)],
                         output=Path("/o"), parameters=parameters or {})
    return get_method(name)(config.method_parameters(), config, NUM_LAYERS)


def _merge_all(method, base: dict[str, torch.Tensor], experts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: method.merge_tensor(name, tensor_position(name, NUM_LAYERS), tensor.clone(),
                                      [expert[name].clone() for expert in experts])
            for name, tensor in base.items()}


def _low_rank(seed: int, count: int, rows: int, cols: int, rank: int, scale: float = 0.05
              ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(rows, rank, generator=generator), scale * torch.randn(rank, cols, generator=generator))
            for _ in range(count)]


def _products(factors: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    return [(left.double() @ right.double()).float() for left, right in factors]


def _per_task(joint: knots.JointSvd) -> torch.Tensor:
    """U S V_kᵀ for each task: what the alignment says each update is, free of SVD signs."""
    return torch.stack([(joint.u * joint.s) @ vh for vh in joint.vhs])


# ---------------------------------------------------------------------------------------------
# KnOTS against FusionBench's subspace_alignment


@pytest.mark.parametrize(("rows", "cols", "rank", "count"), [(12, 12, 2, 2), (30, 12, 3, 3), (12, 30, 4, 3),
                                                             (10, 8, 4, 3), (40, 24, 8, 4)])
def test_joint_svd_matches_fusionbench_on_both_routes(knots_utils, rows, cols, rank, count) -> None:
    """FusionBench's U, S, V_k (float64 SVD of the concatenation, S > eps kept) against ours from
    the dense updates and from the LoRA factors: the same joint rank and spectrum, the same
    per-task U S V_kᵀ."""
    factors = _low_rank(rows + cols + rank, count, rows, cols, rank)
    deltas = _products(factors)
    u, s, vhs = knots_utils.subspace_alignment(deltas)  # eps 1e-4, its default
    reference = torch.stack([(u * s) @ vh for vh in vhs])
    for joint in (knots.joint_svd_dense(deltas, eps=1e-4), knots.joint_svd_factors(factors, (rows, cols), eps=1e-4)):
        assert joint.rank == s.numel() == min(rows, count * rank, count * cols)
        assert (joint.s - s).abs().max() <= TOLERANCE
        assert (_per_task(joint) - reference).abs().max() <= TOLERANCE


@pytest.mark.parametrize("merge_kind", ["ties", "dare", "linear"])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_knots_merge_matches_one_built_from_fusionbench_alignment(knots_utils, merge_kind, count) -> None:
    """The whole method on full (dense) experts against base + λ·U·merge(S·V_kᵀ) with U, S, V_k from
    FusionBench (its signs may differ from ours: the merge must not care)."""
    generator = torch.Generator().manual_seed(count)
    shapes = {MATRIX: (12, 16), "model.layers.1.mlp.down_proj.weight": (16, 30),
              "model.layers.0.input_layernorm.weight": (12,), "lm_head.weight": (20, 12)}
    base = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    experts = [{name: tensor + 0.05 * torch.randn(tensor.shape, generator=generator) for name, tensor in base.items()}
               for _ in range(count)]
    parameters: dict[str, Any] = {"merge": merge_kind, "lambda": 0.7, "eps": 1e-4}
    if merge_kind != "linear":
        parameters["density"] = 0.4
    method = _method("knots", count, parameters)
    ours = _merge_all(method, base, experts)
    seed = method.config.seed
    for name, tensor in base.items():
        deltas = [expert[name] - tensor for expert in experts]
        dare = (torch.Generator().manual_seed(knots.dare_seed(seed, name)) if merge_kind == "dare" else None)
        if tensor.dim() == 2:
            u, s, vhs = knots_utils.subspace_alignment(deltas)
            merged = u @ knots.merge_aligned([s[:, None] * vh for vh in vhs], merge_kind, 0.4, dare)
        else:
            merged = knots.merge_aligned(deltas, merge_kind, 0.4, dare)
        difference = (ours[name] - (tensor + 0.7 * merged)).abs().max().item()
        assert difference <= TOLERANCE, f"{name}: max |Δ| = {difference:.2e}"
        if tensor.dim() == 2:
            assert method.records.chosen[name]["route"] == "dense"
            assert method.records.chosen[name]["joint_rank"] == s.numel()


def test_factor_route_equals_dense_route_after_the_merge() -> None:
    """The measured check behind the factor route (methods/knots.py): same merged matrix, for
    every merge, on shapes with a summed rank below and at the rank bound."""
    worst = 0.0
    for rows, cols, rank, count in [(64, 64, 4, 2), (30, 50, 3, 3), (10, 8, 4, 3), (96, 48, 16, 3)]:
        factors = _low_rank(rows * count, count, rows, cols, rank)
        dense = knots.joint_svd_dense(_products(factors))
        low = knots.joint_svd_factors(factors, (rows, cols))
        assert dense.rank == low.rank
        assert (_per_task(dense) - _per_task(low)).abs().max() <= 1e-7
        for merge_kind, density in (("ties", 0.3), ("ties", 1.0), ("dare", 0.5), ("linear", 1.0)):
            one, two = (knots.knots_delta(joint, merge_kind, density, torch.Generator().manual_seed(5))
                        for joint in (dense, low))
            worst = max(worst, (one - two).abs().max().item())
    assert worst <= 1e-6


def test_an_expert_that_leaves_a_matrix_alone_has_zero_factors() -> None:
    (pair,) = _low_rank(1, 1, 9, 7, 2)
    joint = knots.joint_svd_factors([None, pair], (9, 7))
    assert joint.rank == 2 and torch.equal(joint.vhs[0], torch.zeros(2, 7))
    assert torch.allclose(_per_task(joint)[1], _products([pair])[0], atol=1e-7)
    nothing = knots.joint_svd_factors([None, None], (9, 7))
    assert nothing.rank == 0
    assert torch.equal(knots.knots_delta(nothing, "ties"), torch.zeros(9, 7))


# ---------------------------------------------------------------------------------------------
# KnOTS properties

shapes = st.tuples(st.integers(2, 9), st.integers(2, 9))
seeds = st.integers(0, 2**16)


@FEW
@given(shape=shapes, seed=seeds, rank=st.integers(1, 3))
def test_knots_with_one_expert_and_a_linear_merge_returns_that_update(shape, seed, rank) -> None:
    """T = 1, merge linear, λ = 1: U S V_1ᵀ is ΔW itself, from the dense update or its factors."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator)
    factors = _low_rank(seed, 1, *shape, rank)
    (delta,) = _products(factors)
    method = _method("knots", 1, {"merge": "linear", "lambda": 1.0})
    merged = method.merge_tensor(MATRIX, tensor_position(MATRIX, NUM_LAYERS), base.clone(), [base + delta])
    assert torch.allclose(merged, base + delta, atol=1e-5)
    low = knots.knots_delta(knots.joint_svd_factors(factors, shape), "linear")
    assert torch.allclose(low, delta, atol=1e-6)


@FEW
@given(shape=shapes, seed=seeds, count=st.integers(2, 4))
def test_knots_linear_is_task_arithmetic(shape, seed, count) -> None:
    """The sum of the aligned factors is U S Σ_k V_kᵀ = Σ_k ΔW_k: task arithmetic at the same λ."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator)
    experts = [base + 0.1 * torch.randn(shape, generator=generator) for _ in range(count)]
    position = tensor_position(MATRIX, NUM_LAYERS)
    ours = _method("knots", count, {"merge": "linear", "lambda": 0.6}).merge_tensor(MATRIX, position, base.clone(), experts)
    reference = _method("task_arithmetic", count, {"lambda": 0.6}).merge_tensor(MATRIX, position, base.clone(), experts)
    assert torch.allclose(ours, reference, atol=1e-5)


@FEW
@given(shape=shapes, seed=seeds, count=st.integers(2, 4), data=st.data())
def test_knots_ties_and_linear_are_invariant_to_the_order_of_the_experts(shape, seed, count, data) -> None:
    """TIES and the sum treat the tasks symmetrically (DARE draws a mask per position in the list,
    so it is not); a permuted concatenation has the same U and S and permuted V_k."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator)
    experts = [base + torch.randn(shape, generator=generator) for _ in range(count)]
    order = data.draw(st.permutations(range(count)))
    position = tensor_position(MATRIX, NUM_LAYERS)
    for parameters in ({"merge": "ties", "density": 0.5}, {"merge": "ties"}, {"merge": "linear"}):
        first = _method("knots", count, parameters).merge_tensor(MATRIX, position, base.clone(), experts)
        second = _method("knots", count, parameters).merge_tensor(
            MATRIX, position, base.clone(), [experts[k] for k in order])
        assert torch.allclose(first, second, atol=1e-5), parameters


def test_knots_dare_is_seeded_per_tensor_and_run() -> None:
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(8, 6, generator=generator)
    experts = [base + torch.randn(8, 6, generator=generator) for _ in range(3)]
    position = tensor_position(MATRIX, NUM_LAYERS)

    def run(seed: int) -> torch.Tensor:
        config = MergeConfig(method="knots", base="/b", models=["/a", "/b", "/c"], output=Path("/o"),
                             seed=seed, parameters={"merge": "dare", "density": 0.5})
        return knots.Knots(config.method_parameters(), config, NUM_LAYERS).merge_tensor(
            MATRIX, position, base.clone(), experts)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_knots_defaults_follow_the_official_llama_configs() -> None:
    ties, dare, linear = (_method("knots", 2, {"merge": kind}) for kind in ("ties", "dare", "linear"))
    assert (ties.density, ties.scale) == (1.0, 0.5)
    assert (dare.density, dare.scale) == (0.2, 0.4)
    assert linear.scale == 1.0 and linear.report()["applied"]["density"] is None


# ---------------------------------------------------------------------------------------------
# WUDI against FusionBench's wudi_merging


def _wudi_state_dicts(num_experts: int, seed: int) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (30, 8),
        MATRIX: (12, 12),
        "model.layers.0.self_attn.q_proj.bias": (12,),
        "model.layers.0.mlp.up_proj.weight": (20, 12),     # tall: gram form
        "model.layers.1.mlp.down_proj.weight": (4, 40),    # wide: stacked form while 40 > 2·T·4
        "model.layers.1.post_attention_layernorm.weight": (12,),
        "lm_head.weight": (30, 8),                         # excluded below
    }
    base = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    experts = [{name: tensor + 0.05 * torch.randn(tensor.shape, generator=generator) for name, tensor in base.items()}
               for _ in range(num_experts)]
    return base, experts


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_wudi_matches_fusionbench(wudi_module, count) -> None:
    base, experts = _wudi_state_dicts(count, seed=60 + count)
    task_vectors = [{name: expert[name] - base[name] for name in base} for expert in experts]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress lines
        merged = wudi_module.wudi_merging(task_vectors, accelerator="cpu", exclude_keys=["lm_head.weight"])
    method = _method("wudi", count, {"exclude": ["lm_head.*"]})
    ours = _merge_all(method, base, experts)
    for name, tensor in base.items():
        difference = (ours[name] - (tensor + merged[name].detach())).abs().max().item()
        assert difference <= TOLERANCE, f"{name}: max |Δ| = {difference:.2e}"
    records = method.records.chosen
    assert records["model.layers.0.mlp.up_proj.weight"]["gradient_form"] == "gram"
    assert records["model.layers.1.mlp.down_proj.weight"]["gradient_form"] == (
        wudi.gradient_form(4, 40, count))
    assert records["lm_head.weight"]["merged_as"] == records[
        "model.layers.1.post_attention_layernorm.weight"]["merged_as"] == "mean"


# ---------------------------------------------------------------------------------------------
# WUDI properties

wudi_shapes = st.tuples(st.integers(1, 6), st.integers(1, 30))


@FEW
@given(shape=wudi_shapes, seed=seeds)
def test_wudi_with_one_expert_returns_its_task_vector(shape, seed) -> None:
    """With T = 1 the objective ‖(τ_m − τ)τᵀ‖²/‖τ‖² is 0 at τ_m = τ, the initialisation: the gradient
    is exactly 0 in both forms, Adam does not move, and the merge is θ_base + τ."""
    generator = torch.Generator().manual_seed(seed)
    delta = torch.randn(shape, generator=generator)
    result = wudi.wudi_merge([delta], iterations=50)
    assert torch.equal(result.delta, delta)
    assert result.loss_initial == pytest.approx(0.0, abs=1e-9)


@FEW
@given(shape=wudi_shapes, seed=seeds, count=st.integers(2, 4), data=st.data())
def test_wudi_is_invariant_to_the_order_of_the_experts(shape, seed, count, data) -> None:
    generator = torch.Generator().manual_seed(seed)
    deltas = [torch.randn(shape, generator=generator) for _ in range(count)]
    order = data.draw(st.permutations(range(count)))
    first = wudi.wudi_merge(deltas, iterations=30).delta
    second = wudi.wudi_merge([deltas[k] for k in order], iterations=30).delta
    assert torch.allclose(first, second, atol=1e-6)


@FEW
@given(shape=st.tuples(st.integers(2, 8), st.integers(2, 20)), seed=seeds, count=st.integers(2, 4))
def test_wudi_steps_lower_its_objective(shape, seed, count) -> None:
    generator = torch.Generator().manual_seed(seed)
    deltas = [0.05 * torch.randn(shape, generator=generator) for _ in range(count)]
    result = wudi.wudi_merge(deltas, iterations=100, learning_rate=1e-4)
    assert result.loss_final < result.loss_initial
    assert result.loss_initial == pytest.approx(wudi.wudi_loss(sum(deltas), deltas), rel=1e-6)


def test_wudi_leaves_out_a_task_vector_of_zero_norm() -> None:
    """FusionBench divides 0 by 0 there (NaN); here the zero task adds nothing to the objective."""
    delta = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    result = wudi.wudi_merge([torch.zeros(5, 7), delta, torch.zeros(5, 7)])
    assert result.tasks_used == 1 and torch.equal(result.delta, delta)
    nothing = wudi.wudi_merge([torch.zeros(3, 4)] * 2)
    assert nothing.tasks_used == 0 and torch.equal(nothing.delta, torch.zeros(3, 4))


def test_wudi_gradient_forms_agree() -> None:
    """The gram and stacked forms are the same gradient: forcing either gives the same merge."""
    deltas = [torch.randn(6, 10, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    results = []
    for form in ("gram", "stacked"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(wudi, "gradient_form", lambda rows, cols, tasks, form=form: form)
            results.append(wudi.wudi_merge(deltas, iterations=40))
    assert [r.form for r in results] == ["gram", "stacked"]
    assert torch.allclose(results[0].delta, results[1].delta, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Through `recall merge`


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(Path(folder).glob("*.safetensors")) for k, v in load_file(f).items()}


def _run_cli(config: dict[str, Any], tmp_path: Path) -> int:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return cli_main(["merge", str(path), "--quiet"])


def test_knots_merges_lora_experts_through_the_cli_from_their_factors(tiny_models, tiny_loras, tmp_path) -> None:
    """Two rank-4 adapters on q_proj and v_proj (64 × 64): the factor route, joint rank 8 per
    adapted matrix, 0 for the matrices no adapter touches (left as the base). With merge linear
    and λ = 1 the result is task arithmetic's."""
    models = [str(tiny_loras["l1"]), str(tiny_loras["l2"])]
    common = {"base": str(tiny_models["base"]), "models": models, "dtype": "float32"}
    output = tmp_path / "knots"
    assert _run_cli({**common, "method": "knots", "output": str(output),
                     "parameters": {"merge": "linear", "lambda": 1.0}}, tmp_path) == 0
    report = json.loads((output / "recall_report.json").read_text())
    assert report["method"] == "knots" and report["model_kinds"] == ["base", "lora", "lora"]
    for layer in report["layers"]:
        for name, record in layer["tensors"].items():
            if name.endswith(("q_proj.weight", "v_proj.weight")):
                assert (record["route"], record["joint_rank"], record["rank_bound"]) == ("factors", 8, 8), name
            elif name.endswith("proj.weight"):
                assert (record["route"], record["joint_rank"]) == ("factors", 0), name
    merged, base = _tensors(output), _tensors(tiny_models["base"])
    reference = merge({**common, "method": "task_arithmetic", "output": str(tmp_path / "ta")}, quiet=True)
    expected = _tensors(reference.output)
    assert merged.keys() == base.keys()
    for name in base:
        assert torch.allclose(merged[name], expected[name], atol=1e-5), name
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(merged[MATRIX], base[MATRIX])


def test_knots_ties_on_full_experts_takes_the_dense_route(tiny_models, tmp_path) -> None:
    m = tiny_models
    result = merge({"method": "knots", "base": str(m["base"]), "models": [str(m["e1"]), str(m["e2"])],
                    "output": str(tmp_path / "out"), "parameters": {"density": 0.3}}, quiet=True)
    record = result.report["layers"][1]["tensors"]["model.layers.1.self_attn.q_proj.weight"]
    assert record["route"] == "dense" and record["merged_as"] == "knots"
    assert record["joint_rank"] == record["rank_bound"] == 64 and record["scale"] == 0.5
    norm = result.report["layers"][0]["tensors"]["model.layers.0.input_layernorm.weight"]
    assert norm["merged_as"] == "ties of the task vectors"
    assert all(torch.isfinite(t).all() for t in _tensors(result.output).values())


def test_wudi_merges_lora_experts_through_the_cli(tiny_models, tiny_loras, tmp_path) -> None:
    output = tmp_path / "wudi"
    config = {"method": "wudi", "base": str(tiny_models["base"]), "output": str(output),
              "models": [str(tiny_loras["l1"]), str(tiny_loras["l2"])], "parameters": {"iterations": 20}}
    assert _run_cli(config, tmp_path) == 0
    report = json.loads((output / "recall_report.json").read_text())
    record = report["layers"][0]["tensors"][MATRIX]
    assert record["merged_as"] == "wudi" and record["tasks_used"] == 2 and record["iterations"] == 20
    assert record["loss_final"] < record["loss_initial"]
    untouched = report["layers"][0]["tensors"]["model.layers.0.mlp.up_proj.weight"]
    assert untouched["tasks_used"] == 0
    merged, base = _tensors(output), _tensors(tiny_models["base"])
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(merged[MATRIX], base[MATRIX])
    assert report["outside_blocks"]["tensors"]["model.norm.weight"]["merged_as"] == "mean"


@pytest.mark.parametrize(("method", "parameters", "words"), [
    ("knots", {"merge": "average"}, "merge"),
    ("knots", {"density": 0}, "density"),
    ("knots", {"density": 1.5}, "density"),
    ("knots", {"merge": "linear", "density": 0.5}, "density"),
    ("knots", {"lambda": 5000}, "lambda"),
    ("knots", {"eps": -1}, "eps"),
    ("knots", {"topK": 20}, "topK"),
    ("wudi", {"iterations": -1}, "iterations"),
    ("wudi", {"iterations": 2.5}, "iterations"),
    ("wudi", {"learning_rate": 0}, "learning_rate"),
    ("wudi", {"lambda": 1.0}, "lambda"),
])
def test_bad_parameters_exit_2_before_any_output(method, parameters, words, tiny_models, tmp_path, capsys) -> None:
    output = tmp_path / "out"
    config = {"method": method, "base": str(tiny_models["base"]), "output": str(output),
              "models": [str(tiny_models["e1"]), str(tiny_models["e2"])], "parameters": parameters}
    assert _run_cli(config, tmp_path) == 2
    err = capsys.readouterr().err
    assert words in err and "fix" in err and "Traceback" not in err
    assert not output.exists()


def test_linear_with_density_is_a_config_error_naming_the_fix() -> None:
    with pytest.raises(ConfigError) as error:
        _method("knots", 2, {"merge": "linear", "density": 0.5})
    assert "density" in error.value.problem and "ties" in error.value.fix


def test_sign_election_and_disjoint_mean_are_the_project_ops() -> None:
    """merge_aligned's ties is ops' TIES with unit weights: trim, sign of the sum, agreeing mean."""
    a, b = torch.tensor([[3.0, -1.0], [0.5, 2.0]]), torch.tensor([[-1.0, -3.0], [1.5, -0.1]])
    merged = knots.merge_aligned([a, b], "ties", 1.0)
    stacked = torch.stack([a, b])
    expected = ops.disjoint_merge(stacked, torch.ones(2), ops.sign_election(stacked))
    assert torch.equal(merged, expected)
    assert torch.equal(merged, torch.tensor([[3.0, -2.0], [1.0, 2.0]]))
