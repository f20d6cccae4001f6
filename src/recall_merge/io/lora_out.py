"""Writing LoRA adapters: a merge of LoRA experts as one adapter, and a LoRA extracted from a model.

**A merge as a LoRA** (``output_format: lora``). When every expert is a LoRA adapter of the base,
the merged model differs from the base only where some adapter acts, and per module that change
ΔW = θ_merged − θ_base is written as PEFT factors (``lora_B · lora_A``, scale 1):

- where the method is linear in the task vectors (task arithmetic, linear with ``normalize``,
  RECALL's paper and task-vector forms, DARE at density 1, ...), ΔW = Σ_k c_k B_k A_k, so the
  factors are the experts' own, concatenated and scaled: exact, with no SVD, of rank ≤ Σ r_k.
  Linearity is not assumed from the method's name: it is read off the method's own tensor
  function on probe vectors (coefficients from one-hot probes, then confirmed on random ones);
- a requested ``rank`` below Σ r_k, or an ``energy`` below 1, truncates the SVD of ΔW, computed
  from the factors (QR of each side, SVD of the small core: the cost is Σ r_k, not the matrix);
- any other method (TIES, MagMax, the SVD merges, ...) gives ΔW densely; its SVD is truncated to
  the requested rank or energy, or, when neither is given, to its numerical rank (exact).

The relative Frobenius error ‖ΔW − B·A‖ / ‖ΔW‖ of every module is reported. A tensor an expert
replaces outright (PEFT ``modules_to_save``: a trained head, norm or embedding) is no low-rank
change: the merged tensor is written whole, under ``modules_to_save``, which PEFT loads natively.
A tensor no expert changes is not written (every method leaves a tensor that all models share as
it is; this is checked on probes, so a method that would change it, such as ``linear`` without
``normalize``, is refused).

**extract-lora** (``recall extract-lora MERGED --base BASE --rank R``) follows
``mergekit-extract-lora`` 0.1.5: per ``nn.Linear`` module the SVD of W_merged − W_base (float32)
truncated to rank R, split as A = √S·Vᵀ, B = U·√S (lora_alpha = r, so the scale is 1); input and
output embeddings and every module that is not a linear layer (norms) are saved whole in
``modules_to_save``; a linear layer's bias delta goes to ``lora_B.bias``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from recall_merge.errors import CheckpointError, ConfigError, OutputError, excerpt
from recall_merge.io import atomic
from recall_merge.io.reader import all_finite, check_finite
from recall_merge.io.writer import StreamingShardWriter

if TYPE_CHECKING:
    from recall_merge.config import MergeConfig
    from recall_merge.io.pool import ModelPool
    from recall_merge.methods.base import MergeMethod

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
_ONE_FILE = 10**15  # a PEFT adapter is one safetensors file: no shard limit
_PROBE_LENGTH = 256
_PROBE_TOLERANCE = 1e-5  # relative: float32 rounding of a linear method is ~1e-7


# ----------------------------------------------------------------------------- factor maths
@dataclass
class ModuleFactors:
    """One module's LoRA: ΔW ≈ lora_b · lora_a, with how it was obtained and its error."""

    module: str  # the module's name in the base model ("model.layers.0.self_attn.q_proj")
    lora_b: torch.Tensor  # out × r
    lora_a: torch.Tensor  # r × in
    relative_error: float
    how: str  # "concatenated" | "svd of the factors" | "svd of the merged delta"

    @property
    def rank(self) -> int:
        return int(self.lora_a.shape[0])


def numerical_tolerance(singular: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> float:
    """Singular values at or below this are rounding noise (numpy's matrix_rank rule)."""
    if singular.numel() == 0:
        return 0.0
    return float(singular.max()) * max(shape) * torch.finfo(dtype).eps


def kept_rank(singular: torch.Tensor, *, rank: int | None, energy: float | None,
              tolerance: float = 0.0) -> int:
    """How many leading singular directions to keep: those above ``tolerance``, then the fewest
    whose squared singular values reach ``energy`` of the total, then at most ``rank``."""
    squares = singular.double() ** 2
    total = float(squares.sum())
    if total == 0.0:
        return 0
    keep = int((singular > tolerance).sum())
    if energy is not None and energy < 1.0:
        share = torch.cumsum(squares, 0) / total
        # the first index whose cumulative share reaches the target (a hair under it counts: the
        # cumulative sum of a full spectrum rounds to 1 - 1e-16, not 1)
        reached = int(torch.searchsorted(share, torch.tensor(energy - 1e-12, dtype=share.dtype)))
        keep = min(keep, reached + 1)
    if rank is not None:
        keep = min(keep, rank)
    return max(keep, 1)


def truncation_error(singular: torch.Tensor, keep: int) -> float:
    """‖ΔW − ΔW_keep‖_F / ‖ΔW‖_F from the singular values (Eckart–Young)."""
    squares = singular.double() ** 2
    total = float(squares.sum())
    return 0.0 if total == 0.0 else math.sqrt(max(float(squares[keep:].sum()), 0.0) / total)


def split_svd(u: torch.Tensor, singular: torch.Tensor, vh: torch.Tensor, keep: int,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) = (U_k √S_k, √S_k V_kᵀ): the singular values shared evenly between the two factors,
    as mergekit-extract-lora does by default (distribute_scale)."""
    root = torch.sqrt(singular[:keep])
    return u[:, :keep] * root, root[:, None] * vh[:keep]


def svd_of_factors(lora_b: torch.Tensor, lora_a: torch.Tensor,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thin SVD of B·A (out × r times r × in) without forming it: B = Q_b R_b and Aᵀ = Q_a R_a,
    so B·A = Q_b (R_b R_aᵀ) Q_aᵀ, and only the r × r core is decomposed. Float64 throughout."""
    q_b, r_b = torch.linalg.qr(lora_b.double())
    q_a, r_a = torch.linalg.qr(lora_a.double().T)
    u_core, singular, vh_core = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    return q_b @ u_core, singular, vh_core @ q_a.T


def factorise_low_rank(module: str, lora_b: torch.Tensor, lora_a: torch.Tensor, *, rank: int | None,
                       energy: float | None) -> ModuleFactors | None:
    """ΔW = lora_b · lora_a (concatenated expert factors) as a LoRA: the factors themselves when
    nothing is truncated and they are no wider than the matrix; else the truncated SVD of the
    product, computed from the factors. None when ΔW is zero."""
    inner = lora_a.shape[0]
    if inner == 0:
        return None
    truncating = (rank is not None and rank < inner) or (energy is not None and energy < 1.0)
    if not truncating and inner <= min(lora_b.shape[0], lora_a.shape[1]):
        if not (bool(lora_b.any()) and bool(lora_a.any())):
            return None
        return ModuleFactors(module, lora_b, lora_a, 0.0, "concatenated")
    u, singular, vh = svd_of_factors(lora_b, lora_a)
    tolerance = numerical_tolerance(singular, (lora_b.shape[0], lora_a.shape[1]), torch.float32)
    keep = kept_rank(singular, rank=rank, energy=energy, tolerance=tolerance)
    if keep == 0:
        return None
    new_b, new_a = split_svd(u, singular, vh, keep)
    return ModuleFactors(module, new_b.float(), new_a.float(), truncation_error(singular, keep),
                         "svd of the factors")


def factorise_dense(module: str, delta: torch.Tensor, *, rank: int | None, energy: float | None,
                    ) -> ModuleFactors | None:
    """A dense ΔW (float32, 2-D) as a LoRA by truncated SVD; None when ΔW is zero."""
    if not bool(delta.any()):
        return None
    u, singular, vh = torch.linalg.svd(delta.to(torch.float32), full_matrices=False)
    keep = kept_rank(singular, rank=rank, energy=energy,
                     tolerance=numerical_tolerance(singular, tuple(delta.shape), torch.float32))
    if keep == 0:
        return None
    lora_b, lora_a = split_svd(u, singular, vh, keep)
    return ModuleFactors(module, lora_b.contiguous(), lora_a.contiguous(),
                         truncation_error(singular, keep), "svd of the merged delta")


# ------------------------------------------------------------------------- method probes
def _probe(method: MergeMethod, name: str, position, base: torch.Tensor,
           experts: list[torch.Tensor]) -> torch.Tensor:
    # The probes call the method's own tensor function; a counter it keeps for its report
    # (tensors_merged) must count the merged tensors only.
    counter = getattr(method, "tensors_merged", None)
    try:
        return method.merge_tensor(name, position, base.clone(), [e.clone() for e in experts])
    finally:
        if counter is not None:
            method.tensors_merged = counter


def _close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    if got.shape != expected.shape or not bool(torch.isfinite(got).all()):
        return False
    scale = max(1.0, float(expected.abs().max()))
    return float((got - expected).abs().max()) <= _PROBE_TOLERANCE * scale


def linear_coefficients(method: MergeMethod, name: str, position, num_experts: int) -> list[float] | None:
    """c_k with merge(θ_base, θ_1..θ_N) = θ_base + Σ_k c_k (θ_k − θ_base) for this tensor, or None
    when the method is not of that form here. Elementwise methods only: one-hot probes give c_k,
    a seeded random probe confirms linearity and that the base itself gets no weight."""
    if not method.is_elementwise() or num_experts == 0:
        return None
    one_hot = torch.eye(num_experts, dtype=torch.float32)
    coefficients = _probe(method, name, position, torch.zeros(num_experts),
                          [one_hot[k] for k in range(num_experts)])
    if coefficients.shape != (num_experts,) or not bool(torch.isfinite(coefficients).all()):
        return None
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(_PROBE_LENGTH, generator=generator)
    deltas = torch.randn(num_experts, _PROBE_LENGTH, generator=generator)
    got = _probe(method, name, position, base, [base + delta for delta in deltas])
    if not _close(got, base + (coefficients[:, None] * deltas).sum(0)):
        return None
    return [float(c) for c in coefficients]


def leaves_shared_tensors_alone(method: MergeMethod, name: str, position, shape: tuple[int, ...],
                                num_experts: int) -> bool:
    """Whether the method returns a tensor unchanged when every model holds the same values (a
    small random probe of the tensor's rank: a row for 1-D, 8 × 8 for matrices)."""
    generator = torch.Generator().manual_seed(1)
    probe_shape = (8, 8) if len(shape) >= 2 else (16,)
    base = torch.randn(probe_shape, generator=generator)
    return _close(_probe(method, name, position, base, [base] * num_experts), base)


# ------------------------------------------------------------------------ merge as a LoRA
def check_lora_output_inputs(pool: ModelPool, config: MergeConfig, emit_mergekit: Path | None) -> None:
    """Refuse, before anything is read, a LoRA output the inputs cannot give."""
    full = [k for k, expert in enumerate(pool.experts) if not expert.is_lora]
    if full:
        shown = ", ".join(f"models[{k}] ({excerpt(str(pool.experts[k].folder), 120)})" for k in full[:3])
        raise ConfigError(
            f"output_format: lora needs every model in `models` to be a LoRA adapter of the base, but "
            f"{shown} {'is a full checkpoint' if len(full) == 1 else 'are full checkpoints'}: their "
            "change to the base is not low-rank in general",
            "use output_format: full (the default), then `recall extract-lora MERGED --base BASE "
            "--rank R --output OUT` for a LoRA approximation of the merged model")
    if emit_mergekit is not None:
        raise ConfigError("--emit-mergekit with output_format: lora: mergekit writes full models, so its "
                          "config would not reproduce this adapter",
                          "drop --emit-mergekit, or emit it from the same config with output_format: full")


def _module_of(name: str) -> str:
    return name.rsplit(".", 1)[0]


def write_merge_as_lora(pool: ModelPool, method: MergeMethod, config: MergeConfig, folder: Path,
                        out_dtype: torch.dtype, *, quiet: bool = False, base_name: str | None = None,
                        base_revision: str | None = None) -> tuple[list[str], dict[str, Any]]:
    """Write the merge as one PEFT adapter (factors in ``out_dtype``) into ``folder`` (the engine's
    marked temporary folder); return the files written and the report's ``lora_output`` section."""
    from recall_merge.config import LoraOutputOptions

    options = config.lora_output or LoraOutputOptions()
    adapters = [expert.adapter for expert in pool.experts if expert.adapter is not None]
    num_experts = len(pool.experts)
    replaced = {_module_of(name) for adapter in adapters for name in adapter.replacements}
    saved = [name for name in pool.tensor_names if _module_of(name) in replaced]
    adapted = [name for name in pool.tensor_names
               if any(name in adapter.modules for adapter in adapters) and _module_of(name) not in replaced]
    touched = set(saved) | set(adapted)
    for name in pool.tensor_names:
        info = pool.base.tensors[name]
        if name in touched or not info.dtype.is_floating_point:
            continue
        if not leaves_shared_tensors_alone(method, name, pool.position(name), tuple(info.shape), num_experts):
            raise ConfigError(
                f"method {config.method} with these parameters changes tensors that no expert changes "
                f"(e.g. {excerpt(name, 120)}): a LoRA adapter on the base cannot hold that change",
                "use output_format: full, or parameters that leave shared weights as they are (for "
                "linear: normalize: true, or weights that sum to 1)")

    factors: list[ModuleFactors] = []
    for name in tqdm(adapted, desc=f"factorising ({config.method})", disable=quiet, unit="module"):
        result = _module_factors(pool, method, name, options.rank, options.energy)
        if result is not None:
            factors.append(result)
    if not factors and not saved:
        raise OutputError("the merge leaves every weight of the base unchanged: there is no adapter to "
                          "write", "check the experts and the method's weights")

    plan: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
    for item in factors:
        prefix = PEFT_PREFIX + item.module
        plan.append((f"{prefix}.lora_A.weight", out_dtype, tuple(item.lora_a.shape)))
        plan.append((f"{prefix}.lora_B.weight", out_dtype, tuple(item.lora_b.shape)))
    for name in saved:
        info = pool.base.tensors[name]
        plan.append((PEFT_PREFIX + name, out_dtype if info.dtype.is_floating_point else info.dtype,
                     tuple(info.shape)))
    writer = StreamingShardWriter(folder, plan, _ONE_FILE,
                                  metadata={"merged_by": "recall-merge", "method": config.method})
    try:
        for item in factors:
            prefix = PEFT_PREFIX + item.module
            for suffix, tensor in (("lora_A", item.lora_a), ("lora_B", item.lora_b)):
                cast = tensor.to(out_dtype).contiguous()
                _check_output_finite(f"{prefix}.{suffix}.weight", cast, config)
                writer.write(f"{prefix}.{suffix}.weight", cast)
        for name in saved:
            writer.write(PEFT_PREFIX + name, _merged_tensor(pool, method, name, config, out_dtype))
        written = writer.finish()
    finally:
        writer.abort()
    (folder / written[0]).rename(folder / ADAPTER_WEIGHTS)

    adapter_config = _adapter_config(factors, sorted({_module_of(n) for n in saved}),
                                     task_type=adapters[0].config.get("task_type") if adapters else None,
                                     base_name=base_name or str(pool.base.folder),
                                     base_revision=base_revision)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2))
    report = {
        "rank": options.rank, "energy": options.energy,
        "max_rank": max((item.rank for item in factors), default=0),
        "max_relative_error": max((item.relative_error for item in factors), default=0.0),
        "modules": {item.module: {"rank": item.rank, "relative_error": item.relative_error,
                                  "how": item.how} for item in factors},
        "modules_to_save": adapter_config["modules_to_save"] or [],
    }
    return [ADAPTER_WEIGHTS, ADAPTER_CONFIG], report


def _module_factors(pool: ModelPool, method: MergeMethod, name: str, rank: int | None,
                    energy: float | None) -> ModuleFactors | None:
    position = pool.position(name)
    module = _module_of(name)
    coefficients = linear_coefficients(method, name, position, len(pool.experts))
    if coefficients is not None:
        b_parts, a_parts = [], []
        for coefficient, expert in zip(coefficients, pool.experts, strict=True):
            pair = expert.adapter.factors(name) if expert.adapter is not None else None
            if pair is None or coefficient == 0.0:
                continue
            lora_b, lora_a = pair
            check_finite(lora_b, name, expert.folder)
            check_finite(lora_a, name, expert.folder)
            b_parts.append(lora_b * coefficient)
            a_parts.append(lora_a)
        if not b_parts:
            return None
        return factorise_low_rank(module, torch.cat(b_parts, dim=1), torch.cat(a_parts, dim=0),
                                  rank=rank, energy=energy)
    base = pool.base_tensor(name).to(torch.float32)
    experts = [pool.expert_tensor(k, name, base) for k in range(len(pool.experts))]
    for source, tensor in zip(pool.folders(), [base, *experts], strict=True):
        check_finite(tensor, name, source)
    delta = method.merge_tensor(name, position, base, experts) - base
    if not bool(torch.isfinite(delta).all()):
        raise OutputError(f"the merged tensor {name} has non-finite values (NaN/Inf); nothing was written",
                          "check the method's parameters (weights, lambda, scale) for extreme values")
    return factorise_dense(module, delta, rank=rank, energy=energy)


def _merged_tensor(pool: ModelPool, method: MergeMethod, name: str, config: MergeConfig,
                   out_dtype: torch.dtype) -> torch.Tensor:
    """A whole merged tensor (a modules_to_save module), as the full-output merge computes it."""
    base_tensor = pool.base_tensor(name)
    if not base_tensor.dtype.is_floating_point:
        return base_tensor
    base = base_tensor.to(torch.float32)
    experts = [pool.expert_tensor(k, name, base) for k in range(len(pool.experts))]
    for source, tensor in zip(pool.folders(), [base, *experts], strict=True):
        check_finite(tensor, name, source)
    merged = method.merge_tensor(name, pool.position(name), base, experts).to(out_dtype)
    _check_output_finite(name, merged, config)
    return merged


def _check_output_finite(name: str, tensor: torch.Tensor, config: MergeConfig) -> None:
    if all_finite(tensor):
        return
    raise OutputError(
        f"the LoRA tensor {name} has non-finite values (NaN/Inf) in {config.dtype}; nothing was written "
        "at the output path",
        "check the method's parameters for extreme values"
        + (", or write float32 (dtype: float32)" if config.dtype != "float32" else ""))


def _adapter_config(factors: list[ModuleFactors], modules_to_save: list[str], *, task_type: Any,
                    base_name: str, base_revision: str | None) -> dict[str, Any]:
    """PEFT's adapter_config.json: every module by its full name (so no other layer is wrapped),
    lora_alpha equal to each module's rank (scale 1: the factors hold the whole delta)."""
    ranks = {item.module: item.rank for item in factors}
    top = max(ranks.values(), default=1)
    pattern = {module: rank for module, rank in ranks.items() if rank != top}
    return {
        "peft_type": "LORA",
        "task_type": task_type if isinstance(task_type, str) else "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "revision": base_revision,
        "r": top,
        "lora_alpha": top,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks),
        "modules_to_save": modules_to_save or None,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }


# ----------------------------------------------------------------------------- extract-lora
EXTRACT_REPORT = "recall_report.json"


def extract_lora(model_ref: str, base_ref: str, rank: Any, output: Path, *, overwrite: bool = False,
                 quiet: bool = False) -> dict[str, Any]:
    """``recall extract-lora``: a PEFT adapter approximating ``model − base`` at rank ``rank``,
    written atomically to ``output``; returns its report (also ``recall_report.json`` there)."""
    from recall_merge.config import MAX_LORA_RANK, check_output_path
    from recall_merge.io import hub
    from recall_merge.io.pool import ModelPool

    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_LORA_RANK:
        raise ConfigError(f"--rank {excerpt(rank, 60)} is not a rank from 1 to {MAX_LORA_RANK}",
                          "give the LoRA rank as a whole number, e.g. --rank 16")
    output = Path(output)
    check_output_path(output, "--output")
    pool = ModelPool.open(base_ref, [model_ref])
    expert = pool.experts[0]
    if expert.checkpoint is None:
        raise CheckpointError(f"{expert.folder} is already a LoRA adapter (it has {ADAPTER_CONFIG})",
                              "give the merged or fine-tuned full model; an adapter needs no extraction")
    _check_extract_output(output, [pool.base.folder, expert.folder], overwrite)
    modules = _extraction_plan(expert.checkpoint)
    base, model = pool.base, expert.checkpoint

    plan: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
    for entry in modules:
        if entry["kind"] == "lora":
            out_features, in_features = entry["shape"]
            keep = min(rank, out_features, in_features)
            entry["rank"] = keep
            prefix = PEFT_PREFIX + entry["module"]
            plan.append((f"{prefix}.lora_A.weight", entry["dtype"], (keep, in_features)))
            plan.append((f"{prefix}.lora_B.weight", entry["dtype"], (out_features, keep)))
            if entry["bias"] is not None:
                plan.append((f"{prefix}.lora_B.bias", model.tensors[entry["bias"]].dtype,
                             tuple(model.tensors[entry["bias"]].shape)))
        else:
            for tensor in (entry["weight"], entry["bias"]):
                if tensor is not None:
                    plan.append((PEFT_PREFIX + entry["saved_as"][tensor], model.tensors[tensor].dtype,
                                 tuple(model.tensors[tensor].shape)))
    temp = atomic.temporary_folder_for(output)
    errors: dict[str, float] = {}
    try:
        writer = StreamingShardWriter(temp, plan, _ONE_FILE, metadata={"extracted_by": "recall-merge"})
        try:
            for entry in tqdm(modules, desc="extracting LoRA", disable=quiet, unit="module"):
                if entry["kind"] == "lora":
                    lora_a, lora_b, error = _extract_module(base, model, entry)
                    errors[entry["module"]] = error
                    prefix = PEFT_PREFIX + entry["module"]
                    writer.write(f"{prefix}.lora_A.weight", lora_a)
                    writer.write(f"{prefix}.lora_B.weight", lora_b)
                    if entry["bias"] is not None:
                        bias_delta = model.get(entry["bias"]) - base.get(entry["bias"])
                        writer.write(f"{prefix}.lora_B.bias", bias_delta.contiguous())
                else:
                    for tensor in (entry["weight"], entry["bias"]):
                        if tensor is not None:
                            value = model.get(tensor)
                            check_finite(value, tensor, model.folder)
                            writer.write(PEFT_PREFIX + entry["saved_as"][tensor], value.contiguous())
            written = writer.finish()
        finally:
            writer.abort()
        (temp / written[0]).rename(temp / ADAPTER_WEIGHTS)
        lora_modules = [entry for entry in modules if entry["kind"] == "lora"]
        ranks = {entry["module"]: entry["rank"] for entry in lora_modules}
        top = max(ranks.values(), default=rank)
        different = {module: value for module, value in ranks.items() if value != top}
        saved = list(dict.fromkeys(entry["leaf"] for entry in modules if entry["kind"] == "save"))
        base_snapshot, model_snapshot = hub.snapshot_record(base_ref), hub.snapshot_record(model_ref)
        adapter_config = {
            "base_model_name_or_path": base_snapshot["id"] if base_snapshot else str(base_ref),
            "revision": base_snapshot["commit"] if base_snapshot else None,
            "peft_type": "LORA", "use_rslora": False,
            "target_modules": sorted({module.split(".")[-1] for module in ranks}),
            "modules_to_save": saved, "task_type": "CAUSAL_LM", "r": top, "lora_alpha": top,
            "rank_pattern": different, "alpha_pattern": dict(different), "lora_dropout": 0.0,
            "fan_in_fan_out": False, "inference_mode": True,
        }
        if any(entry["bias"] is not None for entry in lora_modules):
            adapter_config["lora_bias"] = True  # PEFT loads lora_B.bias only with this set
        (temp / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2))
        report = {
            "command": "extract-lora", "model": str(model.folder), "base": str(base.folder),
            "hub": [base_snapshot, model_snapshot], "rank": rank,
            "max_relative_error": max(errors.values(), default=0.0),
            "modules": {module: {"rank": ranks[module], "relative_error": errors[module]}
                        for module in ranks},
            "modules_to_save": saved,
        }
        (temp / EXTRACT_REPORT).write_text(json.dumps(report, indent=2, allow_nan=False))
        from recall_merge.reports.model_card import extraction_card

        (temp / "README.md").write_text(extraction_card(report, model_ref, base_ref), encoding="utf-8")
        if output.exists() and not overwrite:
            raise OutputError(f"output folder {output} appeared during the extraction", "choose another path")
        atomic.replace_folder(temp, output)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return report


def _extract_module(base, model, entry: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """mergekit's TaskVectorDecompositionTask: the task vector in the model's dtype, its SVD in
    float32, rank min(R, len(S)), √S on each side, cast back to the model's dtype."""
    merged, original = model.get(entry["weight"]), base.get(entry["weight"])
    check_finite(merged, entry["weight"], model.folder)
    check_finite(original, entry["weight"], base.folder)
    task_vector = merged - original.to(merged.dtype)
    u, singular, vh = torch.linalg.svd(task_vector.to(torch.float32), full_matrices=False)
    keep = entry["rank"]
    root = torch.diag(torch.sqrt(singular[:keep]))
    lora_a = (root @ vh[:keep]).to(task_vector.dtype)
    lora_b = (u[:, :keep] @ root).to(task_vector.dtype)
    return lora_a.contiguous(), lora_b.contiguous(), truncation_error(singular, keep)


def _extraction_plan(model) -> list[dict[str, Any]]:
    """mergekit-extract-lora's walk over the model's modules (its default options): input/output
    embeddings and any nn.Embedding → modules_to_save by their last name part; nn.Linear (and
    Conv1d/Conv2d) → LoRA; any other module with a weight → modules_to_save. Built from a model
    on the meta device (no weight is allocated), as mergekit does."""
    import transformers
    from torch import nn

    architectures = model.config.get("architectures") or []
    if not architectures or not isinstance(architectures[0], str):
        raise CheckpointError(f"{model.folder}/config.json names no architecture",
                              "extract from a transformers model folder (config.json with architectures)")
    try:
        config = transformers.AutoConfig.from_pretrained(model.folder, trust_remote_code=False)
        auto = _auto_class(transformers, architectures[0])
        with torch.device("meta"):
            skeleton = auto.from_config(config, trust_remote_code=False)
    except (ValueError, KeyError, OSError, ImportError) as exc:
        raise CheckpointError(f"transformers cannot build {excerpt(architectures[0], 80)} from {model.folder}: "
                              f"{excerpt(str(exc), 200)}",
                              "extract from a model of an architecture this transformers version knows") from None
    embed_in, embed_out = skeleton.get_input_embeddings(), skeleton.get_output_embeddings()
    tied = bool(model.config.get("tie_word_embeddings"))
    input_weight = next((name + ".weight" for name, module in skeleton.named_modules()
                         if module is embed_in), None)
    modules_to_save: list[str] = []
    plan: list[dict[str, Any]] = []
    for name, module in skeleton.named_modules():
        weight, bias = f"{name}.weight", f"{name}.bias"
        if not hasattr(module, "weight") and weight not in model.tensors:
            continue
        saved_as = {weight: weight}
        if weight not in model.tensors:
            if tied and module is embed_out and input_weight in model.tensors:
                saved_as = {input_weight: weight}  # a tied head is the input embedding
                weight = input_weight
            else:
                continue  # mergekit: an optional weight the checkpoint does not hold
        bias = bias if bias in model.tensors else None
        if bias is not None:
            saved_as[bias] = bias
        leaf = name.split(".")[-1]
        if module is embed_in or module is embed_out or isinstance(module, nn.Embedding):
            if leaf not in modules_to_save:
                modules_to_save.append(leaf)
        if name in modules_to_save or leaf in modules_to_save:
            plan.append({"kind": "save", "module": name, "leaf": leaf, "weight": weight, "bias": bias,
                         "saved_as": saved_as})
        elif isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Embedding):
            shape = tuple(model.tensors[weight].shape)
            if len(shape) != 2:
                raise CheckpointError(f"{name} is a {len(shape)}-D weight {list(shape)}: extract-lora "
                                      "factorises 2-D weights (linear layers) only",
                                      "extract from a model whose adapted layers are linear")
            plan.append({"kind": "lora", "module": name, "leaf": leaf, "weight": weight, "bias": bias,
                         "shape": shape, "dtype": model.tensors[weight].dtype})
        else:
            if leaf not in modules_to_save:
                modules_to_save.append(leaf)
            plan.append({"kind": "save", "module": name, "leaf": leaf, "weight": weight, "bias": bias,
                         "saved_as": saved_as})
    if not any(entry["kind"] == "lora" for entry in plan):
        raise CheckpointError(f"{model.folder} has no linear layer to extract a LoRA from",
                              "extract from a transformer language model")
    return plan


def _auto_class(transformers, architecture: str):
    """mergekit's get_auto_cls for the common heads; everything else is a causal LM."""
    for suffix, auto in (("ForMaskedLM", "AutoModelForMaskedLM"),
                         ("ForSequenceClassification", "AutoModelForSequenceClassification"),
                         ("ForTokenClassification", "AutoModelForTokenClassification")):
        if architecture.endswith(suffix):
            return getattr(transformers, auto)
    return transformers.AutoModelForCausalLM


def _check_extract_output(output: Path, inputs: list[Path], overwrite: bool) -> None:
    """The merge's output rules: never inside or around an input, never over a folder this tool
    did not write, and only with --overwrite over one it did."""
    resolved = output.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if resolved == source or source in resolved.parents or resolved in source.parents:
            raise OutputError(f"--output {output} overlaps the input {source}",
                              "choose an output folder outside every input folder")
    if output.exists() and not overwrite:
        raise OutputError(f"output folder {output} already exists",
                          "choose a new output path, or pass --overwrite")
    if output.exists() and any(output.iterdir()) and not (output / EXTRACT_REPORT).is_file():
        raise OutputError(f"output folder {output} is not empty and holds no {EXTRACT_REPORT}: it is not "
                          "an earlier recall-merge output, and --overwrite would delete it",
                          "choose a new output path; --overwrite only replaces an earlier output")
