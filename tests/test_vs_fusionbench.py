"""TSV-M, Iso-C and Iso-CTS against FusionBench 0.2.33's own tensor-level functions (≤ 1e-5, float32).

How FusionBench is run without installing it: its package imports lightning, hydra, omegaconf …
at import time, none of which this project installs. The functions compared here live in two
files whose only FusionBench imports are a type alias and a timing context manager:

- ``fusion_bench/method/task_singular_vector/utils/TSVM_utils.py``
  (``compute_and_sum_svd_mem_reduction``: TSV-M of a whole state dict);
- ``fusion_bench/method/isotropic_merging/iso_utils.py`` (``iso_c``, ``iso_cts``).

The test reads each file's source out of the downloaded wheel (a zip; nothing is installed or
extracted), and executes it as a fresh module while ``sys.modules`` holds stand-ins for
``fusion_bench``, ``fusion_bench.utils`` (``timeit_context`` = a null context) and
``fusion_bench.utils.type`` (``StateDictType`` = dict). The stand-ins are removed afterwards
(``patch.dict``), so nothing named ``fusion_bench`` leaks into other tests. The wheel sits in the
cache (setup.sh downloads it); without it the tests skip and say how to get it.

What is compared: FusionBench's merged task vector, scaled as its algorithm classes scale it
(``TaskSingularVectorMerging.run``: × alpha, or a per-model list applied to τ_k before the SVD;
``IsotropicMergingIn…run``: × scaling_factor), plus the base, against our method's
``merge_tensor`` for every tensor of a tiny random state dict: 2-D blocks (tall, wide, a rank not
divisible by T), an embedding, norms and biases, and an excluded name.
"""

from __future__ import annotations

import contextlib
import sys
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import torch

from recall_merge.config import MergeConfig
from recall_merge.io.cache import cache_dir
from recall_merge.io.pool import tensor_position
from recall_merge.methods.registry import get_method

WHEEL_NAME = "fusion_bench-0.2.33-py3-none-any.whl"
TSVM_FILE = "fusion_bench/method/task_singular_vector/utils/TSVM_utils.py"
ISO_FILE = "fusion_bench/method/isotropic_merging/iso_utils.py"
TOLERANCE = 1e-5
NUM_LAYERS = 2


def _wheel() -> Path:
    wheel = cache_dir() / "wheels" / WHEEL_NAME
    if not wheel.is_file():
        pytest.skip(f"FusionBench's wheel is not at {wheel}; get it with: pip download --no-deps "
                    f"fusion-bench==0.2.33 -d \"{cache_dir() / 'wheels'}\" (setup.sh does this)")
    return wheel


def _load_from_wheel(relative: str, more_stubs: Mapping[str, Mapping[str, Any]] | None = None,
                     package: str | None = None) -> types.ModuleType:
    """One FusionBench source file as a module, its fusion_bench imports stubbed (see above).

    ``more_stubs``: further stand-in modules, name → attributes (added to the ones above, or
    added to), for files that import more; ``package``: the file's package, so that its relative
    imports (``from .utils import …``) find the stand-in named ``package + ".utils"``."""
    with zipfile.ZipFile(_wheel()) as archive:
        source = archive.read(relative).decode("utf-8")
    root = types.ModuleType("fusion_bench")
    utils = types.ModuleType("fusion_bench.utils")
    utils.timeit_context = lambda *args, **kwargs: contextlib.nullcontext()  # type: ignore[attr-defined]
    type_module = types.ModuleType("fusion_bench.utils.type")
    type_module.StateDictType = dict  # type: ignore[attr-defined]
    root.utils = utils  # type: ignore[attr-defined]
    utils.type = type_module  # type: ignore[attr-defined]
    stubs = {"fusion_bench": root, "fusion_bench.utils": utils, "fusion_bench.utils.type": type_module}
    for name, attributes in (more_stubs or {}).items():
        stubs.setdefault(name, types.ModuleType(name)).__dict__.update(attributes)
    module = types.ModuleType(f"fusionbench_reference_{Path(relative).stem}")
    module.__file__ = f"{_wheel()}/{relative}"
    module.__package__ = package
    with patch.dict(sys.modules, stubs):
        exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - pinned wheel's source
    return module


@pytest.fixture(scope="module")
def tsvm_utils() -> types.ModuleType:
    return _load_from_wheel(TSVM_FILE)


@pytest.fixture(scope="module")
def iso_utils() -> types.ModuleType:
    return _load_from_wheel(ISO_FILE)


def _state_dicts(num_experts: int, seed: int) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A tiny 2-block model: its base and ``num_experts`` experts (base + seeded noise)."""
    generator = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (40, 12),
        "model.layers.0.self_attn.q_proj.weight": (12, 12),
        "model.layers.0.self_attn.q_proj.bias": (12,),
        "model.layers.0.mlp.up_proj.weight": (30, 12),    # tall
        "model.layers.0.mlp.down_proj.weight": (12, 30),  # wide
        "model.layers.0.input_layernorm.weight": (12,),
        "model.layers.1.self_attn.o_proj.weight": (11, 13),  # rank 11: not divisible by T
        "model.layers.1.post_attention_layernorm.weight": (12,),
        "model.norm.weight": (12,),
        "lm_head.weight": (40, 12),
    }
    base = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    experts = [{name: tensor + 0.05 * torch.randn(tensor.shape, generator=generator)
                for name, tensor in base.items()} for _ in range(num_experts)]
    return base, experts


def _ours(method: str, parameters: dict[str, Any], base: dict[str, torch.Tensor],
          experts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    config = MergeConfig(method=method, base="/b", models=[f"/m{k}" for k in range(len(experts))],
                         output=Path("/o"), parameters=parameters)
    merger = get_method(method)(config.method_parameters(), config, NUM_LAYERS)
    return {name: merger.merge_tensor(name, tensor_position(name, NUM_LAYERS), tensor.clone(),
                                      [expert[name].clone() for expert in experts])
            for name, tensor in base.items()}


def _task_vectors(base: dict[str, torch.Tensor], experts: list[dict[str, torch.Tensor]],
                  weights: list[float] | None = None) -> list[dict[str, torch.Tensor]]:
    weights = weights or [1.0] * len(experts)
    return [{name: w * (expert[name] - base[name]) for name in base} for w, expert in zip(weights, experts, strict=True)]


def _assert_close(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == reference.keys()
    for name in reference:
        difference = (ours[name] - reference[name]).abs().max().item()
        assert difference <= TOLERANCE, f"{name}: max |Δ| = {difference:.2e}"


@pytest.mark.parametrize("num_experts", [1, 2, 3, 4])
def test_tsv_m_matches_fusionbench(tsvm_utils, num_experts: int) -> None:
    base, experts = _state_dicts(num_experts, seed=num_experts)
    merged = tsvm_utils.compute_and_sum_svd_mem_reduction(_task_vectors(base, experts), accelerator="cpu")
    # TaskSingularVectorMerging.run with a float alpha: the merged task vector × alpha, + base.
    reference = {name: base[name] + 0.7 * merged[name] for name in base}
    _assert_close(_ours("tsv_m", {"alpha": 0.7}, base, experts), reference)


def test_tsv_m_per_model_weights_and_exclusions_match_fusionbench(tsvm_utils) -> None:
    base, experts = _state_dicts(3, seed=11)
    weights = [0.5, 1.0, 2.0]
    excluded = ["model.embed_tokens.weight", "model.layers.1.self_attn.o_proj.weight"]
    # run() with a list alpha scales each τ_k before the SVD and applies no global scale.
    merged = tsvm_utils.compute_and_sum_svd_mem_reduction(
        _task_vectors(base, experts, weights), exclude_keys=excluded, accelerator="cpu")
    reference = {name: base[name] + merged[name] for name in base}
    ours = _ours("tsv_m", {"weights": weights, "exclude": ["model.embed_tokens.*", "*.o_proj.weight"]},
                 base, experts)
    _assert_close(ours, reference)


@pytest.mark.parametrize("num_experts", [1, 2, 3])
def test_iso_c_matches_fusionbench(iso_utils, num_experts: int) -> None:
    base, experts = _state_dicts(num_experts, seed=20 + num_experts)
    merged = iso_utils.iso_c(_task_vectors(base, experts), accelerator="cpu")
    reference = {name: base[name] + 1.3 * merged[name] for name in base}
    _assert_close(_ours("iso_c", {"alpha": 1.3}, base, experts), reference)


def test_iso_c_exclusions_match_fusionbench(iso_utils) -> None:
    base, experts = _state_dicts(2, seed=30)
    merged = iso_utils.iso_c(_task_vectors(base, experts), accelerator="cpu", exclude_keys=["lm_head.weight"])
    reference = {name: base[name] + merged[name] for name in base}
    _assert_close(_ours("iso_c", {"exclude": ["lm_head.weight"]}, base, experts), reference)


@pytest.mark.parametrize(("num_experts", "fraction"), [(1, 0.8), (2, 0.8), (3, 0.8), (4, 0.5), (3, 1.0), (2, 0.3)])
def test_iso_cts_matches_fusionbench(iso_utils, num_experts: int, fraction: float) -> None:
    base, experts = _state_dicts(num_experts, seed=40 + num_experts)
    merged = iso_utils.iso_cts(_task_vectors(base, experts), common_space_fraction=fraction,
                               accelerator="cpu", exclude_keys=["model.norm.weight"])
    reference = {name: base[name] + 1.1 * merged[name] for name in base}
    ours = _ours("iso_cts", {"alpha": 1.1, "common_space_fraction": fraction, "exclude": ["model.norm.weight"]},
                 base, experts)
    _assert_close(ours, reference)
