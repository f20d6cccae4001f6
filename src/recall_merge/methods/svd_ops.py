"""Pure tensor functions of the SVD merges: TSV-M, Iso-C and Iso-CTS.

Each function sees the task vectors of ONE parameter tensor, never the model. The semantics follow
FusionBench 0.2.33 (``method/task_singular_vector/utils/TSVM_utils.py``,
``compute_and_sum_svd_mem_reduction``; ``method/isotropic_merging/iso_utils.py``, ``iso_c`` and
``iso_cts``), which the tests check to ≤ 1e-5 in float32. Where FusionBench materialises zero
padding (the kept singular vectors written into an m × r buffer), these functions keep only the
non-zero blocks: the product is the same, the memory smaller.

Shapes: a matrix task vector is (m, n) with rank bound r = min(m, n); ``deltas`` is a sequence of T
of them. A sequence (not a stacked tensor) lets the caller compute τ_k lazily
(:class:`LazyTaskVectors`), so at most one extra m × n task vector is alive at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple, overload

import torch


class LazyTaskVectors(Sequence[torch.Tensor]):
    """τ_k = w_k (θ_k − θ_base), computed on access and never stored.

    A Sequence so the pure functions below take either this or a plain list of tensors.
    """

    def __init__(self, base: torch.Tensor, experts: Sequence[torch.Tensor],
                 weights: Sequence[float] | None = None) -> None:
        self.base = base
        self.experts = experts
        self.weights = list(weights) if weights is not None else None

    def __len__(self) -> int:
        return len(self.experts)

    @overload
    def __getitem__(self, index: int) -> torch.Tensor: ...

    @overload
    def __getitem__(self, index: slice) -> list[torch.Tensor]: ...

    def __getitem__(self, index: int | slice) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        delta = self.experts[index] - self.base
        if self.weights is not None and self.weights[index] != 1:
            delta.mul_(self.weights[index])
        return delta

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self)))


def mean_task_vector(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """(1/T) Σ_k τ_k, as a running mean (FusionBench's form for tensors merged without an SVD:
    norms, biases, excluded names). T × (*s) → (*s)."""
    mean: torch.Tensor | None = None
    for k, delta in enumerate(deltas):
        if mean is None:
            mean = delta.clone()
        else:
            mean.add_((delta - mean) / (k + 1))
    if mean is None:
        raise ValueError("mean_task_vector needs at least one task vector")
    return mean


def sum_task_vectors(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_k τ_k, accumulated in place (one extra tensor alive). T × (m, n) → (m, n)."""
    total: torch.Tensor | None = None
    for delta in deltas:
        total = delta.clone() if total is None else total.add_(delta)
    if total is None:
        raise ValueError("sum_task_vectors needs at least one task vector")
    return total


def thin_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vᵀ of the thin SVD (LAPACK gesdd, as FusionBench calls it). gesdd can fail to converge
    on a finite but badly conditioned float32 matrix; that matrix is then decomposed in float64
    and the factors cast back, rather than aborting a long merge. (m, n) → (m, r), (r,), (r, n)."""
    try:
        return torch.linalg.svd(matrix, full_matrices=False)
    except torch.linalg.LinAlgError:
        u, s, vh = torch.linalg.svd(matrix.to(torch.float64), full_matrices=False)
        return u.to(matrix.dtype), s.to(matrix.dtype), vh.to(matrix.dtype)


def polar_factor(matrix: torch.Tensor) -> torch.Tensor:
    """The orthogonal factor P Qᵀ of the thin SVD matrix = P S Qᵀ: the matrix with orthonormal
    columns (rows, when wide) nearest to ``matrix`` in Frobenius norm. TSV and Iso-CTS use it to
    whiten a concatenation of singular vectors from different tasks. (m, k) → (m, k)."""
    p, _, qh = thin_svd(matrix)
    return p @ qh


def tsv_kept_rank(rank: int, num_tasks: int) -> int:
    """How many singular components TSV-M keeps per task: ⌊r / T⌋.

    FusionBench computes ``int(r * (1 / T))``, which the float product rounds one lower for a few
    (r, T) pairs (T = 49: r = 49, 98, …); integer division is the paper's 1/T exactly.
    """
    return rank // num_tasks


def tsv_merge(deltas: Sequence[torch.Tensor], keep: int) -> torch.Tensor:
    """TSV-M (Gargiulo et al., CVPR 2025) of one matrix.

    For each task k: τ_k = U_k S_k V_kᵀ, keep the top ``keep`` components. Concatenate
    U = [U_1[:, :keep] … U_T[:, :keep]] (m × T·keep), S likewise, Vᵀ row-wise; whiten
    U_⊥ = polar(U), V_⊥ᵀ = polar(Vᵀ); return U_⊥ diag(S) V_⊥ᵀ. The SVDs run one task at a time,
    so besides the inputs at most one τ_k, its thin SVD and the kept blocks are alive.
    T × (m, n) → (m, n), rank ≤ T·keep.
    """
    if keep < 1:
        raise ValueError("tsv_merge keeps at least one component per task")
    kept_u: list[torch.Tensor] = []
    kept_s: list[torch.Tensor] = []
    kept_vh: list[torch.Tensor] = []
    for delta in deltas:
        u, s, vh = thin_svd(delta)
        kept_u.append(u[:, :keep].clone())
        kept_s.append(s[:keep].clone())
        kept_vh.append(vh[:keep].clone())
        del u, s, vh, delta
    u_orth = polar_factor(torch.cat(kept_u, dim=1))
    del kept_u
    vh_orth = polar_factor(torch.cat(kept_vh, dim=0))
    del kept_vh
    return (u_orth * torch.cat(kept_s)) @ vh_orth


class Isotropic(NamedTuple):
    """A merged matrix with a flat spectrum and the singular value it was flattened to."""

    delta: torch.Tensor
    mean_singular_value: float
    common: int = 0  # Iso-CTS: the directions of the common subspace
    per_task: int = 0  # Iso-CTS: each task's own directions


def numerical_rank(s: torch.Tensor, shape: Sequence[int]) -> int:
    """How many singular values ``s`` (descending) stand above rounding noise: s_i > s_max ·
    max(m, n) · eps, torch.linalg.matrix_rank's default tolerance (restated: the caller already holds
    S, and matrix_rank would compute the SVD again)."""
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0
    tolerance = float(s[0]) * max(shape) * torch.finfo(s.dtype).eps
    return int((s > tolerance).sum())


def isotropic_merge(delta_sum: torch.Tensor, full_spectrum: bool = False) -> Isotropic:
    """Iso-C (Marczak et al., ICML 2025) of one matrix: Σ_k τ_k = U S Vᵀ → s̄ U Vᵀ, s̄ = mean(S).

    ``full_spectrum``: every one of the r = min(m, n) directions gets s̄, including those with
    S ≈ 0, as FusionBench does. Otherwise only the numerical rank's directions: the same wherever
    the sum has full rank (full fine-tuning, the paper's setting), but a sum of LoRA updates
    (rank ≤ T·r_lora) would otherwise give s̄ to hundreds of directions that are rounding noise,
    i.e. add a random matrix of that size. (m, n) → (m, n).
    """
    u, s, vh = thin_svd(delta_sum)
    rank = len(s) if full_spectrum else numerical_rank(s, delta_sum.shape)
    if rank == 0:
        return Isotropic(torch.zeros_like(delta_sum), 0.0)
    mean = s[:rank].mean()
    return Isotropic((u[:, :rank] * mean) @ vh[:rank], float(mean))


def iso_cts_split(rank: int, num_tasks: int, common_space_fraction: float) -> tuple[int, int]:
    """(common, per_task): the sizes of Iso-CTS's common subspace and of each task's subspace.

    As FusionBench: common = ⌊r·f⌋, then the task-specific total is rounded to a multiple of T
    (Python's round, half to even) and the common part takes what is left, so common + T·per_task
    = r. Where that rounding would ask for more than r directions (small r, small f), the tasks
    get ⌊r / T⌋ each instead (FusionBench would slice with a negative index there).
    """
    common = int(rank * common_space_fraction)
    task_total = round((rank - common) / num_tasks) * num_tasks
    if task_total > rank:
        task_total = (rank // num_tasks) * num_tasks
    common = rank - task_total
    return common, task_total // num_tasks


def iso_cts_merge(deltas: Sequence[torch.Tensor], common_space_fraction: float,
                  full_spectrum: bool = False) -> Isotropic:
    """Iso-CTS (Marczak et al., ICML 2025) of one matrix.

    The rank r — min(m, n) with ``full_spectrum`` (FusionBench), else the numerical rank of
    Σ_k τ_k, for the reason :func:`isotropic_merge` gives — is split into ``common`` + T·``per_task``
    directions by :func:`iso_cts_split`. Common subspace: the top ``common`` singular triplets of
    Σ_k τ_k. Task subspaces: for each task, the top ``per_task`` triplets of its residual
    τ_k − U_c U_cᵀ τ_k. The T·per_task + common left and right vectors are whitened (polar factor)
    and the spectrum is flattened to the mean of all the kept singular values: Δ = s̄ U_⊥ V_⊥ᵀ.
    ``deltas`` is read twice (sum, then the residuals). T × (m, n) → (m, n).
    """
    total = sum_task_vectors(deltas)
    u, s, vh = thin_svd(total)
    rank = len(s) if full_spectrum else numerical_rank(s, total.shape)
    if rank == 0:
        return Isotropic(torch.zeros_like(total), 0.0)
    common, per_task = iso_cts_split(rank, len(deltas), common_space_fraction)
    del total
    common_u = u[:, :common].clone()
    blocks_u: list[torch.Tensor] = []
    blocks_s: list[torch.Tensor] = [s[:common].clone()]
    blocks_vh: list[torch.Tensor] = []
    common_vh = vh[:common].clone()
    del u, s, vh
    if per_task > 0:
        for delta in deltas:
            # τ_k − U_c (U_cᵀ τ_k) in one product: no m × n temporary beside the residual.
            residual = torch.addmm(delta, common_u, common_u.T @ delta, alpha=-1)
            del delta
            u_ts, s_ts, vh_ts = thin_svd(residual)
            del residual
            blocks_u.append(u_ts[:, :per_task].clone())
            blocks_s.append(s_ts[:per_task].clone())
            blocks_vh.append(vh_ts[:per_task].clone())
            del u_ts, s_ts, vh_ts
    # FusionBench puts the task blocks first and the common block last; the polar factor commutes
    # with a column permutation, so the order is kept only to make the comparison exact.
    u_orth = polar_factor(torch.cat([*blocks_u, common_u], dim=1))
    del blocks_u, common_u
    vh_orth = polar_factor(torch.cat([*blocks_vh, common_vh], dim=0))
    del blocks_vh, common_vh
    mean = torch.cat(blocks_s).mean()
    return Isotropic((u_orth * mean) @ vh_orth, float(mean), common, per_task)
