"""LiNeS (Wang et al., ICLR 2025): a depth ramp on the scale of a merged task vector.

A task-vector method adds ``lines: {alpha, beta}`` to its parameters (:class:`LinesParameters`)
and mixes in :class:`LinesScaling`; its merged task vector for a tensor in block ℓ of L is then
scaled by λ_ℓ = α + β·ℓ/(L − 1) (α outside the blocks) instead of the method's single scale. The
maths is :func:`recall_merge.methods.ops.lines_scale`.

``alpha: auto`` is the official multi-task rule (``src/eval/eval.py`` of wang-kee/LiNeS):
α = (‖Σ_k τ_k‖₁ / ‖τ_merged‖₁) / T over the whole model, which needs one extra streaming pass
over all tensors before the merge (the planning pass), so it roughly doubles the merge time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from tqdm.auto import tqdm

from recall_merge.io.reader import check_finite
from recall_merge.methods import ops
from recall_merge.methods.base import StrictParameters, TensorPosition

if TYPE_CHECKING:
    from recall_merge.io.pool import ModelPool


class LinesParameters(StrictParameters):
    """The two LiNeS numbers. Both are required: the paper tunes β (and, for one model, α)."""

    alpha: float | Literal["auto"] = Field(
        ..., description="scale of the shallowest block and of every tensor outside the blocks; "
        "'auto': (‖Σ τ_k‖₁ / ‖τ_merged‖₁) / T over the whole model (the paper's multi-task rule)",
    )
    beta: float = Field(..., description="added to alpha across depth: the last block gets alpha + beta")


def check_scale_range(lines: LinesParameters, limit: float) -> None:
    """|alpha| and |beta| at most ``limit``, as for a method's single scale (beyond that a merge
    is noise or overflow)."""
    from recall_merge.errors import ConfigError

    for key in ("alpha", "beta"):
        value = getattr(lines, key)
        if isinstance(value, float | int) and abs(value) > limit:
            raise ConfigError(
                f"parameters.lines.{key} is {value:g}, outside [-{limit:g}, {limit:g}]",
                f"give LiNeS scales between -{limit:g} and {limit:g}, as for lambda (beyond that a "
                "merge is noise or overflow)",
            )


MergedDelta = Callable[[str, TensorPosition, torch.Tensor, list[torch.Tensor]], torch.Tensor]


def auto_alpha(summed_l1: float, merged_l1: float, num_tasks: int) -> float:
    """The official multi-task α: (‖Σ_k τ_k‖₁ / ‖τ_merged‖₁) / T. A merged vector of zero norm
    (every expert equal to the base) gives 1/T: any α leaves such a model unchanged."""
    ratio = summed_l1 / merged_l1 if merged_l1 > 0 else 1.0
    return ratio / num_tasks


class LinesScaling:
    """Mixin: the per-tensor scale of a task-vector method, with or without LiNeS.

    The class that mixes it in sets ``self.lines`` (a :class:`LinesParameters` or None),
    ``self.num_layers`` and ``self.num_experts``, and calls :meth:`resolve_lines_alpha` from its
    ``plan`` when ``alpha`` may be ``auto``.
    """

    lines: LinesParameters | None
    num_layers: int
    num_experts: int
    lines_alpha: float | None = None
    lines_norms: dict[str, float] | None = None

    def task_vector_scale(self, position: TensorPosition, default: float) -> float:
        """λ for this tensor: LiNeS' ramp when ``lines`` is set, else the method's own scale."""
        if self.lines is None:
            return default
        alpha = self.lines_alpha if self.lines_alpha is not None else self.lines.alpha
        if not isinstance(alpha, float | int):
            raise RuntimeError("lines.alpha is 'auto' but the planning pass did not resolve it")
        return ops.lines_scale(float(alpha), self.lines.beta, position.kind, position.layer, self.num_layers)

    def resolve_lines_alpha(self, pool: ModelPool, merged_delta: MergedDelta, quiet: bool) -> None:
        """Fix α: the given number, or for ``auto`` one pass over every floating tensor that sums
        ‖Σ_k τ_k‖₁ and ‖merged_delta‖₁ (the method's merged task vector before any scaling)."""
        if self.lines is None:
            return
        if self.lines.alpha != "auto":
            self.lines_alpha = float(self.lines.alpha)
            return
        summed = merged = 0.0
        names = [name for name in pool.tensor_names if pool.base.tensors[name].dtype.is_floating_point]
        for name in tqdm(names, desc="LiNeS: task-vector norms", disable=quiet, unit="tensor"):
            base = pool.base_tensor(name).to(torch.float32)
            experts = [pool.expert_tensor(k, name, base) for k in range(len(pool.experts))]
            # The streaming pass checks this too, but an SVD of a NaN matrix fails with a
            # LAPACK error first: refuse here with the model's name.
            for folder, tensor in zip(pool.folders(), [base, *experts], strict=True):
                check_finite(tensor, name, folder)
            total = torch.zeros_like(base)
            for expert in experts:
                total.add_(expert - base)
            summed += float(total.abs().sum(dtype=torch.float64))
            del total
            merged += float(merged_delta(name, pool.position(name), base, experts).abs().sum(dtype=torch.float64))
        self.lines_norms = {"sum_of_task_vectors_l1": summed, "merged_task_vector_l1": merged}
        self.lines_alpha = auto_alpha(summed, merged, self.num_experts)

    def lines_report(self) -> dict[str, Any] | None:
        """What LiNeS applied: α (resolved), β, λ per block and outside the blocks."""
        if self.lines is None:
            return None
        alpha = self.lines_alpha if self.lines_alpha is not None else self.lines.alpha
        report: dict[str, Any] = {"alpha": alpha, "alpha_given": self.lines.alpha, "beta": self.lines.beta}
        if isinstance(alpha, float | int):
            report["block_scales"] = [
                ops.lines_scale(float(alpha), self.lines.beta, "block", layer, self.num_layers)
                for layer in range(self.num_layers)]
            report["outside_blocks_scale"] = float(alpha)
        if self.lines_norms is not None:
            report["norms"] = dict(self.lines_norms)
        return report
