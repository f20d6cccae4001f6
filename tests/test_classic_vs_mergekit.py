"""The classic methods against mergekit 0.1.5 on tiny random Llama checkpoints.

Each case is written as a mergekit config; mergekit merges it, and recall-merge merges the same
config read through ``from_mergekit``. Every tensor must agree to 1e-5 (float32). DARE draws
differ between the tools (mergekit uses torch's global RNG), so it is compared statistically.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from recall_merge.testing import make_expert_family

mergekit = pytest.importorskip("mergekit")
from recall_merge import merge  # noqa: E402
from recall_merge.config import MergeConfig  # noqa: E402
from recall_merge.errors import ConfigError  # noqa: E402
from recall_merge.interop.mergekit import (  # noqa: E402
    classic_to_mergekit,
    from_mergekit,
    recall_alpha_to_mergekit,
)
from recall_merge.methods.base import TensorPosition  # noqa: E402
from recall_merge.methods.classic import DareLinear  # noqa: E402

TOLERANCE = 1e-5
NUM_LAYERS = 4  # four blocks, so gradients are read between their end points


@pytest.fixture(scope="module")
def deep_models(tmp_path_factory) -> dict[str, Path]:
    """Base + 3 experts (base + seeded noise) with 4 blocks."""
    return make_expert_family(tmp_path_factory.mktemp("deep"), 3, NUM_LAYERS)


def run_mergekit(config: dict[str, Any], out: Path, seed: int | None = None,
                 copy_tokenizer: bool = False) -> dict[str, torch.Tensor]:
    """Run mergekit in-process (what ``mergekit-yaml`` does), offline, on CPU. ``copy_tokenizer``:
    write the output's tokenizer as mergekit-yaml does by default (needed for chat_template)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    options = MergeOptions(lazy_unpickle=False, copy_tokenizer=copy_tokenizer, quiet=True, write_model_card=False,
                           random_seed=seed, lora_merge_cache=str(out.parent / "lora_cache"))
    run_merge(MergeConfiguration.model_validate(copy.deepcopy(config)), str(out), options)
    return read_tensors(out)


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def run_ours(config: dict[str, Any], out: Path, **kwargs: Any):
    result = merge({**config, "output": str(out)}, overwrite=True, quiet=True, **kwargs)
    return read_tensors(result.output), result


def max_difference(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    assert set(ours) == set(theirs), set(ours) ^ set(theirs)
    return max((ours[n].float() - theirs[n].float()).abs().max().item() for n in ours)


def _mk_model(path: Path, **parameters: Any) -> dict[str, Any]:
    return {"model": str(path), "parameters": parameters} if parameters else {"model": str(path)}


def _cases(m: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """mergekit configs for the shared methods, with weights, gradients and non-default options."""
    b, e1, e2, e3 = m["base"], m["e1"], m["e2"], m["e3"]
    return {
        "linear": {"merge_method": "linear", "dtype": "float32",
                   "models": [_mk_model(e1, weight=1.0), _mk_model(e2, weight=0.5), _mk_model(e3, weight=2.0)]},
        "linear_gradient_with_base": {
            "merge_method": "linear", "base_model": str(b), "dtype": "float32",
            "models": [_mk_model(b, weight=0.5), _mk_model(e1, weight=[0.0, 1.0, 3.0]),
                       _mk_model(e2, weight=[2.0, 1.0])]},
        "task_arithmetic": {
            "merge_method": "task_arithmetic", "base_model": str(b), "dtype": "float32",
            "parameters": {"lambda": 0.8},
            "models": [_mk_model(e1, weight=0.3), _mk_model(e2, weight=0.5), _mk_model(e3, weight=0.7)]},
        "task_arithmetic_gradient_normalized": {
            "merge_method": "task_arithmetic", "base_model": str(b), "dtype": "float32",
            "parameters": {"normalize": True},
            "models": [_mk_model(e1, weight=[1.0, 0.0, 0.5, 2.0]), _mk_model(e2, weight=1.0)]},
        "ties": {
            "merge_method": "ties", "base_model": str(b), "dtype": "float32",
            "parameters": {"lambda": 1.0},
            "models": [_mk_model(e1, weight=1.0, density=0.3), _mk_model(e2, weight=0.5, density=0.3),
                       _mk_model(e3, weight=2.0, density=0.3)]},
        "ties_per_model_density_rescale": {
            "merge_method": "ties", "base_model": str(b), "dtype": "float32",
            "parameters": {"normalize": False, "rescale": True, "lambda": 0.7, "int8_mask": True},
            "models": [_mk_model(b), _mk_model(e1, weight=[0.2, 1.0], density=0.2),
                       _mk_model(e2, weight=1.0, density=[0.9, 0.4]), _mk_model(e3, weight=0.6, density=0.6)]},
        "breadcrumbs": {
            "merge_method": "breadcrumbs", "base_model": str(b), "dtype": "float32",
            "parameters": {"density": 0.8, "gamma": 0.05, "weight": 1.0},
            "models": [_mk_model(e1), _mk_model(e2), _mk_model(e3, weight=0.5)]},
        "breadcrumbs_ties": {
            "merge_method": "breadcrumbs_ties", "base_model": str(b), "dtype": "float32",
            "parameters": {"normalize": True},
            "models": [_mk_model(e1, weight=1.0, density=0.7, gamma=0.1),
                       _mk_model(e2, weight=1.0, density=0.5, gamma=0.02)]},
    }


CASES = ["linear", "linear_gradient_with_base", "task_arithmetic", "task_arithmetic_gradient_normalized",
         "ties", "ties_per_model_density_rescale", "breadcrumbs", "breadcrumbs_ties"]


@pytest.mark.parametrize("case", CASES)
def test_same_tensors_as_mergekit(deep_models, tmp_path, case) -> None:
    mk_config = _cases(deep_models)[case]
    theirs = run_mergekit(mk_config, tmp_path / "mergekit")
    ours, result = run_ours(from_mergekit(copy.deepcopy(mk_config)), tmp_path / "ours")
    assert max_difference(ours, theirs) <= TOLERANCE
    assert result.report["method"] == mk_config["merge_method"]
    assert len(result.report["layers"]) == NUM_LAYERS


def test_our_own_config_matches_mergekit_via_emitted_yaml(deep_models, tmp_path) -> None:
    """A config written in our form, emitted as mergekit YAML, merged by both tools."""
    m = deep_models
    config = {"method": "ties", "base": str(m["base"]), "models": [str(m["e1"]), str(m["e2"])],
              "parameters": {"density": 0.4, "lambda": 1.2, "weights": [[1.0, 0.25], 0.75]}}
    ours, result = run_ours(config, tmp_path / "ours", emit_mergekit=tmp_path / "emitted.yaml")
    emitted = yaml.safe_load((tmp_path / "emitted.yaml").read_text())
    assert emitted["merge_method"] == "ties"
    theirs = run_mergekit(emitted, tmp_path / "mergekit")
    assert max_difference(ours, theirs) <= TOLERANCE
    # the report states the per-layer weights that were applied
    applied = [layer["weights"] for layer in result.report["layers"]]
    assert applied[0] == [1.0, 0.75] and applied[-1] == [0.25, 0.75]
    assert result.report["outside_blocks"]["weights"] == [1.0, 0.75]  # mergekit reads t = 0 there


def test_lora_experts_match_mergekit(tiny_models, tiny_loras, tmp_path) -> None:
    """LoRA experts are merged as dense deltas; mergekit merges BASE+ADAPTER references."""
    base = str(tiny_models["base"])
    mk_config = {"merge_method": "ties", "base_model": base, "dtype": "float32",
                 "parameters": {"density": 0.5},
                 "models": [_mk_model(f"{base}+{tiny_loras['l1']}", weight=1.0),
                            _mk_model(f"{base}+{tiny_loras['l2']}", weight=0.5)]}
    ours_config = from_mergekit(copy.deepcopy(mk_config))
    assert ours_config["models"] == [str(tiny_loras["l1"]), str(tiny_loras["l2"])]
    theirs = run_mergekit(mk_config, tmp_path / "mergekit")
    ours, _ = run_ours(ours_config, tmp_path / "ours")
    assert max_difference(ours, theirs) <= TOLERANCE


# ------------------------------------------------------------------------------------------ DARE
def test_dare_reproducible_for_a_seed(deep_models, tmp_path) -> None:
    m = deep_models
    config = {"method": "dare_ties", "base": str(m["base"]), "models": [str(m["e1"]), str(m["e2"])],
              "seed": 3, "parameters": {"density": 0.5}}
    first, _ = run_ours(config, tmp_path / "a")
    second, _ = run_ours(config, tmp_path / "b")
    other, _ = run_ours({**config, "seed": 4}, tmp_path / "c")
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)


def test_dare_mask_independent_of_processing_order(deep_models) -> None:
    """The mask of a tensor depends on the seed and its name only, not on what was merged before."""
    config = MergeConfig(method="dare_linear", base=str(deep_models["base"]), models=["a", "b"],
                         output=Path("unused"), seed=5, parameters={"density": 0.3})
    position = TensorPosition("block", 1, 1 / 3)
    base = torch.zeros(50, 40)
    experts = [torch.randn(50, 40, generator=torch.Generator().manual_seed(k)) for k in (1, 2)]

    def method() -> DareLinear:
        return DareLinear(config.method_parameters(), config, NUM_LAYERS)

    fresh = method().merge_tensor("model.layers.1.mlp.up_proj.weight", position, base, experts)
    busy = method()
    busy.merge_tensor("model.layers.0.mlp.up_proj.weight", position, base, experts)
    torch.randn(1000)  # global RNG use in between must not matter either
    again = busy.merge_tensor("model.layers.1.mlp.up_proj.weight", position, base, experts)
    assert torch.equal(fresh, again)


def test_dare_matches_mergekit_in_expectation(deep_models, tmp_path) -> None:
    """Same statistics as mergekit: the fraction of changed entries, and a mean over seeds that
    converges to task arithmetic (DARE's rescaling is unbiased)."""
    m = deep_models
    density = 0.4
    mk_config = {"merge_method": "dare_linear", "base_model": str(m["base"]), "dtype": "float32",
                 "parameters": {"density": density},
                 "models": [_mk_model(m["e1"], weight=1.0), _mk_model(m["e2"], weight=1.0)]}
    base = read_tensors(m["base"])
    theirs = run_mergekit(mk_config, tmp_path / "mergekit", seed=1)
    ours_config = from_mergekit(copy.deepcopy(mk_config))
    ours, _ = run_ours({**ours_config, "seed": 1}, tmp_path / "ours")
    name = "model.layers.2.mlp.down_proj.weight"
    expected_changed = 1 - (1 - density) ** 2  # an entry moves when either expert keeps it
    for merged in (ours, theirs):
        changed = (merged[name] != base[name]).float().mean().item()
        n = base[name].numel()
        assert abs(changed - expected_changed) < 5 * math.sqrt(expected_changed * (1 - expected_changed) / n)

    # mean over seeds → task arithmetic, for our method and for mergekit's own sparsify
    from mergekit.sparsify import RescaleNorm, bernoulli

    experts = [read_tensors(m[k])[name] for k in ("e1", "e2")]
    deltas = [e - base[name] for e in experts]
    target = sum(deltas)
    config = MergeConfig(method="dare_linear", base=str(m["base"]), models=["a", "b"], output=Path("x"),
                         parameters={"density": density})
    draws = 400
    ours_mean = torch.zeros_like(target)
    theirs_mean = torch.zeros_like(target)
    torch.manual_seed(0)
    for seed in range(draws):
        method = DareLinear(config.method_parameters(), config.model_copy(update={"seed": seed}), NUM_LAYERS)
        position = TensorPosition("block", 2, 2 / 3)
        ours_mean += method.merge_tensor(name, position, base[name], experts) - base[name]
        theirs_mean += sum(bernoulli(d, density, RescaleNorm.l1) for d in deltas)
    ours_mean /= draws
    theirs_mean /= draws
    # entry-wise standard error of a sum of two rescaled Bernoulli draws
    stderr = torch.sqrt(sum(d**2 for d in deltas) * (1 - density) / density / draws)
    assert ((ours_mean - target).abs() <= 5 * stderr + 1e-6).float().mean() > 0.999
    assert ((theirs_mean - target).abs() <= 5 * stderr + 1e-6).float().mean() > 0.999
    assert (ours_mean - theirs_mean).abs().mean() < 2 * stderr.mean()


# ------------------------------------------------------------------------------- RECALL → mergekit
def test_recall_alpha_to_mergekit_reproduces_per_block_weights(deep_models, tmp_path) -> None:
    """Hand-made α per block, written as mergekit YAML, merged by mergekit: Σ_k α_j^(k) θ_j^(k)."""
    m = deep_models
    refs = [m["base"], m["e1"], m["e2"]]
    alphas = [[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.05, 0.15, 0.8]]
    tensors = [read_tensors(r) for r in refs]
    outside = {"model.embed_tokens.weight": alphas[0], "model.norm.weight": alphas[-1],
               "lm_head.weight": alphas[-1]}
    document = recall_alpha_to_mergekit(alphas, str(m["base"]), [str(m["e1"]), str(m["e2"])],
                                        outside_blocks=outside)
    path = tmp_path / "recall.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    theirs = run_mergekit(yaml.safe_load(path.read_text()), tmp_path / "mergekit")
    for name, merged in theirs.items():
        if name in outside:
            alpha = outside[name]
        else:
            alpha = alphas[int(name.split(".")[2])]
        expected = sum(a * t[name] for a, t in zip(alpha, tensors, strict=True))
        assert (merged - expected).abs().max().item() <= TOLERANCE, name


def test_recall_merge_round_trips_through_mergekit(tiny_models, tmp_path) -> None:
    """A real RECALL merge, its emitted YAML run through mergekit: the same tensors."""
    m = tiny_models
    config = {"method": "recall", "base": str(m["base"]), "models": [str(m["e1"]), str(m["e2"])],
              "samples": str(m["samples"]),
              "parameters": {"num_typical": 4, "temperature": 0.05, "max_length": 16}}
    ours, result = run_ours(config, tmp_path / "ours", emit_mergekit=tmp_path / "recall.yaml")
    alphas = [layer["alpha"] for layer in result.report["layers"]]
    assert len(alphas[0]) == 3
    # a non-trivial merge: the weights differ between models (else any linear config would pass)
    assert max(max(row) - min(row) for row in alphas) > 0.01
    emitted = yaml.safe_load((tmp_path / "recall.yaml").read_text())
    assert emitted["merge_method"] == "linear"
    theirs = run_mergekit(emitted, tmp_path / "mergekit")
    assert max_difference(ours, theirs) <= TOLERANCE


# ------------------------------------------------------------------------------ config conversion
def test_from_mergekit_conversion() -> None:
    # out_dtype only: computed in float32, a whole-model merge (dtype: bfloat16 computes in bfloat16,
    # per tensor: tests/test_mergekit_yaml_rest.py)
    raw = {"merge_method": "ties", "base_model": "/b", "out_dtype": "bfloat16",
           "parameters": {"density": 0.5, "lambda": 0.9, "normalize": False},
           "models": [{"model": "/b"}, {"model": "/x", "parameters": {"weight": [0.0, 1.0]}},
                      {"model": "/y", "parameters": {"weight": 0.5, "density": 0.2}}]}
    assert from_mergekit(raw) == {
        "method": "ties", "base": "/b", "models": ["/x", "/y"], "dtype": "bfloat16",
        "parameters": {"weights": [[0.0, 1.0], 0.5], "density": [0.5, 0.2], "lambda": 0.9,
                       "normalize": False}}


def test_from_mergekit_linear_without_base_uses_first_model() -> None:
    raw = {"merge_method": "linear", "models": [{"model": "/a", "parameters": {"weight": 2.0}},
                                                {"model": "/c", "parameters": {"weight": 1.0}}]}
    assert from_mergekit(raw) == {"method": "linear", "base": "/a", "models": ["/c"],
                                  "parameters": {"include_base": True, "base_weight": 2.0, "weights": [1.0]}}


@pytest.mark.parametrize(
    ("raw", "needle"),
    [({"merge_method": "nuslerp", "base_model": "/b", "models": [{"model": "/x"}]}, "nuslerp"),
     ({"merge_method": "ties", "slices": []}, "slices"),
     ({"merge_method": "ties", "models": [{"model": "/x"}]}, "base_model"),
     ({"merge_method": "ties", "modules": {}}, "modules"),
     ({"merge_method": "ties", "base_model": "/b", "models": [{"model": "/x", "parameters": {"epsilon": 0.1}}]},
      "epsilon"),
     ({"merge_method": "linear", "base_model": "/b", "models": [{"model": "/x", "parameters": {"weight": 1}}]},
      "base"),
     ({"merge_method": "ties", "base_model": "/b", "models": [{"model": "/other+/lora"}]}, "LoRA")],
)
def test_from_mergekit_refuses_with_a_fix(raw, needle) -> None:
    with pytest.raises(ConfigError) as error:
        from_mergekit(raw)
    assert needle in error.value.problem and error.value.fix


def test_classic_to_mergekit_round_trip() -> None:
    params = {"weights": [[1.0, 0.5], 2.0], "density": 0.3, "lambda": 0.8, "normalize": None}
    document = classic_to_mergekit("ties", params, "/b", ["/x", "/y"])
    back = from_mergekit(document)
    assert back["parameters"]["weights"] == [[1.0, 0.5], 2.0]
    assert back["parameters"]["density"] == 0.3 and back["parameters"]["lambda"] == 0.8
    with pytest.raises(ConfigError):
        classic_to_mergekit("magmax", {}, "/b", ["/x"])


def test_mergekit_yaml_file_is_read_by_load_config(deep_models, tmp_path) -> None:
    from recall_merge.config import load_config

    path = tmp_path / "mk.yaml"
    path.write_text(yaml.safe_dump({**_cases(deep_models)["ties"], "output": str(tmp_path / "out")}))
    config = load_config(path)
    assert config.method == "ties" and len(config.models) == 3
