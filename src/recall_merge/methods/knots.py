"""KnOTS (Stoica et al., ICLR 2025, arXiv 2410.19735): merge the experts of one base in the
joint singular basis of their updates.

Per 2-D tensor (m × n), with ΔW_k the update of expert k (B_k·A_k·scale for a LoRA expert):

1. one SVD of the updates side by side, [ΔW_1 … ΔW_T] = U S [V_1ᵀ … V_Tᵀ], keeping the singular
   values above ``eps`` (K of them, the *joint rank*): every task is now written in the same
   basis, ΔW_k = U S V_kᵀ;
2. merge the aligned per-task factors S·V_kᵀ (K × n each; or V_kᵀ alone) with TIES, DARE or a
   plain sum, elementwise, as one would merge task vectors;
3. Δ = U · merged, θ = θ_base + λ·Δ.

The maths of step 1 follows FusionBench 0.2.33 (``fusion_bench/method/knots/knots_utils.py``,
``subspace_alignment``: the SVD in float64, kept where S > eps) and the official code
(github.com/gstoica27/KnOTS, ``task_merger.py`` ``SVDMerger``: S·V_kᵀ is what gets merged,
``masking_ops.py``: TIES and DARE on it, disjoint mean); ``tests/test_knots_wudi.py`` checks it
against FusionBench's function. Step 2 uses this project's TIES and DARE (:mod:`.ops`), per tensor
rather than over the whole model (see docs/methods.md for the differences from the official code).

Two routes to the same joint SVD, chosen per tensor:

- *factors*, when every expert is a LoRA adapter on this tensor (or leaves it alone) and the
  summed rank R = Σ_k r_k is below the dense rank bound min(m, T·n): the concatenation is
  [B_1 … B_T] · blockdiag(A_1 … A_T), so with B = Q_B R_B and A_kᵀ = Q_k R_k (thin QRs) it equals
  Q_B · (R_B · blockdiag(R_kᵀ)) · blockdiag(Q_kᵀ), and only the R × R core needs an SVD:
  U = Q_B U_c, V_kᵀ = (V_cᵀ)_k Q_kᵀ. Cost O((m + T·n)·R² + R³) against O(m·T·n·min(m, T·n)) for
  the dense SVD, and the m × T·n concatenation is never built. Measured against the dense route
  (random rank-2..16 factors on 64 × 64 … 1536 × 576, T = 2..4): the per-task U S V_kᵀ agree to
  ≤ 1.5e-8 and the merged matrices, for every merge, to ≤ 4.5e-8 (float32; tests/test_knots_wudi.py
  checks ≤ 1e-7 and ≤ 1e-6). On 576 × 576, T = 3, r = 8, one thread: 7 ms and 3.6 MB extra peak
  (factors) against 0.88 s and 38 MB (dense, float64).
- *dense* otherwise (full fine-tuned experts, a LoRA tensor of higher summed rank, mixed experts):
  the SVD of the m × T·n concatenation in float64, as FusionBench does.

The merged result is the same whichever signs the SVD picks for (u_i, v_i): TIES' trim, sign
election and disjoint mean, and DARE's mask, act on each row of S·V_kᵀ the same way for all k.

Tensors that are not 2-D (norms, biases) and excluded names get the chosen merge applied to the
task vectors themselves: that is what the joint SVD gives for a tensor seen as one row (rank 1,
S·V_kᵀ = ±τ_k).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import Field

from recall_merge.errors import ConfigError
from recall_merge.methods import ops, svd_ops
from recall_merge.methods.base import MergeMethod, StrictParameters, TensorPosition
from recall_merge.methods.classic import MAX_WEIGHT, dare_seed
from recall_merge.methods.tensor_records import TensorRecords

if TYPE_CHECKING:
    from recall_merge.config import MergeConfig
    from recall_merge.io.pool import ModelPool

KnotsMerge = Literal["ties", "dare", "linear"]

# The official Llama-3-8B LoRA configs (configs/llama8B_r16_knots_ties.py and
# ..._knots_dare_ties.py): TIES with topK 100 (no trim: sign election and disjoint mean only)
# at λ = 0.5; DARE with pruning 0.8 (density 0.2) then TIES' sign election at λ = 0.4. The
# official code has no KnOTS-linear configuration; λ = 1 is task arithmetic's default.
DEFAULT_DENSITY: dict[str, float] = {"ties": 1.0, "dare": 0.2}
DEFAULT_LAMBDA: dict[str, float] = {"ties": 0.5, "dare": 0.4, "linear": 1.0}
# Singular values at or below this are dropped (the official task_merger.py: S > 1e-5;
# FusionBench's subspace_alignment defaults to 1e-4).
DEFAULT_EPS = 1e-5

LoraFactors = tuple[torch.Tensor, torch.Tensor] | None  # (left m × r, right r × n), None = no update


class KnotsParameters(StrictParameters):
    """Options of KnOTS (docs/methods.md)."""

    merge: KnotsMerge = Field(
        "ties", description="how the aligned per-task factors are merged: ties (trim to `density`, "
        "sign election, disjoint mean), dare (random drop to `density`, rescale by 1/density, sign "
        "election, disjoint mean) or linear (their sum)",
    )
    density: float | None = Field(
        None, gt=0, le=1, description="fraction of each task's aligned factor kept, in (0, 1]. "
        "Default: the official Llama-3-8B config, 1.0 for ties (topK 100) and 0.2 for dare "
        "(pruning 0.8). Not used by linear",
    )
    lambda_: float | None = Field(
        None, alias="lambda", ge=-MAX_WEIGHT, le=MAX_WEIGHT, description="scale of the merged "
        "update, |lambda| ≤ 1000. Default: the official Llama-3-8B config, 0.5 for ties and 0.4 "
        "for dare; 1.0 for linear",
    )
    scale_by_singular_values: bool = Field(
        True, description="merge S·V_k (the official code) rather than V_k; S is applied after "
        "the merge when false",
    )
    eps: float = Field(
        DEFAULT_EPS, ge=0, le=1, description="singular values at or below eps are dropped from "
        "the joint basis (official code 1e-5; FusionBench's default 1e-4)",
    )
    exclude: list[str] = Field(
        default_factory=list, description="tensor names (fnmatch patterns) merged without the "
        "joint SVD: the chosen merge is applied to the task vectors themselves",
    )


class JointSvd(NamedTuple):
    """The joint basis of T updates of one m × n tensor: U (m × K), S (K,), and each task's
    V_kᵀ (K × n), float32; ``rank_bound`` is the most K could have been."""

    u: torch.Tensor
    s: torch.Tensor
    vhs: list[torch.Tensor]
    rank_bound: int

    @property
    def rank(self) -> int:
        return int(self.s.numel())


def _kept(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, eps: float
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    keep = s > eps
    return u[:, keep], s[keep], vh[keep]


def joint_svd_dense(deltas: Sequence[torch.Tensor], eps: float = DEFAULT_EPS) -> JointSvd:
    """KnOTS' alignment from the dense updates: the thin SVD of [ΔW_1 … ΔW_T] (m × T·n) in float64,
    singular values > eps kept, factors cast back to float32 (FusionBench's subspace_alignment).
    ``deltas`` is read once, one update at a time. T × (m, n) → JointSvd."""
    count = len(deltas)
    delta = deltas[0]
    rows, cols = delta.shape
    concatenated = torch.empty(rows, count * cols, dtype=torch.float64)
    for k in range(count):
        if k:
            delta = deltas[k]
        concatenated[:, k * cols:(k + 1) * cols] = delta
    del delta
    u, s, vh = torch.linalg.svd(concatenated, full_matrices=False)
    del concatenated
    u, s, vh = _kept(u, s, vh, eps)
    vhs = [block.to(torch.float32) for block in vh.split(cols, dim=1)]
    return JointSvd(u.to(torch.float32), s.to(torch.float32), vhs, min(rows, count * cols))


def joint_svd_factors(factors: Sequence[LoraFactors], shape: tuple[int, int] | torch.Size,
                      eps: float = DEFAULT_EPS) -> JointSvd:
    """The same alignment from low-rank factors ΔW_k = left_k @ right_k (None: ΔW_k = 0), without
    forming any m × n matrix beyond U: QR of the stacked lefts, QR of each right, SVD of the small
    core (module docstring). All in float64, factors cast back to float32. → JointSvd."""
    rows, cols = int(shape[0]), int(shape[1])
    present = [(k, pair) for k, pair in enumerate(factors) if pair is not None and pair[0].shape[1] > 0]
    if not present:
        return JointSvd(torch.zeros(rows, 0), torch.zeros(0), [torch.zeros(0, cols) for _ in factors], 0)
    q_left, r_left = torch.linalg.qr(torch.cat([left.double() for _, (left, _) in present], dim=1))
    core_blocks: list[torch.Tensor] = []
    right_bases: list[torch.Tensor] = []
    start = 0
    for _, (left, right) in present:
        width = left.shape[1]
        q_right, r_right = torch.linalg.qr(right.double().T)  # right = r_rightᵀ q_rightᵀ
        core_blocks.append(r_left[:, start:start + width] @ r_right.T)
        right_bases.append(q_right)
        start += width
    core = torch.cat(core_blocks, dim=1)
    u_core, s, vh_core = _kept(*torch.linalg.svd(core, full_matrices=False), eps)
    u = (q_left @ u_core).to(torch.float32)
    vhs = [torch.zeros(s.numel(), cols) for _ in factors]
    offset = 0
    for (k, _), q_right in zip(present, right_bases, strict=True):
        width = q_right.shape[1]
        vhs[k] = (vh_core[:, offset:offset + width] @ q_right.T).to(torch.float32)
        offset += width
    return JointSvd(u, s.to(torch.float32), vhs, min(core.shape))


def merge_aligned(aligned: Sequence[torch.Tensor], merge: KnotsMerge, density: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Merge T tensors of one shape elementwise: the aligned factors of KnOTS (K × n each) or, for
    a tensor without the SVD, the task vectors themselves.

    ties: keep each tensor's ⌊density·numel⌋ largest |x|, elect the sign of the sum, average the
    entries that agree (:func:`.ops.disjoint_merge` with unit weights: the official disjoint
    mean). dare: keep each entry with probability ``density`` (``generator``), divide by density
    (the official 1/(1 − p)), then the same sign election and disjoint mean (the official
    KnOTS-DARE runs TIES with topK 100 after the drop). linear: the sum. T × (*s) → (*s).
    """
    if merge == "linear":
        return svd_ops.sum_task_vectors(aligned)
    if merge == "ties":
        kept = [ops.magnitude_sparsify(tensor, density) for tensor in aligned]
    elif merge == "dare":
        if generator is None:
            raise ValueError("merge_aligned with dare needs a seeded generator")
        kept = [ops.dare_sparsify(tensor, density, generator, "density") for tensor in aligned]
    else:
        raise ValueError(f"unknown KnOTS merge {merge!r}")
    stacked = torch.stack(kept)
    del kept
    weights = torch.ones(stacked.shape[0], dtype=stacked.dtype)
    return ops.disjoint_merge(stacked, weights, ops.sign_election(stacked, "sum"))


def knots_delta(joint: JointSvd, merge: KnotsMerge, density: float = 1.0,
                generator: torch.Generator | None = None, scale_by_singular_values: bool = True
                ) -> torch.Tensor:
    """U · merge_k(S·V_kᵀ) (or U S · merge_k(V_kᵀ)): the merged update before λ. → (m, n)."""
    if joint.rank == 0:
        return torch.zeros(joint.u.shape[0], joint.vhs[0].shape[1])
    if scale_by_singular_values:
        merged = merge_aligned([joint.s[:, None] * vh for vh in joint.vhs], merge, density, generator)
        return joint.u @ merged
    merged = merge_aligned(joint.vhs, merge, density, generator)
    return (joint.u * joint.s) @ merged


def lora_factors(pool: ModelPool, name: str) -> list[LoraFactors] | None:
    """Each expert's (left, right) for tensor ``name`` (None where its adapter leaves the tensor
    alone), or None when some expert's update there is not a LoRA product (a full checkpoint, or
    a tensor an adapter replaces whole)."""
    factors: list[LoraFactors] = []
    for expert in pool.experts:
        adapter = expert.adapter
        if adapter is None or name in adapter.replacements:
            return None
        factors.append(adapter.factors(name))
    return factors


class Knots(MergeMethod):
    """KnOTS (Stoica et al., ICLR 2025): TIES, DARE or a sum of the experts' updates in the joint
    singular basis of those updates, θ = θ_base + λ·U·merge_k(S·V_kᵀ).

    Per matrix: one SVD, of the small R × R core when the experts are LoRA adapters of summed rank
    R < min(m, T·n), else of the m × T·n concatenation in float64 (docs/methods.md)."""

    name = "knots"
    summary = "TIES/DARE of the experts' updates in their joint SVD basis (Stoica et al. 2025)"
    parameters_model: ClassVar[type[KnotsParameters]] = KnotsParameters

    def __init__(self, parameters: KnotsParameters, config: MergeConfig, num_layers: int) -> None:
        super().__init__(parameters, config, num_layers)
        self.parameters: KnotsParameters = parameters
        merge = parameters.merge
        if merge == "linear" and parameters.density is not None:
            raise ConfigError(
                "parameters.density is set, but merge: linear keeps every entry (it sums the "
                "aligned factors)",
                "remove parameters.density, or choose merge: ties or merge: dare")
        self.density = parameters.density if parameters.density is not None else DEFAULT_DENSITY.get(merge, 1.0)
        self.scale = parameters.lambda_ if parameters.lambda_ is not None else DEFAULT_LAMBDA[merge]
        self.pool: ModelPool | None = None
        self.records = TensorRecords()

    def plan(self, pool: ModelPool, *, quiet: bool = False) -> None:
        # Nothing is read here: the pool is kept so that a LoRA expert's factors can be read
        # beside the dense tensors the engine hands over.
        self.pool = pool

    def _generator(self, name: str) -> torch.Generator | None:
        if self.parameters.merge != "dare":
            return None
        return torch.Generator().manual_seed(dare_seed(self.config.seed, name))

    def _is_svd_tensor(self, name: str, tensor: torch.Tensor) -> bool:
        return tensor.dim() == 2 and not any(
            fnmatch.fnmatchcase(name, pattern) for pattern in self.parameters.exclude)

    def joint_svd(self, name: str, base: torch.Tensor, experts: list[torch.Tensor]) -> tuple[JointSvd, str]:
        """The joint basis of one matrix and the route that computed it ("factors" or "dense")."""
        rows, cols = base.shape
        factors = lora_factors(self.pool, name) if self.pool is not None else None
        if factors is not None:
            summed_rank = sum(pair[0].shape[1] for pair in factors if pair is not None)
            if summed_rank < min(rows, len(experts) * cols):
                return joint_svd_factors(factors, base.shape, self.parameters.eps), "factors"
        return joint_svd_dense(svd_ops.LazyTaskVectors(base, experts), self.parameters.eps), "dense"

    def merge_tensor(
        self, name: str, position: TensorPosition, base: torch.Tensor, experts: list[torch.Tensor]
    ) -> torch.Tensor:
        parameters = self.parameters
        record: dict[str, Any] = {"shape": list(base.shape)}
        generator = self._generator(name)
        if self._is_svd_tensor(name, base):
            joint, route = self.joint_svd(name, base, experts)
            delta = knots_delta(joint, parameters.merge, self.density, generator,
                                parameters.scale_by_singular_values)
            record.update(merged_as="knots", route=route, joint_rank=joint.rank, rank_bound=joint.rank_bound)
            del joint
        else:
            delta = merge_aligned(list(svd_ops.LazyTaskVectors(base, experts)), parameters.merge,
                                  self.density, generator)
            record["merged_as"] = f"{parameters.merge} of the task vectors"
        record["scale"] = self.scale
        self.records.add(name, position, record)
        return delta.mul_(self.scale).add_(base)

    def report(self) -> dict[str, Any]:
        """The resolved options, and per block every tensor's record: how it was merged, the
        route and joint rank K of its SVD (out of ``rank_bound``), the scale λ."""
        layers, outside = self.records.by_block(self.num_layers)
        parameters = self.parameters
        applied: dict[str, Any] = {
            "merge": parameters.merge, "density": None if parameters.merge == "linear" else self.density,
            "lambda": self.scale, "scale_by_singular_values": parameters.scale_by_singular_values,
            "eps": parameters.eps, "exclude": list(parameters.exclude),
            "parameters": parameters.model_dump(by_alias=True)}
        if parameters.merge == "dare":
            applied["seed"] = self.config.seed
        return {"method": self.name, "applied": applied, "layers": layers,
                "outside_blocks": {"tensors": outside}, "tensors_merged": len(self.records)}
