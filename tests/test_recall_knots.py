"""RECALL's ``variant: knots``: RECALL's per-layer weights N·ᾱ_k on the task vectors, then KnOTS-TIES
(methods/knots.py, its defaults). With uniform weights it is the knots method itself: checked on
the tensor function (hypothesis, small shapes) and on a whole merge of the tiny models. Tiny random
tensors and models, SYNTHETIC samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from recall_merge import merge
from recall_merge.config import MergeConfig
from recall_merge.io.pool import tensor_position
from recall_merge.methods import knots
from recall_merge.methods.registry import get_method

NUM_LAYERS = 2
FEW = settings(max_examples=20, deadline=None)
NAMES = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
         "model.layers.1.input_layernorm.weight", "model.norm.weight"]


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recall_knots") / "samples.txt"
    path.write_text("one sample\n")
    return path


def _method(name: str, count: int, parameters: dict[str, Any], samples: Path | None = None):
    config = MergeConfig(method=name, base="/b", models=[f"/m{k}" for k in range(count)],
                         output=Path("/o"), samples=samples, parameters=parameters)
    return get_method(name)(config.method_parameters(), config, NUM_LAYERS)


def _recall(count: int, parameters: dict[str, Any], samples: Path, alpha: torch.Tensor | None = None):
    method = _method("recall", count, {"variant": "knots", **parameters}, samples)
    # the weights the planning pass would set: uniform over M_0..M_N unless given
    method.alpha_per_layer = (alpha if alpha is not None
                              else torch.full((NUM_LAYERS, count + 1), 1.0 / (count + 1), dtype=torch.float64))
    method.strength_per_layer = torch.ones(NUM_LAYERS, dtype=torch.float64)
    return method


def _tensors(seed: int, count: int, rows: int, cols: int, name: str):
    generator = torch.Generator().manual_seed(seed)
    shape = (rows, cols) if name.endswith("proj.weight") else (cols,)
    base = torch.randn(shape, generator=generator)
    return base, [base + 0.1 * torch.randn(shape, generator=generator) for _ in range(count)]


@FEW
@given(seed=st.integers(0, 2**16), count=st.integers(1, 4), rows=st.integers(1, 12),
       cols=st.integers(1, 12), name=st.sampled_from(NAMES),
       options=st.sampled_from([({}, {}), ({"scale": 0.7}, {"lambda": 0.7}),
                                ({"density": 0.4}, {"density": 0.4})]))
def test_uniform_weights_give_the_knots_method(samples, seed, count, rows, cols, name, options):
    """Uniform α: RECALL-knots is the knots method (dense route: no pool) at the same λ and
    density; with no options both take KnOTS' defaults (TIES, density 1, λ 0.5)."""
    recall_options, knots_options = options
    base, experts = _tensors(seed, count, rows, cols, name)
    position = tensor_position(name, NUM_LAYERS)
    ours = _recall(count, recall_options, samples).merge_tensor(
        name, position, base.clone(), [e.clone() for e in experts])
    theirs = _method("knots", count, knots_options).merge_tensor(
        name, position, base.clone(), [e.clone() for e in experts])
    assert ours.shape == base.shape and ours.dtype == base.dtype
    assert float((ours - theirs).abs().max()) <= 1e-6


def test_recall_weights_scale_the_task_vectors_inside_knots(samples):
    """Non-uniform α: the update is KnOTS-TIES of N·ᾱ_k·τ_k (ᾱ over the experts), times λ; it
    differs from the uniform merge."""
    name = NAMES[1]
    base, experts = _tensors(5, 3, 10, 8, name)
    alpha = torch.tensor([[0.1, 0.2, 0.3, 0.4]] * NUM_LAYERS, dtype=torch.float64)
    position = tensor_position(name, NUM_LAYERS)
    ours = _recall(3, {"scale": 0.8}, samples, alpha).merge_tensor(name, position, base.clone(), experts)
    weights = [3 * a / 0.9 for a in (0.2, 0.3, 0.4)]
    joint = knots.joint_svd_dense([w * (e - base) for w, e in zip(weights, experts, strict=True)])
    expected = base + 0.8 * knots.knots_delta(joint, "ties", 1.0)
    assert float((ours - expected).abs().max()) <= 1e-6
    uniform = _recall(3, {"scale": 0.8}, samples).merge_tensor(name, position, base.clone(), experts)
    assert float((ours - uniform).abs().max()) > 1e-4


def test_knots_variant_reads_whole_tensors_and_is_reported(samples):
    method = _recall(2, {}, samples)
    assert method.is_elementwise() is False  # the joint SVD needs the whole matrix
    report = method.report()
    assert report["variant"] == "knots"
    assert report["knots"] == {"merge": "ties", "density": 1.0, "lambda": 0.5, "eps": knots.DEFAULT_EPS,
                               "scale_by_singular_values": True}
    given = _recall(2, {"scale": 0.3, "density": 0.5}, samples).report()["knots"]
    assert (given["lambda"], given["density"]) == (0.3, 0.5)
    assert "knots" not in _recall(2, {"variant": "tsv_m"}, samples).report()


def _files(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(Path(folder).glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_recall_knots_merge_with_uniform_weights_equals_the_knots_merge(kind, tiny_models, tiny_loras,
                                                                       tmp_path):
    """A whole merge: a huge temperature makes RECALL's α uniform (to ~1e-9), so the output is the
    knots merge (whose LoRA route is the SVD of the factors, ours the dense one)."""
    models = ([str(tiny_models["e1"]), str(tiny_models["e2"])] if kind == "full"
              else [str(tiny_loras["l1"]), str(tiny_loras["l2"])])
    common = {"base": str(tiny_models["base"]), "models": models, "seed": 3}
    recall = merge({"method": "recall", **common, "samples": str(tiny_models["samples"]),
                    "output": str(tmp_path / "recall"),
                    "parameters": {"variant": "knots", "temperature": 1e9, "num_typical": 3,
                                   "max_length": 32}}, quiet=True)
    plain = merge({"method": "knots", **common, "output": str(tmp_path / "knots")}, quiet=True)
    ours, theirs = _files(recall.output), _files(plain.output)
    assert ours.keys() == theirs.keys()
    worst = max(float((ours[name] - theirs[name]).abs().max()) for name in theirs)
    print(f"{kind}: max |RECALL-knots − knots| = {worst:.2e}")
    assert worst <= 1e-6
    assert recall.report["variant"] == "knots"
