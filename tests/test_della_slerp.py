"""DELLA, slerp and multislerp against mergekit 0.1.5 on tiny random Llama checkpoints, their
properties (hypothesis, small tensors), and the refusal of bad values through the CLI.

The mergekit comparisons follow tests/test_classic_vs_mergekit.py (whose helpers they use): each
case is a mergekit config merged by mergekit in-process and by recall-merge through
``from_mergekit``, every tensor within 1e-5 in float32. DELLA is random: mergekit draws from
torch's global RNG, recall-merge from a generator seeded by (seed, tensor name). For the
comparison mergekit's ``della_magprune`` is wrapped so that, before the first expert of each
tensor, the global RNG is seeded as recall-merge seeds that tensor's generator; everything else
(ranking, probabilities, drop, rescale, weights, sign election, λ) is mergekit's own code, and the
results agree bit for bit.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

mergekit = pytest.importorskip("mergekit")
import mergekit.sparsify as mergekit_sparsify  # noqa: E402
from test_classic_vs_mergekit import (  # noqa: E402 - the mergekit runner and comparison
    NUM_LAYERS,
    TOLERANCE,
    _mk_model,
    max_difference,
    read_tensors,
    run_mergekit,
    run_ours,
)

from recall_merge.cli import main as cli_main  # noqa: E402
from recall_merge.config import MergeConfig  # noqa: E402
from recall_merge.errors import ConfigError  # noqa: E402
from recall_merge.interop.mergekit import from_mergekit  # noqa: E402
from recall_merge.methods import ops  # noqa: E402
from recall_merge.methods.base import TensorPosition  # noqa: E402
from recall_merge.methods.classic import dare_seed  # noqa: E402
from recall_merge.methods.registry import available_methods, get_method  # noqa: E402
from recall_merge.methods.slerp import multislerp, slerp  # noqa: E402
from recall_merge.testing import make_expert_family  # noqa: E402

NEW_METHODS = ("della", "della_linear", "slerp", "multislerp")
FEW = settings(max_examples=25, deadline=None)


# ------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def deep_models(tmp_path_factory) -> dict[str, Path]:
    """Base + 3 experts (base + seeded noise) with 4 blocks, as test_classic_vs_mergekit's."""
    return make_expert_family(tmp_path_factory.mktemp("deep"), 3, NUM_LAYERS)


def seeded_della(monkeypatch, models: dict[str, Path], experts: list[str], seed: int) -> None:
    """Make mergekit's DELLA draw what recall-merge draws for ``seed``: before the first expert of
    a tensor, seed the global RNG with that tensor's seed. The tensor is recognised by its task
    vector (each is unique in these random models)."""
    base = read_tensors(models["base"])
    tensors = [read_tensors(models[e]) for e in experts]
    known: dict[tuple[int, ...], list[tuple[str, int, torch.Tensor]]] = {}
    for name, value in base.items():
        for k, expert in enumerate(tensors):
            known.setdefault(tuple(value.shape), []).append((name, k, expert[name] - value))
    original = mergekit_sparsify.della_magprune

    def della_magprune(tensor, density, epsilon, rescale_norm=None):
        hits = [(name, k) for name, k, delta in known[tuple(tensor.shape)] if torch.equal(delta, tensor)]
        assert len(hits) == 1, hits
        name, k = hits[0]
        if k == 0:
            torch.manual_seed(dare_seed(seed, name))
        return original(tensor, density, epsilon, rescale_norm)

    monkeypatch.setattr(mergekit_sparsify, "della_magprune", della_magprune)


def _method(name: str, num_experts: int, parameters: dict[str, Any] | None = None, seed: int = 0):
    config = MergeConfig(method=name, base="/b", models=[f"/m{k}" for k in range(num_experts)],
                         output=Path("/o"), seed=seed, parameters=parameters or {})
    return get_method(name)(config.method_parameters(), config, NUM_LAYERS)


def _della_cases(m: dict[str, Path]) -> dict[str, dict[str, Any]]:
    b, e1, e2, e3 = m["base"], m["e1"], m["e2"], m["e3"]
    return {
        "della": {
            "merge_method": "della", "base_model": str(b), "dtype": "float32",
            "parameters": {"lambda": 0.9, "epsilon": 0.1},
            "models": [_mk_model(e1, weight=1.0, density=0.5),
                       _mk_model(e2, weight=0.6, density=[0.3, 0.7], epsilon=[0.05, 0.2]),
                       _mk_model(e3, weight=[1.0, 0.2], density=0.4)]},
        "della_linear": {
            "merge_method": "della_linear", "base_model": str(b), "dtype": "float32",
            "parameters": {"density": 0.6, "epsilon": 0.2, "lambda": 1.1, "normalize": True},
            "models": [_mk_model(b), _mk_model(e1, weight=0.7), _mk_model(e2, weight=0.5)]},
        "della_no_rescale_count": {
            "merge_method": "della", "base_model": str(b), "dtype": "float32",
            "parameters": {"density": 0.35, "rescale": False, "normalize": False, "int8_mask": True},
            "models": [_mk_model(e1, weight=1.0), _mk_model(e2, weight=1.0)]},
    }


def _spherical_cases(m: dict[str, Path]) -> dict[str, dict[str, Any]]:
    b, e1, e2, e3 = m["base"], m["e1"], m["e2"], m["e3"]
    return {
        "slerp_gradient": {
            "merge_method": "slerp", "base_model": str(b), "dtype": "float32",
            "parameters": {"t": [0.0, 0.3, 1.0]}, "models": [_mk_model(b), _mk_model(e1)]},
        "slerp_scalar": {
            "merge_method": "slerp", "base_model": str(b), "dtype": "float32",
            "parameters": {"t": 0.35}, "models": [_mk_model(e2)]},
        "multislerp_base": {
            "merge_method": "multislerp", "base_model": str(b), "dtype": "float32",
            "models": [_mk_model(e1, weight=1.0), _mk_model(e2, weight=[0.5, 2.0]), _mk_model(e3, weight=0.7)]},
        "multislerp_without_base": {
            "merge_method": "multislerp", "dtype": "float32",
            "parameters": {"normalize_weights": False, "eps": 1e-6},
            "models": [_mk_model(e1, weight=0.3), _mk_model(e2, weight=0.5), _mk_model(e3, weight=0.2)]},
    }


# ------------------------------------------------------------------------------ against mergekit
@pytest.mark.parametrize("case", ["slerp_gradient", "slerp_scalar", "multislerp_base", "multislerp_without_base"])
def test_spherical_methods_give_mergekits_tensors(deep_models, tmp_path, case) -> None:
    mk_config = _spherical_cases(deep_models)[case]
    theirs = run_mergekit(mk_config, tmp_path / "mergekit")
    ours, result = run_ours(from_mergekit(copy.deepcopy(mk_config)), tmp_path / "ours")
    assert max_difference(ours, theirs) <= TOLERANCE
    report = result.report
    assert report["method"] == mk_config["merge_method"] and len(report["layers"]) == NUM_LAYERS
    assert sum(report["interpolations"].values()) == report["tensors_merged"] == len(ours)


def test_slerp_report_says_where_it_fell_back_to_lerp(deep_models, tmp_path) -> None:
    """The t of each block comes from the gradient; norms (ones + small noise: nearly parallel)
    fall back to lerp, the random matrices do not; tensors outside the blocks are read at t = 0."""
    mk_config = _spherical_cases(deep_models)["slerp_gradient"]
    _, result = run_ours(from_mergekit(copy.deepcopy(mk_config)), tmp_path / "ours")
    layers = result.report["layers"]
    assert [layer["slerp_t"] for layer in layers] == pytest.approx([0.0, 0.2, 0.3 + 0.7 / 3, 1.0])
    record = layers[2]["tensors"]["model.layers.2.mlp.up_proj.weight"]
    assert record["interpolation"] == "slerp" and record["t"] == pytest.approx(0.3 + 0.7 / 3)
    assert abs(record["cosine"]) < 0.9995
    norm = layers[2]["tensors"]["model.layers.2.input_layernorm.weight"]
    assert norm["interpolation"] == "lerp" and norm["cosine"] > 0.9995
    assert result.report["outside_blocks"]["tensors"]["lm_head.weight"]["t"] == 0.0


@pytest.mark.parametrize("case", ["della", "della_linear", "della_no_rescale_count"])
def test_della_gives_mergekits_tensors_for_the_same_draws(deep_models, tmp_path, monkeypatch, case) -> None:
    mk_config = _della_cases(deep_models)[case]
    experts = [e for e in ("e1", "e2", "e3") if any(m["model"] == str(deep_models[e]) for m in mk_config["models"])]
    seeded_della(monkeypatch, deep_models, experts, seed=7)
    theirs = run_mergekit(mk_config, tmp_path / "mergekit")
    ours, result = run_ours({**from_mergekit(copy.deepcopy(mk_config)), "seed": 7}, tmp_path / "ours")
    assert max_difference(ours, theirs) <= TOLERANCE
    base = read_tensors(deep_models["base"])
    name = "model.layers.1.self_attn.q_proj.weight"
    assert not torch.equal(ours[name], base[name])
    assert result.report["method"] == case.split("_no")[0] and result.report["applied"]["seed"] == 7


def test_della_sparsify_draws_as_mergekit_for_one_seed() -> None:
    """The tensor function itself, bit for bit: mergekit's della_magprune after seeding the
    global RNG, ours with a generator of the same seed (rows of a matrix, a vector, no rescale)."""
    generator = torch.Generator().manual_seed(0)
    for shape, density, epsilon, norm in [((16, 24), 0.4, 0.1, "l1"), ((50,), 0.7, 0.25, "l1"),
                                          ((8, 8), 0.5, 0.0, None)]:
        tensor = torch.randn(shape, generator=generator)
        torch.manual_seed(11)
        theirs = mergekit_sparsify.della_magprune(tensor, density, epsilon,
                                                  mergekit_sparsify.RescaleNorm.l1 if norm else None)
        ours = ops.della_sparsify(tensor, density, epsilon, torch.Generator().manual_seed(11), norm)
        assert torch.equal(ours, theirs)


def test_emitted_della_yaml_reproduces_the_merge(deep_models, tmp_path, monkeypatch) -> None:
    m = deep_models
    config = {"method": "della", "base": str(m["base"]), "models": [str(m["e1"]), str(m["e2"])], "seed": 3,
              "parameters": {"density": [0.5, 0.6], "epsilon": 0.2, "weights": [[1.0, 0.5], 0.75]}}
    ours, _ = run_ours(config, tmp_path / "ours", emit_mergekit=tmp_path / "emitted.yaml")
    emitted = yaml.safe_load((tmp_path / "emitted.yaml").read_text())
    assert emitted["merge_method"] == "della" and emitted["models"][1]["parameters"]["epsilon"] == 0.2
    seeded_della(monkeypatch, m, ["e1", "e2"], seed=3)
    assert max_difference(ours, run_mergekit(emitted, tmp_path / "mergekit")) <= TOLERANCE


@pytest.mark.parametrize(("method", "models", "parameters"), [
    ("slerp", ["e1"], {"t": [0.2, 0.9]}),
    ("multislerp", ["e1", "e2"], {"weights": [[1.0, 2.0], 0.5], "include_base": True, "base_weight": 0.3}),
    ("multislerp", ["e1", "e2", "e3"], {"normalize_weights": False, "weights": [0.2, 0.3, 0.4]}),
])
def test_emitted_spherical_yaml_reproduces_the_merge(deep_models, tmp_path, method, models, parameters) -> None:
    m = deep_models
    config = {"method": method, "base": str(m["base"]), "models": [str(m[k]) for k in models],
              "parameters": parameters}
    ours, _ = run_ours(config, tmp_path / "ours", emit_mergekit=tmp_path / "emitted.yaml")
    emitted = yaml.safe_load((tmp_path / "emitted.yaml").read_text())
    assert emitted["merge_method"] == method and ("base_model" in emitted) != parameters.get("include_base", False)
    assert max_difference(ours, run_mergekit(emitted, tmp_path / "mergekit")) <= TOLERANCE
    expected = dict(parameters)
    if method == "multislerp":  # the emitted file spells out mergekit's defaults
        expected.setdefault("normalize_weights", True)
        expected["eps"] = 1e-8
    assert from_mergekit(emitted)["parameters"] == expected


def test_spherical_methods_on_lora_experts_match_mergekit(tiny_models, tiny_loras, tmp_path) -> None:
    """LoRA experts arrive as base + B·A; mergekit merges BASE+ADAPTER references. A matrix no
    adapter touches has two zero task vectors: mergekit's two-model fallback (linear) keeps it
    the base, and the report says so."""
    base = str(tiny_models["base"])
    loras = [f"{base}+{tiny_loras['l1']}", f"{base}+{tiny_loras['l2']}"]
    configs = {
        "multislerp": {"merge_method": "multislerp", "base_model": base, "dtype": "float32",
                       "models": [_mk_model(loras[0], weight=1.0), _mk_model(loras[1], weight=0.5)]},
        "slerp": {"merge_method": "slerp", "base_model": base, "dtype": "float32", "parameters": {"t": 0.7},
                  "models": [_mk_model(loras[0])]},
    }
    for method, mk_config in configs.items():
        theirs = run_mergekit(mk_config, tmp_path / f"mergekit_{method}")
        ours, result = run_ours(from_mergekit(copy.deepcopy(mk_config)), tmp_path / f"ours_{method}")
        assert max_difference(ours, theirs) <= TOLERANCE
        assert result.report["model_kinds"][1:] == ["lora"] * len(mk_config["models"])
        tensors = result.report["layers"][0]["tensors"]
        if method == "multislerp":
            assert tensors["model.layers.0.self_attn.q_proj.weight"]["interpolation"] == "multislerp"
            assert tensors["model.layers.0.mlp.up_proj.weight"]["interpolation"] == "linear"
        else:
            assert tensors["model.layers.0.mlp.up_proj.weight"]["interpolation"] == "lerp"  # identical


# ------------------------------------------------------------------------------ DELLA's randomness
def test_della_is_reproducible_per_seed_and_keeps_density_on_average(deep_models, tmp_path) -> None:
    m = deep_models
    density, epsilon = 0.4, 0.2
    config = {"method": "della_linear", "base": str(m["base"]), "models": [str(m["e1"]), str(m["e2"])],
              "seed": 5, "parameters": {"density": density, "epsilon": epsilon}}
    first, report = run_ours(config, tmp_path / "a")
    second, _ = run_ours(config, tmp_path / "b")
    other, _ = run_ours({**config, "seed": 6}, tmp_path / "c")
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)
    # the kept share: mean keep probability is density, variance Σ p(1−p) over the entries
    base = read_tensors(m["base"])
    entries = sum(t.numel() for n, t in base.items() if n.startswith("model.layers.1."))
    spread = math.sqrt(density * (1 - density) / entries)
    for kept in report.report["layers"][1]["kept_fraction"]:
        assert abs(kept - density) < 5 * spread


def test_della_keeps_large_entries_more_often() -> None:
    """Keep probabilities rise linearly with the magnitude rank within a row: the smaller half
    of each row is kept at ≈ density − ε/2, the larger half at ≈ density + ε/2."""
    density, epsilon = 0.5, 0.3
    tensor = torch.randn(200, 100, generator=torch.Generator().manual_seed(1))
    probabilities = ops.della_keep_probabilities(tensor, density, epsilon)
    assert probabilities.mean().item() == pytest.approx(density, abs=1e-6)
    assert probabilities.min().item() == pytest.approx(density - epsilon, abs=1e-6)
    assert probabilities.max().item() == pytest.approx(density + epsilon, abs=1e-6)
    kept = ops.della_sparsify(tensor, density, epsilon, torch.Generator().manual_seed(2), None) != 0
    small = tensor.abs() < tensor.abs().median(dim=1, keepdim=True).values
    stderr = math.sqrt(0.25 / small.sum().item())
    assert abs(kept[small].float().mean().item() - (density - epsilon / 2)) < 5 * stderr
    assert abs(kept[~small].float().mean().item() - (density + epsilon / 2)) < 5 * stderr


def test_della_mask_independent_of_processing_order() -> None:
    position = TensorPosition("block", 1, 1 / 3)
    base = torch.zeros(30, 20)
    experts = [torch.randn(30, 20, generator=torch.Generator().manual_seed(k)) for k in (1, 2)]
    parameters = {"density": 0.5}
    fresh = _method("della", 2, parameters, seed=9).merge_tensor("model.layers.1.x.weight", position, base, experts)
    busy = _method("della", 2, parameters, seed=9)
    busy.merge_tensor("model.layers.0.x.weight", position, base, experts)
    torch.randn(100)
    assert torch.equal(fresh, busy.merge_tensor("model.layers.1.x.weight", position, base, experts))


# ------------------------------------------------------------------------------ properties
vectors = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**16))
positions = TensorPosition("block", 2, 2 / 3)


def _random(shape: tuple[int, ...], seed: int, count: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(count)]


@FEW
@given(spec=vectors)
def test_slerp_endpoints_are_the_models(spec) -> None:
    rows, cols, seed = spec
    v0, v1 = _random((rows, cols), seed, 2)
    assert torch.allclose(slerp(0.0, v0, v1).tensor, v0, atol=1e-6)
    assert torch.allclose(slerp(1.0, v0, v1).tensor, v1, atol=1e-6)


@FEW
@given(spec=vectors, scale=st.floats(0.1, 10), t=st.floats(0, 1))
def test_slerp_of_parallel_tensors_is_lerp(spec, scale, t) -> None:
    rows, cols, seed = spec
    (v0,) = _random((rows, cols), seed)
    v1 = v0 * scale
    result = slerp(t, v0, v1)
    assert result.linear
    assert torch.allclose(result.tensor, (1 - t) * v0 + t * v1, atol=1e-5)


@FEW
@given(spec=vectors, weight=st.floats(0.1, 5), with_origin=st.booleans())
def test_multislerp_of_one_model_is_that_model(spec, weight, with_origin) -> None:
    rows, cols, seed = spec
    model, origin = _random((rows, cols), seed, 2)
    result = multislerp([model], [weight], origin if with_origin else None)
    assert torch.equal(result.tensor, model) and result.interpolation == "single"


@FEW
@given(spec=vectors, count=st.integers(2, 4), data=st.data())
def test_multislerp_is_invariant_to_the_order_of_models(spec, count, data) -> None:
    rows, cols, seed = spec
    *models, origin = _random((rows, cols), seed, count + 1)
    weights = data.draw(st.lists(st.floats(0.1, 3), min_size=count, max_size=count))
    order = data.draw(st.permutations(range(count)))
    straight = multislerp(models, weights, origin).tensor
    permuted = multislerp([models[i] for i in order], [weights[i] for i in order], origin).tensor
    assert torch.allclose(straight, permuted, atol=1e-5, rtol=1e-5)


@FEW
@given(spec=vectors, scale=st.floats(-2, 2), method=st.sampled_from(["della", "della_linear"]))
def test_della_with_one_expert_and_full_density_is_task_arithmetic(spec, scale, method) -> None:
    rows, cols, seed = spec
    base, expert = _random((rows, cols), seed, 2)
    merged = _method(method, 1, {"density": 1.0, "lambda": scale}).merge_tensor("w", positions, base, [expert])
    assert torch.allclose(merged, base + scale * (expert - base), atol=1e-5)


# ------------------------------------------------------------------------------ registry, conversion
def test_new_methods_are_registered_with_a_summary(capsys) -> None:
    assert cli_main(["methods"]) == 0
    printed = capsys.readouterr().out
    for name in NEW_METHODS:
        assert name in available_methods() and get_method(name).summary
        assert name in printed


def test_from_mergekit_reads_the_new_methods() -> None:
    assert from_mergekit({"merge_method": "slerp", "base_model": "/b", "parameters": {"t": [0, 1]},
                          "models": [{"model": "/b"}, {"model": "/x"}]}) == {
        "method": "slerp", "base": "/b", "models": ["/x"], "parameters": {"t": [0.0, 1.0]}}
    assert from_mergekit({"merge_method": "multislerp", "parameters": {"eps": 1e-6},
                          "models": [{"model": "/a", "parameters": {"weight": 2}},
                                     {"model": "/x", "parameters": {"weight": [1, 3]}}]}) == {
        "method": "multislerp", "base": "/a", "models": ["/x"],
        "parameters": {"include_base": True, "base_weight": 2.0, "weights": [[1.0, 3.0]], "eps": 1e-6}}
    assert from_mergekit({"merge_method": "della_linear", "base_model": "/b",
                          "parameters": {"density": 0.5, "epsilon": 0.1},
                          "models": [{"model": "/x", "parameters": {"epsilon": 0.2}}, {"model": "/y"}]}) == {
        "method": "della_linear", "base": "/b", "models": ["/x", "/y"],
        "parameters": {"density": 0.5, "epsilon": [0.2, 0.1]}}


@pytest.mark.parametrize(("raw", "needle"), [
    ({"merge_method": "slerp", "base_model": "/b", "models": [{"model": "/x"}]}, "needs `parameters: {t"),
    ({"merge_method": "slerp", "base_model": "/b", "parameters": {"t": 0.5},
      "models": [{"model": "/x"}, {"model": "/y"}]}, "one other model"),
    ({"merge_method": "slerp", "base_model": "/b", "models": [{"model": "/x", "parameters": {"t": 0.5}}]}, "t"),
    ({"merge_method": "multislerp", "base_model": "/b", "parameters": {"density": 0.5},
      "models": [{"model": "/x"}]}, "density"),
    ({"merge_method": "ties", "base_model": "/b", "models": [{"model": "/x", "parameters": {"epsilon": 0.1}}]},
     "epsilon"),
])
def test_from_mergekit_refuses_what_the_new_methods_do_not_read(raw, needle) -> None:
    with pytest.raises(ConfigError) as error:
        from_mergekit(raw)
    assert needle in error.value.problem and error.value.fix


# ------------------------------------------------------------------------------ bad values, CLI
def _own(m: dict[str, Path], method: str, models: list[str], parameters: dict[str, Any]) -> dict[str, Any]:
    return {"method": method, "base": str(m["base"]), "models": [str(m[k]) for k in models],
            "parameters": parameters}


BAD = [
    ("slerp_t_above_one", lambda m: _own(m, "slerp", ["e1"], {"t": [0.0, 1.5]}), "outside [0, 1]"),
    ("slerp_two_models", lambda m: _own(m, "slerp", ["e1", "e2"], {"t": 0.5}), "exactly one model"),
    ("della_epsilon_past_one", lambda m: _own(m, "della", ["e1"], {"density": 0.9, "epsilon": 0.15}),
     "inside (0, 1)"),
    ("della_gradient_density_past_epsilon", lambda m: _own(m, "della", ["e1"], {"density": [[0.5, 0.1]], "epsilon": 0.1}),
     "block 3"),
    ("della_negative_epsilon", lambda m: _own(m, "della_linear", ["e1"], {"epsilon": -0.1}), "[0, 0.5)"),
    ("della_zero_density", lambda m: _own(m, "della", ["e1"], {"density": 0.0}), "(0, 1]"),
    ("multislerp_zero_eps", lambda m: _own(m, "multislerp", ["e1", "e2"], {"eps": 0}), "eps"),
    ("multislerp_weights_cancel", lambda m: _own(m, "multislerp", ["e1", "e2"], {"weights": [1.0, -1.0]}),
     "sum to 0"),
    ("mergekit_slerp_without_t", lambda m: {"merge_method": "slerp", "base_model": str(m["base"]),
                                            "models": [{"model": str(m["e1"])}]}, "t"),
    ("mergekit_della_bad_epsilon", lambda m: {
        "merge_method": "della", "base_model": str(m["base"]), "parameters": {"density": 0.8, "epsilon": 0.3},
        "models": [{"model": str(m["e1"]), "parameters": {"weight": 1.0}}]}, "inside (0, 1)"),
]


@pytest.mark.parametrize(("label", "build", "message"), BAD, ids=[case[0] for case in BAD])
def test_bad_values_exit_2_with_problem_and_fix(deep_models, tmp_path, capsys, label, build, message) -> None:
    config = {**build(deep_models), "output": str(tmp_path / "out")}
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli_main(["merge", str(path), "--quiet"]) == 2
    stderr = capsys.readouterr().err
    assert message in stderr and "fix:" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_report_is_json_with_what_each_method_chose(deep_models, tmp_path) -> None:
    m = deep_models
    output = tmp_path / "out"
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump({**_own(m, "multislerp", ["e1", "e2"], {"weights": [1.0, 3.0]}),
                                    "output": str(output)}))
    assert cli_main(["merge", str(path), "--quiet"]) == 0
    report = json.loads((output / "recall_report.json").read_text())
    assert report["applied"]["origin"] == "base" and report["layers"][0]["weights"] == [1.0, 3.0]
    record = report["layers"][0]["tensors"]["model.layers.0.mlp.up_proj.weight"]
    assert record["interpolation"] == "multislerp" and 0 < record["tangent_norm"] < math.pi
