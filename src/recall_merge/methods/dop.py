"""DOP, Dual Orthogonal Projections for continual merging without data (NeurIPS 2025), with the
semantics of FusionBench 0.2.33 (``method/dop/dop.py``, ``ContinualDOPForCLIP._optimize_weight``;
``min_norm_solvers.py``; defaults from ``fusion_bench_config/method/dop/dop.yaml``).

One step merges the previous merge θ_p and the new expert θ_n, matrix by matrix, by optimisation:

* **Subspaces.** For each of the two task vectors τ_i = θ_i − θ_base, the SVD τ_i = U S Vᵀ keeps
  its first k_i singular triplets, k_i = the index at which the cumulative share of Σ s first
  reaches ``svd_epsilon`` (``torch.searchsorted``: the triplet that reaches it is left out).
* **Losses.** For W the merged matrix and Δ_i = W − θ_i:
  L_i(W) = ‖S_i U_iᵀ Δ_i‖²_F + ‖Δ_i V_i S_i‖²_F (``svd_proj_space: uv``; ``u`` or ``v`` keep one
  term): W should agree with θ_i on θ_i's own subspaces, weighted by their singular values.
  i = p is stability, i = n plasticity.
* **Weights (MGDA).** Each step normalises the two gradients by their losses, g_i / L_i, takes
  the min-norm point of their convex hull (the two-vector solution of Sener & Koltun's
  ``MinNormSolver``: γ, 1 − γ), and smooths it with an EMA from (alpha, 1 − alpha) with decay
  ``ema_beta``. Without ``mgda`` the weights are (alpha, 1 − alpha).
* **Optimiser.** W starts at (θ_p + θ_n)/2 and takes ``num_steps`` Adam steps (learning rate
  ``lr``, torch's default betas) on w_p L_p + w_n L_n.

Every other tensor (norms, biases, the token embeddings, ``exclude``) is the mean (θ_p + θ_n)/2,
as FusionBench averages every module that is not an ``nn.Linear``.

The gradients are written out in closed form, ∇L_i = 2 (S_i U_iᵀ)ᵀ (S_i U_iᵀ Δ_i) +
2 (Δ_i V_i S_i²) V_iᵀ, and the weighted gradient is Σ_i w_i ∇L_i: the same numbers as
FusionBench's three backward passes per step (one per loss, one for the weighted sum), in half
the work. There are no random draws: the result is a function of the inputs.

Differences from FusionBench, for inputs where its own run fails: a loss that is exactly zero
(a task vector of this matrix that is zero, or of rank one, so that k_i = 0) has a zero
gradient, and it is normalised by 1 instead of 0 (FusionBench divides 0 by 0 and writes NaN into
the model); the min-norm solution needs no `cost < 1e8` guard (FusionBench's ``_min_norm_2d``
leaves its result unset above it and raises).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field

from recall_merge.methods.base import TensorPosition
from recall_merge.methods.chain import ChainMerge, ChainParameters

if TYPE_CHECKING:
    from recall_merge.config import MergeConfig

ProjectionSpace = Literal["uv", "u", "v"]


# --- the maths, one matrix at a time ------------------------------------------------------------

@dataclass(frozen=True)
class Subspace:
    """A task vector's kept singular triplets, in the forms the loss uses: left = diag(s) Uᵀ
    (k × m), right = V (n × k) and s (k)."""

    left: torch.Tensor
    right: torch.Tensor
    singular_values: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.singular_values.numel())


def kept_rank(singular_values: torch.Tensor, epsilon: float) -> int:
    """k: FusionBench's ``torch.searchsorted(s.cumsum(0) / s.sum(), epsilon)``, and 0 for a zero
    matrix (whose shares are 0/0)."""
    total = singular_values.sum()
    if not total > 0:
        return 0
    return int(torch.searchsorted(singular_values.cumsum(dim=0) / total, min(epsilon, 1.0)))


def subspace(task_vector: torch.Tensor, epsilon: float) -> Subspace:
    """The kept triplets of one task vector (thin SVD: only the first k columns are used, which
    the full SVD FusionBench takes has in common with it). m × n → Subspace."""
    u, s, vh = torch.linalg.svd(task_vector, full_matrices=False)
    k = kept_rank(s, epsilon)
    kept = s[:k]
    return Subspace(torch.diag(kept) @ u[:, :k].T, vh[:k].T.contiguous(), kept.contiguous())


def projection_loss(delta: torch.Tensor, space: Subspace, which: ProjectionSpace
                    ) -> tuple[float, torch.Tensor]:
    """L(Δ) = ‖S Uᵀ Δ‖²_F + ‖Δ V S‖²_F (or one term) and its gradient with respect to Δ."""
    gradient = torch.zeros_like(delta)
    if space.rank == 0:
        return 0.0, gradient
    terms: list[torch.Tensor] = []  # summed in float32, as FusionBench sums its two tensors
    if which in ("uv", "u"):
        left = space.left @ delta  # (S Uᵀ) Δ, FusionBench's order of the products
        terms.append(torch.linalg.matrix_norm(left, ord="fro") ** 2)
        gradient.addmm_(space.left.T, left, alpha=2.0)
    if which in ("uv", "v"):
        right = (delta @ space.right) * space.singular_values  # (Δ V) S
        terms.append(torch.linalg.matrix_norm(right, ord="fro") ** 2)
        gradient.addmm_(right.mul_(space.singular_values), space.right.T, alpha=2.0)
    return float(sum(terms[1:], terms[0])), gradient


def min_norm_weights(first: torch.Tensor, second: torch.Tensor) -> tuple[float, float]:
    """(γ, 1 − γ) minimising ‖γ g_1 + (1 − γ) g_2‖ over [0, 1]: Sener & Koltun's two-vector case
    (``MinNormSolver._min_norm_element_from2``), γ clipped to 0.999 / 0.001 at the ends, in float32
    as FusionBench computes it."""
    v11 = torch.mul(first, first).sum()
    v12 = torch.mul(first, second).sum()
    v22 = torch.mul(second, second).sum()
    if v12 >= v11:
        return 0.999, 1 - 0.999
    if v12 >= v22:
        return 0.001, 1 - 0.001
    gamma = -1.0 * ((v12 - v22) / (v11 + v22 - 2 * v12))
    return float(gamma), float(1 - gamma)


@dataclass(frozen=True)
class DopResult:
    merged: torch.Tensor
    ranks: tuple[int, int]
    weights: tuple[float, float]
    losses: tuple[float, float]


def dop_merge_matrix(base: torch.Tensor, previous: torch.Tensor, new: torch.Tensor,
                     options: DopParameters) -> DopResult:
    """One DOP step on one matrix: W from (previous + new)/2 by ``num_steps`` Adam steps on the
    weighted projection losses. m × n (three of them) → m × n."""
    spaces = [subspace(previous - base, options.svd_epsilon), subspace(new - base, options.svd_epsilon)]
    targets = (previous, new)
    weight = torch.nn.Parameter(torch.stack(targets).mean(dim=0))
    optimiser = torch.optim.Adam([weight], lr=options.lr)
    ema = (options.alpha, 1 - options.alpha)
    weights = ema
    losses = (0.0, 0.0)
    with torch.no_grad():
        for _ in range(options.num_steps):
            (loss_p, grad_p), (loss_n, grad_n) = (
                projection_loss(weight - target, space, options.svd_proj_space)
                for target, space in zip(targets, spaces, strict=True))
            losses = (loss_p, loss_n)
            if options.mgda:
                # a zero loss has a zero gradient: normalised by 1, not 0/0 (FusionBench's NaN)
                solution = min_norm_weights(grad_p / (loss_p if loss_p > 0 else 1.0),
                                            grad_n / (loss_n if loss_n > 0 else 1.0))
                if options.ema:
                    ema = (options.ema_beta * ema[0] + (1 - options.ema_beta) * solution[0],
                           options.ema_beta * ema[1] + (1 - options.ema_beta) * solution[1])
                    solution = ema
                weights = solution
            weight.grad = grad_p.mul_(float(weights[0])).add_(grad_n, alpha=float(weights[1]))
            del grad_n
            optimiser.step()
    return DopResult(weight.detach(), (spaces[0].rank, spaces[1].rank),
                     (float(weights[0]), float(weights[1])), losses)


# --- the method ---------------------------------------------------------------------------------

class DopParameters(ChainParameters):
    """Defaults: FusionBench 0.2.33's ``config/method/dop/dop.yaml``."""

    lr: float = Field(1e-4, gt=0, le=1, description="Adam's learning rate (1e-4)")
    num_steps: int = Field(200, ge=0, le=100_000, description="Adam steps per matrix and step (200)")
    mgda: bool = Field(True, description="weigh the two losses by MGDA's min-norm solution "
                       "(true); false: fixed weights alpha, 1 - alpha")
    ema: bool = Field(True, description="smooth the MGDA weights with an EMA that starts at "
                      "(alpha, 1 - alpha) (true)")
    ema_beta: float = Field(0.999, ge=0, le=1, description="the EMA's decay (0.999)")
    alpha: float = Field(0.8, ge=0, le=1, description="weight of the stability loss (previous "
                         "merge): the EMA's start, or the fixed weight without mgda (0.8)")
    svd_epsilon: float = Field(0.99999, ge=0, le=1, description="share of Σ s each task vector's "
                               "kept subspace reaches (0.99999)")
    svd_proj_space: ProjectionSpace = Field("uv", description="which projections the loss keeps: "
                                            "uv (both), u (left) or v (right)")


class Dop(ChainMerge):
    """DOP (NeurIPS 2025): each matrix optimised with Adam to agree with the previous merge on its
    subspaces (stability) and with the new expert on its own (plasticity), MGDA-weighted.

    Per matrix and step: two thin SVDs, then ``num_steps`` Adam steps of 8·k·m·n multiply-adds
    each (k ≤ min(m, n) the kept ranks); peak ≈ 12·m·n floats beyond the inputs."""

    name = "dop"
    summary = ("continual: per matrix, Adam on projection losses onto the previous merge's and the "
               "new expert's subspaces, MGDA-weighted (NeurIPS 2025)")
    parameters_model: ClassVar[type[DopParameters]] = DopParameters

    def __init__(self, parameters: DopParameters, config: MergeConfig, num_layers: int) -> None:
        super().__init__(parameters, config, num_layers)
        self.options = parameters

    def merge_tensor(self, name: str, position: TensorPosition, base: torch.Tensor,
                     experts: list[torch.Tensor]) -> torch.Tensor:
        first, *new = self.chain
        merged = experts[first]
        matrix = self.is_matrix(name, position, base)
        steps: list[dict[str, Any]] = []
        for index in new:
            if matrix:
                result = dop_merge_matrix(base, merged, experts[index], self.options)
                merged = result.merged
                steps.append({"ranks": list(result.ranks), "weights": list(result.weights),
                              "losses": list(result.losses)})
            else:
                merged = (merged + experts[index]) / 2
        record: dict[str, Any] = {"shape": list(base.shape),
                                  "merged_as": "first model" if not new else
                                  "optimised" if matrix else "mean"}
        if steps:
            record["steps"] = steps
        self.record(name, position, record)
        return merged.clone() if merged is experts[first] else merged

    def report(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "applied": {"parameters": self.parameters.model_dump(by_alias=True),
                        "exclude": self.exclude, "skipped_first_model_as_base": self.skipped_base,
                        "steps": len(self.chain) - 1},
            **self.tensor_report(),
        }
