"""The continual merges OPCM and DOP: FusionBench 0.2.33's own runs on the same tiny models over
three tasks (≤ 1e-5, float32), properties of the maths, the state OPCM carries between steps,
and a tiny continual run with both as ``library: previous`` strategies.

FusionBench without installing it (see tests/test_vs_fusionbench.py, whose loader this reuses):
``method/opcm/opcm.py`` and ``method/dop/dop.py`` are executed from the wheel together with the
FusionBench files they call (``opcm/utils.py``, ``dop/utils.py``, ``dop/min_norm_solvers.py``,
``method/simple_average.py``, ``utils/parameters.py``, ``utils/state_dict_arithmetic.py``,
``models/utils.py``), with stand-ins only for what the runs do not compute with: lightning's seed,
logging, profiling, the CLIP task pool, the fabric (device cpu, one process). Their ``run`` methods
then run unchanged on a model pool of the tiny Llama checkpoints loaded as transformers modules:
their loop over leaf modules decides which weights are ``nn.Linear`` ones, as it does for CLIP.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from test_vs_fusionbench import _load_from_wheel

from recall_merge import merge
from recall_merge.config import MergeConfig
from recall_merge.errors import CheckpointError, ConfigError
from recall_merge.io.pool import tensor_position
from recall_merge.methods.base import MERGE_STATE_NAME
from recall_merge.methods.dop import DopParameters, dop_merge_matrix, min_norm_weights
from recall_merge.methods.opcm import project_out
from recall_merge.methods.registry import get_method

TOLERANCE = 1e-5
DOP_STEPS = 20  # the three-task runs; the per-matrix test below uses the default 200


# --- FusionBench, run from its wheel ------------------------------------------------------------

class _Fabric:
    device = torch.device("cpu")
    world_size = 1

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def to_device(self, value: Any) -> Any:
        return value


class _LightningFabricMixin:
    fabric = _Fabric()
    log_dir = None


class _SimpleProfilerMixin:
    def profile(self, *args: Any) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def print_profile_summary(self, *args: Any) -> None:
        pass


class _BaseAlgorithm:
    _program = types.SimpleNamespace(taskpool=types.SimpleNamespace(_test_datasets={}))

    def __init__(self, **kwargs: Any) -> None:
        pass


def _public(module: types.ModuleType) -> dict[str, Any]:
    return {name: value for name, value in vars(module).items() if not name.startswith("__")}


@pytest.fixture(scope="module")
def fusionbench() -> types.SimpleNamespace:
    """FusionBench's OPCM and DOP modules, with the FusionBench files they use."""
    typing_stubs = {"fusion_bench.utils.type": {"TorchModelType": torch.nn.Module,
                                                "BoolStateDictType": dict}}
    parameters = _load_from_wheel("fusion_bench/utils/parameters.py", typing_stubs, "fusion_bench.utils")
    arithmetic = _load_from_wheel("fusion_bench/utils/state_dict_arithmetic.py", typing_stubs,
                                  "fusion_bench.utils")
    model_utils = _load_from_wheel("fusion_bench/models/utils.py",
                                   {**typing_stubs, "fusion_bench.utils.dict": {"dict_merge": None}})
    shared = {
        **typing_stubs,
        "fusion_bench": {"BaseAlgorithm": _BaseAlgorithm, "BaseModelPool": object,
                         "auto_register_config": lambda cls: cls},
        "fusion_bench.mixins": {"LightningFabricMixin": _LightningFabricMixin,
                                "SimpleProfilerMixin": _SimpleProfilerMixin,
                                "auto_register_config": lambda cls: cls},
        "fusion_bench.method.base_algorithm": {"BaseAlgorithm": _BaseAlgorithm},
        "fusion_bench.modelpool": {"BaseModelPool": object},
        "fusion_bench.models.utils": _public(model_utils),
        "fusion_bench.utils": {"instantiate": None, "LazyStateDict": dict,
                               "seed_everything_by_time": lambda *args: None},
        "fusion_bench.utils.json": {"load_from_json": None, "save_to_json": None},
        "fusion_bench.utils.parameters": _public(parameters),
        "fusion_bench.utils.state_dict_arithmetic": _public(arithmetic),
        "fusion_bench.taskpool": {"CLIPVisionModelTaskPool": object},
        "lightning": {"seed_everything": lambda *args, **kwargs: None},
        "omegaconf": {"DictConfig": dict},
        "transformers": {"CLIPVisionModel": torch.nn.Module},
    }
    opcm_utils = _load_from_wheel("fusion_bench/method/opcm/utils.py", shared)
    opcm = _load_from_wheel("fusion_bench/method/opcm/opcm.py",
                            {**shared, "fusion_bench.method.opcm.utils": _public(opcm_utils)},
                            "fusion_bench.method.opcm")
    simple_average = _load_from_wheel("fusion_bench/method/simple_average.py", shared)
    solvers = _load_from_wheel("fusion_bench/method/dop/min_norm_solvers.py")
    dop_utils = _load_from_wheel("fusion_bench/method/dop/utils.py", shared)
    dop = _load_from_wheel("fusion_bench/method/dop/dop.py", {
        **shared, "fusion_bench.method.simple_average": _public(simple_average),
        "fusion_bench.method.dop.min_norm_solvers": _public(solvers),
        "fusion_bench.method.dop.utils": _public(dop_utils)}, "fusion_bench.method.dop")
    return types.SimpleNamespace(opcm=opcm, dop=dop)


class _ModelPool:
    """FusionBench's model-pool interface over tiny Llama folders."""

    def __init__(self, base: Path, models: list[Path]) -> None:
        self.base = base
        self.folders = {f"model_{k}": folder for k, folder in enumerate(models)}

    @property
    def model_names(self) -> list[str]:
        return list(self.folders)

    @staticmethod
    def _load(folder: Path) -> torch.nn.Module:
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)

    def load_pretrained_model(self) -> torch.nn.Module:
        return self._load(self.base)

    def load_model(self, name: str) -> torch.nn.Module:
        return self._load(self.folders[name])


def _run_steps(algorithm: Any, base: Path, models: list[Path]) -> list[dict[str, torch.Tensor]]:
    """FusionBench's ``run`` over ``models``; the model after every step, where its
    ``save_on_every_step`` would save it."""
    saved: list[dict[str, torch.Tensor]] = []
    algorithm.save_on_every_step = True
    algorithm.save_merged_model = lambda model, step: saved.append(
        {name: tensor.detach().clone() for name, tensor in model.state_dict().items()})
    algorithm.run(_ModelPool(base, models))
    return saved


def _fusionbench_opcm(fusionbench, base: Path, models: list[Path], alpha: float
                      ) -> list[dict[str, torch.Tensor]]:
    algorithm = fusionbench.opcm.OPCMForCLIP(alpha=alpha, shuffle_order=False,
                                             evaluate_on_every_step=False)
    return _run_steps(algorithm, base, models)


def _fusionbench_dop(fusionbench, base: Path, models: list[Path], **options: Any
                     ) -> list[dict[str, torch.Tensor]]:
    algorithm = fusionbench.dop.ContinualDOPForCLIP(
        seed=0, shuffle_order=False, evaluate_on_every_step=False, **{**_dop_defaults(), **options})
    return _run_steps(algorithm, base, models)


def _dop_defaults() -> dict[str, Any]:
    """FusionBench's dop.yaml, as our defaults state them (checked in the test below)."""
    return DopParameters().model_dump(exclude={"exclude"})


# --- our side -----------------------------------------------------------------------------------

def _merge(method: str, base: Path, models: list[Path], output: Path, **parameters: Any) -> Path:
    shutil.rmtree(output, ignore_errors=True)
    return merge({"method": method, "base": str(base), "models": [str(m) for m in models],
                  "output": str(output), "parameters": parameters}, quiet=True).output


def _steps(method: str, tiny_models, folder: Path, **parameters: Any) -> list[Path]:
    """Three continual steps: [e1], then [previous merge, e2], then [previous merge, e3]."""
    outputs: list[Path] = []
    for step, expert in enumerate(("e1", "e2", "e3"), 1):
        models = [tiny_models[expert]] if not outputs else [outputs[-1], tiny_models[expert]]
        outputs.append(_merge(method, tiny_models["base"], models, folder / f"step{step}", **parameters))
    return outputs


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _max_difference(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    assert ours.keys() == reference.keys()
    return max((ours[name] - reference[name].float()).abs().max().item() for name in reference)


@pytest.fixture(scope="module")
def opcm_steps(tiny_models, tmp_path_factory) -> list[Path]:
    return _steps("opcm", tiny_models, tmp_path_factory.mktemp("opcm"))


@pytest.fixture(scope="module")
def dop_steps(tiny_models, tmp_path_factory) -> list[Path]:
    return _steps("dop", tiny_models, tmp_path_factory.mktemp("dop"), num_steps=DOP_STEPS)


# --- equality with FusionBench ------------------------------------------------------------------

def test_opcm_matches_fusionbench_over_three_tasks(fusionbench, tiny_models, opcm_steps):
    experts = [tiny_models[name] for name in ("e1", "e2", "e3")]
    references = _fusionbench_opcm(fusionbench, tiny_models["base"], experts, alpha=0.5)
    assert len(references) == 3
    for step, (ours, reference) in enumerate(zip(opcm_steps, references, strict=True), 1):
        assert _max_difference(_weights(ours), reference) <= TOLERANCE, f"step {step}"


def test_opcm_matches_fusionbench_with_another_alpha(fusionbench, tiny_models, tmp_path):
    experts = [tiny_models[name] for name in ("e1", "e2", "e3")]
    # one merge over the three experts: the chain, the same model as three continual steps
    ours = _merge("opcm", tiny_models["base"], experts, tmp_path / "chain", alpha=0.9)
    reference = _fusionbench_opcm(fusionbench, tiny_models["base"], experts, alpha=0.9)[-1]
    assert _max_difference(_weights(ours), reference) <= TOLERANCE


def test_dop_matches_fusionbench_over_three_tasks(fusionbench, tiny_models, dop_steps):
    experts = [tiny_models[name] for name in ("e1", "e2", "e3")]
    references = _fusionbench_dop(fusionbench, tiny_models["base"], experts, num_steps=DOP_STEPS)
    assert len(references) == 3
    for step, (ours, reference) in enumerate(zip(dop_steps, references, strict=True), 1):
        assert _max_difference(_weights(ours), reference) <= TOLERANCE, f"step {step}"
    assert _max_difference(_weights(dop_steps[0]), _weights(experts[0])) == 0.0, "step 1: expert 1"


def test_dop_defaults_are_fusionbench_config():
    import zipfile

    import yaml
    from test_vs_fusionbench import _wheel

    with zipfile.ZipFile(_wheel()) as archive:
        config = yaml.safe_load(archive.read("fusion_bench_config/method/dop/dop.yaml"))
    for key, value in _dop_defaults().items():
        # PyYAML reads 1e-4 (no dot) as a string
        found = float(config[key]) if isinstance(value, float) else config[key]
        assert found == value, key


@pytest.mark.parametrize("options", [
    {},  # the defaults: 200 steps, MGDA with EMA, both projections
    {"svd_proj_space": "u", "ema": False},
    {"svd_proj_space": "v", "mgda": False, "alpha": 0.3},
])
def test_dop_matrix_step_matches_fusionbench(fusionbench, options):
    generator = torch.Generator().manual_seed(5)
    base = torch.randn(24, 16, generator=generator)
    previous = base + 0.05 * torch.randn(24, 16, generator=generator)
    new = base + 0.05 * torch.randn(24, 16, generator=generator)
    parameters = DopParameters(**options)
    algorithm = fusionbench.dop.ContinualDOPForCLIP(
        seed=0, **parameters.model_dump(exclude={"exclude"}))
    reference = algorithm._optimize_weight(base, {"merged": previous, "new": new}, "w", 1)
    ours = dop_merge_matrix(base, previous, new, parameters).merged
    assert (ours - reference).abs().max().item() <= TOLERANCE


# --- properties ---------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(rows=st.integers(2, 12), columns=st.integers(2, 12), alpha=st.floats(0, 1),
       rank=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_opcm_update_is_orthogonal_to_what_it_protects(rows, columns, alpha, rank, seed):
    generator = torch.Generator().manual_seed(seed)
    rank = min(rank, rows, columns)
    previous = (torch.randn(rows, rank, generator=generator, dtype=torch.float64)
                @ torch.randn(rank, columns, generator=generator, dtype=torch.float64))
    task = torch.randn(rows, columns, generator=generator, dtype=torch.float64)
    update, found_rank, protected = project_out(previous, task, alpha)
    assert found_rank == rank and 0 <= protected <= rank
    u, s, vh = torch.linalg.svd(previous, full_matrices=False)
    coordinates = u[:, :rank].T @ update @ vh[:rank].T
    scale = task.abs().max().item()
    # no component on any singular pair of the previous merge, none in its protected block
    assert coordinates.diagonal().abs().max().item() <= 1e-9 * scale
    assert coordinates[:protected, :protected].abs().sum().item() <= 1e-9 * scale * protected**2
    assert abs(torch.sum(update * previous).item()) <= 1e-9 * scale * previous.abs().sum().item()
    # what it removed is only those coordinates: a projection (applying it twice changes nothing)
    again, _, _ = project_out(previous, update, alpha)
    assert torch.allclose(again, update, atol=1e-9 * scale)
    # and whatever lies outside the previous merge's column space, or outside its row space, is kept
    left, right = u[:, :rank], vh[:rank].T
    assert torch.allclose(update - left @ (left.T @ update), task - left @ (left.T @ task),
                          atol=1e-9 * scale)
    assert torch.allclose(update - (update @ right) @ right.T, task - (task @ right) @ right.T,
                          atol=1e-9 * scale)


def _method(name: str, models: int, base: str = "/b", **parameters: Any):
    config = MergeConfig(method=name, base=base, models=[f"/m{k}" for k in range(models)],
                         output=Path("/o"), parameters=parameters)
    return get_method(name)(config.method_parameters(), config, 2)


@settings(max_examples=20, deadline=None)
@given(method=st.sampled_from(["opcm", "dop"]), shape=st.sampled_from([(6,), (5, 7), (8, 3)]),
       seed=st.integers(0, 2**16))
def test_the_first_step_is_the_first_expert(method, shape, seed):
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator)
    expert = base + 0.1 * torch.randn(shape, generator=generator)
    merger = _method(method, 1)
    name = "model.layers.0.mlp.up_proj.weight" if len(shape) == 2 else "model.norm.weight"
    merged = merger.merge_tensor(name, tensor_position(name, 2), base.clone(), [expert.clone()])
    assert torch.equal(merged, expert)  # FusionBench's step 0: the first model itself
    if method == "opcm":
        state = merger.state()
        assert state["tasks_merged"] == 1 and state["lambda"] == 1.0
        assert state["task_vector_norms"][0] == pytest.approx(torch.linalg.norm(expert - base).item())


@settings(max_examples=20, deadline=None)
@given(first=st.lists(st.floats(-3, 3), min_size=4, max_size=4),
       second=st.lists(st.floats(-3, 3), min_size=4, max_size=4))
def test_min_norm_weights_minimise_the_combined_norm(first, second):
    g1, g2 = torch.tensor(first), torch.tensor(second)
    gamma, rest = min_norm_weights(g1, g2)
    assert 0.0 <= gamma <= 1.0 and rest == pytest.approx(1 - gamma, abs=1e-6)
    grid = min(torch.linalg.norm(c * g1 + (1 - c) * g2).item() for c in torch.linspace(0, 1, 201))
    largest = max(torch.linalg.norm(g1).item(), torch.linalg.norm(g2).item())
    assert torch.linalg.norm(gamma * g1 + rest * g2).item() <= grid + 2e-3 * largest + 1e-6


def test_dop_keeps_what_both_models_agree_on_and_stays_finite():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(10, 6, generator=generator)
    expert = base + 0.05 * torch.randn(10, 6, generator=generator)
    options = DopParameters(num_steps=20)
    # the same model twice: both losses are 0 at the start (FusionBench divides 0 by 0 here)
    same = dop_merge_matrix(base, expert, expert.clone(), options)
    assert torch.equal(same.merged, expert)
    # a matrix one of them did not change (a LoRA target the other lacked): finite, in between
    untouched = dop_merge_matrix(base, base.clone(), expert, options)
    assert untouched.ranks[0] == 0 and torch.isfinite(untouched.merged).all()
    # with no steps, DOP is the mean of the two
    zero_steps = dop_merge_matrix(base, base + 1.0, expert, DopParameters(num_steps=0)).merged
    assert torch.equal(zero_steps, torch.stack((base + 1.0, expert)).mean(dim=0))


# --- the state OPCM carries between steps -----------------------------------------------------

def test_opcm_state_tracks_the_steps(opcm_steps):
    states = [json.loads((step / MERGE_STATE_NAME).read_text()) for step in opcm_steps]
    assert [s["tasks_merged"] for s in states] == [1, 2, 3]
    assert states[2]["task_vector_norms"][:2] == states[1]["task_vector_norms"]
    for state in states:
        # the merge's task vector has the mean norm of the task vectors so far
        mean = sum(state["task_vector_norms"]) / len(state["task_vector_norms"])
        assert state["merged_task_vector_norm"] == pytest.approx(mean, rel=1e-5)
    # nearly orthogonal updates of similar norms: λ_t ≈ √t
    assert [s["lambda"] for s in states] == pytest.approx([1.0, math.sqrt(2), math.sqrt(3)], rel=0.1)
    report = json.loads((opcm_steps[2] / "recall_report.json").read_text())
    assert report["applied"]["continued_from"]["tasks_merged"] == 2
    up = report["layers"][0]["tensors"]["model.layers.0.mlp.up_proj.weight"]
    assert up["merged_as"] == "projection" and up["previous_rank"] == [64]
    assert report["outside_blocks"]["tensors"]["model.embed_tokens.weight"]["merged_as"] == "sum"


def test_a_previous_merge_without_a_usable_state_is_refused(opcm_steps, tiny_models, tmp_path):
    base, e3 = tiny_models["base"], tiny_models["e3"]
    copy = tmp_path / "copy"
    shutil.copytree(opcm_steps[1], copy)
    state = json.loads((copy / MERGE_STATE_NAME).read_text())

    (copy / MERGE_STATE_NAME).write_text(json.dumps({**state, "lambda": -1.0}))
    with pytest.raises(CheckpointError, match="not a valid OPCM state: lambda"):
        _merge("opcm", base, [copy, e3], tmp_path / "out")
    (copy / MERGE_STATE_NAME).write_text(json.dumps({**state, "task_vector_norms": [1.0]}))
    with pytest.raises(CheckpointError, match="2 entries|1 entries"):
        _merge("opcm", base, [copy, e3], tmp_path / "out")
    # weights changed since (here: another step's), or another base: the norm does not match
    (copy / MERGE_STATE_NAME).write_text(json.dumps({**state, "merged_task_vector_norm": 1.0}))
    with pytest.raises(CheckpointError, match="does not match its merge_state.json") as error:
        _merge("opcm", base, [copy, e3], tmp_path / "out")
    assert "the base that merge was made on" in error.value.fix
    (copy / MERGE_STATE_NAME).unlink()
    with pytest.raises(CheckpointError, match="holds no merge_state.json"):
        _merge("opcm", base, [copy, e3], tmp_path / "out")
    with pytest.raises(ConfigError, match="there is no new expert"):
        _merge("opcm", base, [opcm_steps[1]], tmp_path / "out")
    with pytest.raises(ConfigError, match="only the first model may be one"):
        _merge("opcm", base, [tiny_models["e1"], opcm_steps[1]], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_state_is_not_copied_from_the_base(opcm_steps, tiny_models, tmp_path):
    # a linear merge on an OPCM output as its base: the base's state would describe another model
    output = _merge("linear", opcm_steps[0], [tiny_models["e2"]], tmp_path / "linear")
    assert not (output / MERGE_STATE_NAME).exists()


@pytest.mark.parametrize("method", ["opcm", "dop"])
def test_the_base_as_previous_merge_means_nothing_merged_yet(method, tiny_models, tmp_path):
    # guard_newest left the first expert out, so library: previous hands over the base
    after_base = _merge(method, tiny_models["base"], [tiny_models["base"], tiny_models["e2"]],
                        tmp_path / "after_base")
    alone = _merge(method, tiny_models["base"], [tiny_models["e2"]], tmp_path / "alone")
    assert _max_difference(_weights(after_base), _weights(alone)) == 0.0
    if method == "opcm":
        assert json.loads((after_base / MERGE_STATE_NAME).read_text())["tasks_merged"] == 1


# --- a tiny continual run -----------------------------------------------------------------------

def test_continual_run_with_opcm_and_dop(tiny_models, tmp_path):
    from recall_merge.continual.config import load_continual_config
    from recall_merge.continual.runner import ContinualRun

    config = {
        "model": str(tiny_models["base"]), "tasks": ["synthetic:alpha", "synthetic-gen:gamma"],
        "max_train": 16, "max_dev": 4, "max_test": 8, "seed": 3, "run_dir": str(tmp_path / "run"),
        "strategies": ["merge:opcm:previous", "merge:dop:previous", "merge:opcm:experts"],
        "training": {"mode": "full", "epochs": 1, "batch_size": 8, "learning_rate": 0.003,
                     "max_length": 48, "progress": False},
        "evaluation": {"batch_size": 16, "max_length": 48, "max_new_tokens": 3},
        "merge_samples": 8, "merge_parameters": {"dop": {"num_steps": 20}},
    }
    results = ContinualRun(load_continual_config(config), quiet=True).run()
    for name in ("merge:opcm:previous:base", "merge:dop:previous:base", "merge:opcm:experts:base"):
        entry = results["methods"][name]
        assert "error" not in entry, (name, entry.get("error"))
        assert len(entry["R"]) == 3 and all(math.isfinite(v) for row in entry["R"] for v in row)
        assert math.isfinite(entry["AP"])
    strategies = tmp_path / "run" / "strategies"
    # step 2 of library: previous read step 1's state; library: experts ran the chain again
    state = json.loads((strategies / "merge_opcm_previous_base" / "step2" / MERGE_STATE_NAME).read_text())
    assert state["tasks_merged"] == 2
    assert _max_difference(_weights(strategies / "merge_opcm_previous_base" / "step2"),
                           _weights(strategies / "merge_opcm_experts_base" / "step2")) <= TOLERANCE


@pytest.mark.parametrize("method", ["opcm", "dop"])
def test_lora_experts_leave_the_untouched_matrices_alone(method, tiny_models, tiny_loras, tmp_path):
    # LoRA task vectors are of low rank and zero outside their targets (q_proj, v_proj): the
    # degenerate cases FusionBench's code turns into NaN (DOP) or an arbitrary basis (OPCM)
    base = tiny_models["base"]
    options = {"num_steps": 10} if method == "dop" else {}
    first = _merge(method, base, [tiny_loras["l1"]], tmp_path / "step1", **options)
    second = _merge(method, base, [first, tiny_loras["l2"]], tmp_path / "step2", **options)
    merged, original = _weights(second), _weights(base)
    assert all(torch.isfinite(tensor).all() for tensor in merged.values())
    untouched = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(merged[untouched], original[untouched])
    touched = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[touched], original[touched])
    report = json.loads((second / "recall_report.json").read_text())
    record = report["layers"][0]["tensors"][touched]
    if method == "opcm":
        assert record["previous_rank"] == [4]  # the rank-4 adapter's update, not min(m, n)
    else:
        assert record["steps"][0]["ranks"] == [3, 3]  # the share reaches ε at the 4th value
