"""WUDI-merging (Cheng et al., ICML 2025, arXiv 2503.08099): a data-free, per-matrix optimisation
of the merged task vector against the interference the task vectors themselves predict.

For each 2-D tensor with task vectors τ_1 … τ_T (m × n), find τ_m minimising

    L(τ_m) = Σ_k ‖(τ_m − τ_k) τ_kᵀ‖²_F / ‖τ_k‖²_F

with Adam (lr 1e-5, no weight decay, torch's default betas and eps) for 300 steps from
τ_m = Σ_k τ_k; θ = θ_base + τ_m, no further scale. Other tensors (norms, biases) and excluded names
get the mean of the task vectors. All of this is FusionBench 0.2.33's ``wudi_merging``
(``fusion_bench/method/wudi/wudi.py``: loss, optimiser, learning rate, iterations and
initialisation; its shipped config ``method/wudi/wudi.yaml`` runs 400 steps instead).
``tests/test_knots_wudi.py`` runs that function on the same tensors: max |Δ| = 1.2e-7 after 300
steps (checked at ≤ 1e-5).

What differs is how the gradient is computed, not what it is. FusionBench builds the T products
(τ_m − τ_k) τ_kᵀ (m × m each) and lets autograd differentiate; the objective is quadratic, so its
gradient is 2 Σ_k (τ_m − τ_k) G_k / ‖τ_k‖² with G_k = τ_kᵀ τ_k, and two forms of it need no
m × m matrix per task:

- *gram*: 2 (τ_m H − R), H = Σ_k G_k/‖τ_k‖² (n × n) and R = Σ_k τ_k G_k/‖τ_k‖² (m × n) computed
  once: one m·n² product per step, whatever T (an embedding of 49,152 × 576 costs what 85
  576 × 576 matrices cost, where FusionBench's form would need 49,152² floats per task);
- *stacked*: 2 (τ_m Wᵀ − Z) W with W = [τ_k/‖τ_k‖] (T·m × n) and Z = [τ_k W_kᵀ] (m × T·m): two
  m·T·m·n products per step, cheaper when n > 2·T·m (a wide matrix with few tasks).

Adam normalises each step, so a gradient that should be exactly zero must come out exactly zero:
with one task, τ_m = τ_1 is the minimiser, and both forms compute τ_m H and R (or τ_m Wᵀ and Z)
with the same operands, so the step is 0 and WUDI returns τ_1 unchanged. A task vector of zero
norm adds nothing to L (its term is 0/0 in FusionBench, which then returns NaN) and is left out.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import Field

from recall_merge.methods import svd_ops
from recall_merge.methods.base import MergeMethod, StrictParameters, TensorPosition
from recall_merge.methods.tensor_records import TensorRecords

if TYPE_CHECKING:
    from recall_merge.config import MergeConfig

GradientForm = Literal["gram", "stacked"]

# FusionBench's wudi_merging: iter_num=300, Adam(lr=1e-5, weight_decay=0).
DEFAULT_ITERATIONS = 300
DEFAULT_LEARNING_RATE = 1e-5


class WudiParameters(StrictParameters):
    """Options of WUDI-merging (docs/methods.md)."""

    iterations: int = Field(
        DEFAULT_ITERATIONS, ge=0, le=100_000, description="Adam steps per 2-D tensor (FusionBench's "
        "wudi_merging default 300; its shipped config uses 400). 0 gives the initialisation, the "
        "sum of the task vectors",
    )
    learning_rate: float = Field(
        DEFAULT_LEARNING_RATE, gt=0, le=1, description="Adam's learning rate (FusionBench: 1e-5)",
    )
    exclude: list[str] = Field(
        default_factory=list, description="tensor names (fnmatch patterns) merged as the mean of "
        "the task vectors instead (FusionBench's `exclude_keys`, which takes exact names)",
    )


def gradient_form(rows: int, cols: int, num_tasks: int) -> GradientForm:
    """The cheaper exact form of the gradient per step: m·n² (gram) or 2·m·T·m·n (stacked)."""
    return "gram" if cols <= 2 * num_tasks * rows else "stacked"


class WudiResult(NamedTuple):
    delta: torch.Tensor
    form: GradientForm
    tasks_used: int
    loss_initial: float
    loss_final: float


def wudi_loss(merged: torch.Tensor, deltas: Sequence[torch.Tensor]) -> float:
    """L(τ_m) = Σ_k ‖(τ_m − τ_k) τ_kᵀ‖² / ‖τ_k‖² (tasks of zero norm add nothing), for the report.
    Each term through the smaller side, tr(D G_k Dᵀ) or ‖D τ_kᵀ‖² with D = τ_m − τ_k: a sum of
    squares with no cancellation, so float32 products summed in float64 suffice."""
    total = 0.0
    for delta in deltas:
        norm = float(delta.square().sum(dtype=torch.float64))
        if norm == 0:
            continue
        difference = merged - delta
        if delta.shape[1] <= delta.shape[0]:
            term = ((difference @ (delta.T @ delta)) * difference).sum(dtype=torch.float64)
        else:
            term = (difference @ delta.T).square().sum(dtype=torch.float64)
        total += float(term) / norm
        del delta, difference
    return total


def wudi_merge(deltas: Sequence[torch.Tensor], iterations: int = DEFAULT_ITERATIONS,
               learning_rate: float = DEFAULT_LEARNING_RATE) -> WudiResult:
    """WUDI's merged task vector of one matrix (module docstring). ``deltas`` is read twice (the
    fixed terms, then the losses for the report), one task vector at a time. T × (m, n) → (m, n)."""
    merged = svd_ops.sum_task_vectors(deltas)
    rows, cols = merged.shape
    form = gradient_form(rows, cols, len(deltas))
    fixed_a: torch.Tensor | None = None  # gram: H (n × n); stacked: W (T·m × n)
    fixed_b: torch.Tensor | None = None  # gram: R (m × n); stacked: Z (m × T·m)
    blocks_w: list[torch.Tensor] = []
    blocks_z: list[torch.Tensor] = []
    tasks_used = 0
    for delta in deltas:
        # ‖τ_k‖² as FusionBench computes it: torch.norm of the flattened tensor, squared.
        norm_squared = torch.square(torch.norm(delta.reshape(-1), p=2))
        if norm_squared == 0:
            continue
        tasks_used += 1
        if form == "gram":
            gram = (delta.T @ delta) / norm_squared
            fixed_a = gram.clone() if fixed_a is None else fixed_a.add_(gram)
            product = delta @ gram
            fixed_b = product if fixed_b is None else fixed_b.add_(product)
            del gram, product
        else:
            scaled = delta / torch.sqrt(norm_squared)
            blocks_z.append(delta @ scaled.T)
            blocks_w.append(scaled)
        del delta
    if form == "stacked" and blocks_w:
        fixed_a, fixed_b = torch.cat(blocks_w), torch.cat(blocks_z, dim=1)
        blocks_w.clear()
        blocks_z.clear()
    loss_initial = wudi_loss(merged, deltas)
    if fixed_a is not None and fixed_b is not None and iterations > 0:
        optimizer = torch.optim.Adam([merged], lr=learning_rate, weight_decay=0)
        for _ in range(iterations):
            if form == "gram":
                gradient = merged @ fixed_a
                gradient.sub_(fixed_b)
            else:
                gradient = (merged @ fixed_a.T).sub_(fixed_b) @ fixed_a
            merged.grad = gradient.mul_(2)
            optimizer.step()
        merged.grad = None
        del optimizer
    del fixed_a, fixed_b
    return WudiResult(merged, form, tasks_used, loss_initial,
                      wudi_loss(merged, deltas) if iterations > 0 else loss_initial)


class Wudi(MergeMethod):
    """WUDI-merging (Cheng et al., ICML 2025): per matrix, τ_m minimising
    Σ_k ‖(τ_m − τ_k) τ_kᵀ‖² / ‖τ_k‖² by Adam from Σ_k τ_k; θ = θ_base + τ_m.

    Per matrix: ``iterations`` × (one m·n·min(n, 2·T·m) product and an Adam step); peak ≈ 7·m·n
    + 2·n² floats (gram form) beyond the inputs, measured (docs/methods.md)."""

    name = "wudi"
    summary = "per matrix, Adam on Σ‖(τ_m − τ_k)τ_kᵀ‖²/‖τ_k‖², data-free (Cheng et al. 2025)"
    parameters_model: ClassVar[type[WudiParameters]] = WudiParameters

    def __init__(self, parameters: WudiParameters, config: MergeConfig, num_layers: int) -> None:
        super().__init__(parameters, config, num_layers)
        self.parameters: WudiParameters = parameters
        self.records = TensorRecords()

    def _is_optimised(self, name: str, tensor: torch.Tensor) -> bool:
        return tensor.dim() == 2 and not any(
            fnmatch.fnmatchcase(name, pattern) for pattern in self.parameters.exclude)

    def merge_tensor(
        self, name: str, position: TensorPosition, base: torch.Tensor, experts: list[torch.Tensor]
    ) -> torch.Tensor:
        deltas = svd_ops.LazyTaskVectors(base, experts)
        record: dict[str, Any] = {"shape": list(base.shape)}
        if self._is_optimised(name, base):
            result = wudi_merge(deltas, self.parameters.iterations, self.parameters.learning_rate)
            delta = result.delta
            # An overflowing objective (task vectors near float32's range) is reported as null:
            # the report is strict JSON, and the merged tensor itself is checked by the engine.
            record.update(merged_as="wudi", gradient_form=result.form, iterations=self.parameters.iterations,
                          tasks_used=result.tasks_used,
                          loss_initial=result.loss_initial if math.isfinite(result.loss_initial) else None,
                          loss_final=result.loss_final if math.isfinite(result.loss_final) else None)
        else:
            delta = svd_ops.mean_task_vector(deltas)
            record["merged_as"] = "mean"
        self.records.add(name, position, record)
        return delta.detach().add_(base)

    def report(self) -> dict[str, Any]:
        """The options, and per block every tensor's record: optimised or averaged, the gradient
        form, the tasks of non-zero norm, and the objective before and after the steps."""
        layers, outside = self.records.by_block(self.num_layers)
        parameters = self.parameters
        return {"method": self.name,
                "applied": {"iterations": parameters.iterations, "learning_rate": parameters.learning_rate,
                            "optimizer": "adam", "initialisation": "sum of the task vectors",
                            "exclude": list(parameters.exclude),
                            "parameters": parameters.model_dump(by_alias=True)},
                "layers": layers, "outside_blocks": {"tensors": outside},
                "tensors_merged": len(self.records)}
