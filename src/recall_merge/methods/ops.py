"""Pure tensor functions of the classic merge methods.

The shape of PEFT's ``utils/merge_utils.py``: small typed functions, one idea each. The semantics
follow mergekit 0.1.5 (``merge_methods/generalized_task_arithmetic.py``, ``sparsify.py``,
``merge_methods/linear.py``, ``config.evaluate_setting``) exactly, so that a merge made here and
the same merge made with ``mergekit-yaml`` give the same tensors:

- sparsification works on the whole tensor of one model (not per row);
- per-model weights multiply the (sparsified) task vectors *before* sign election;
- the TIES divisor is the sum of the weights that agree with the elected sign (0 → 1), the plain
  divisor is the sum of all weights (|·| < 1e-8 → 1);
- rescaling after a random drop matches the L1 norm of the task vector (mergekit's ``rescale``);
  the DARE paper's ``1/density`` is offered as ``"density"``.

Shapes: ``(*s)`` is the shape of one parameter tensor, ``(n, *s)`` a stack over n models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

RescaleNorm = Literal["l1", "l2", "linf", "density"]
SignMethod = Literal["sum", "count"]

# mergekit's tolerance below which a norm counts as zero when rescaling.
_RESCALE_EPS = 1e-7


def task_vectors(base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack of task vectors τ_k = θ_k − θ_base. ``base`` (*s), experts n × (*s) → (n, *s)."""
    return torch.stack([expert - base for expert in experts])


def rescale_masked(
    tensor: torch.Tensor, mask: torch.Tensor, norm: RescaleNorm | None, density: float = 1.0
) -> torch.Tensor:
    """``tensor * mask``, rescaled so that the chosen norm matches the unmasked tensor's.

    ``norm="density"`` divides by ``density`` instead (the DARE paper's 1/(1−p)). A norm below
    1e-7 before or after masking leaves the masked tensor unscaled, as mergekit does, so that an
    all-zero task vector never produces NaN. (*s), (*s) → (*s).
    """
    masked = tensor * mask
    if norm is None:
        return masked
    if norm == "density":
        return masked / density
    if norm == "l1":
        before, after = tensor.abs().sum(), masked.abs().sum()
    elif norm == "l2":
        before, after = tensor.norm(), masked.norm()
    elif norm == "linf":
        before, after = tensor.abs().max(), masked.abs().max()
    else:
        raise ValueError(f"unknown rescale norm {norm!r}")
    if before < _RESCALE_EPS or after < _RESCALE_EPS:
        return masked
    return masked * (before / after)


def magnitude_sparsify(
    tensor: torch.Tensor, density: float, rescale_norm: RescaleNorm | None = None
) -> torch.Tensor:
    """Keep the ``k = max(1, ⌊density·numel⌋)`` entries of largest |x| of one tensor, zero the rest.

    density ≥ 1 returns the tensor itself; density ≤ 0 returns zeros. (*s) → (*s).
    """
    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    keep = max(1, int(density * tensor.numel()))
    # argsort (not topk) on float32: the same ordering as mergekit, so ties break the same way.
    order = torch.argsort(tensor.abs().reshape(-1).float(), descending=True)
    mask = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
    mask[order[:keep]] = 1
    return rescale_masked(tensor, mask.reshape_as(tensor), rescale_norm, density)


def breadcrumbs_sparsify(
    tensor: torch.Tensor, density: float, gamma: float = 0.01, rescale_norm: RescaleNorm | None = None
) -> torch.Tensor:
    """Model Breadcrumbs: drop the ``⌊gamma·n⌋`` largest |x| (outliers) and the smallest, keeping
    ``⌊density·n⌋`` entries. When density + gamma > 1 fewer outliers are dropped, so the target
    density is kept. density ≥ 1 returns the tensor unchanged (gamma is then ignored, as in
    mergekit). (*s) → (*s).
    """
    if density >= 1:
        return tensor
    numel = tensor.numel()
    keep = int(density * numel)
    top = int(gamma * numel)
    bottom = max(0, numel - keep - top)
    order = torch.sort(tensor.abs().reshape(-1).float(), descending=False).indices
    mask = torch.zeros(numel, dtype=tensor.dtype, device=tensor.device)
    mask[order[bottom : bottom + keep]] = 1
    return rescale_masked(tensor, mask.reshape_as(tensor), rescale_norm, density)


def dare_sparsify(
    tensor: torch.Tensor,
    density: float,
    generator: torch.Generator,
    rescale_norm: RescaleNorm | None = "l1",
) -> torch.Tensor:
    """DARE: keep each entry with probability ``density`` (drop with p = 1 − density), then rescale.

    The draw comes from ``generator`` only, never from torch's global RNG, so a merge is
    reproducible and independent of the order in which tensors are processed. (*s) → (*s).
    """
    if density >= 1:
        return tensor
    probabilities = torch.full(tensor.shape, density, dtype=torch.float32, device=tensor.device)
    mask = torch.bernoulli(probabilities, generator=generator).to(tensor.dtype)
    return rescale_masked(tensor, mask, rescale_norm, density)


def della_keep_probabilities(tensor: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's MagPrune keep probabilities: per row (a 1-D tensor is one row), the entries ranked
    by |x| get probabilities spread linearly from ``density − ε`` (smallest) to ``density + ε``
    (largest), so their mean is ``density``.

    The ranking and arithmetic are those of mergekit 0.1.5's ``della_magprune`` step by step (rank
    along dim 1 after ``argsort``, normalised by its min and max), so the same random numbers give
    the same mask. A row of one entry has no rank spread: it gets ``density`` (mergekit divides by
    zero there). (*s) → (*s), float32.
    """
    rows = tensor.unsqueeze(0) if tensor.dim() < 2 else tensor
    if rows.dim() < 2:  # a 0-d tensor
        rows = rows.reshape(1, 1)
    if rows.shape[1] < 2:
        return torch.full(tensor.shape, density, dtype=torch.float32, device=tensor.device)
    order = torch.argsort(rows.abs(), dim=1, descending=False)
    ranks = order.argsort(dim=1).to(torch.float32) + 1
    lowest = ranks.min(dim=1, keepdim=True).values
    highest = ranks.max(dim=1, keepdim=True).values
    spread = ((ranks - lowest) / (highest - lowest)).clamp(0, 1)
    return ((density - epsilon) + spread * 2 * epsilon).reshape(tensor.shape)


def della_sparsify(
    tensor: torch.Tensor,
    density: float,
    epsilon: float,
    generator: torch.Generator,
    rescale_norm: RescaleNorm | None = "l1",
) -> torch.Tensor:
    """DELLA (Deep et al. 2024): drop each entry with probability 1 − p_i, where p_i rises with its
    magnitude rank (:func:`della_keep_probabilities`), then rescale.

    ``rescale_norm="density"`` divides each kept entry by its own p_i (the paper's unbiased
    1/(1 − p_i)); ``l1``/``l2``/``linf`` match that norm of the tensor (mergekit). density ≥ 1
    returns the tensor itself. The draw comes from ``generator`` only. (*s) → (*s).
    """
    if density >= 1 or tensor.numel() == 0:
        return tensor
    probabilities = della_keep_probabilities(tensor, density, epsilon)
    mask = torch.bernoulli(probabilities, generator=generator).to(tensor.dtype)
    if rescale_norm == "density":
        return tensor * mask / probabilities
    return rescale_masked(tensor, mask, rescale_norm, density)


def sign_election(deltas: torch.Tensor, method: SignMethod = "sum") -> torch.Tensor:
    """TIES sign election. ``deltas`` (n, *s), already weighted → bool mask (n, *s).

    "sum": the elected sign is that of Σ_k δ_k (the total mass); "count": that of Σ_k sign(δ_k).
    A tie (0) elects +. An entry is kept when its own sign equals the elected one, so exact zeros
    never count (sign(0) = 0).
    """
    signs = deltas.sign()
    if method == "sum":
        elected = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    elif method == "count":
        elected = (signs.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    else:
        raise ValueError(f"unknown sign election method {method!r}")
    return signs == elected


def _broadcast_weights(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(n,) → (n, 1, …, 1) so that it multiplies a stack (n, *s)."""
    return weights.to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))


def disjoint_merge(
    weighted_deltas: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """TIES disjoint merge: Σ_k m_k δ_k, divided (if ``normalize``) by Σ_k m_k w_k.

    ``weighted_deltas`` (n, *s) = w_k·δ_k; ``weights`` (n,); ``mask`` (n, *s) → (*s). Where no
    model agrees (divisor 0) the divisor is 1, so the entry stays 0 instead of NaN.
    """
    mask = mask.to(weighted_deltas.dtype)
    merged = (weighted_deltas * mask).sum(dim=0)
    if not normalize:
        return merged
    divisor = (_broadcast_weights(weights, weighted_deltas) * mask).sum(dim=0)
    divisor[divisor == 0] = 1
    return merged / divisor


def weighted_sum(weighted_deltas: torch.Tensor, weights: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Σ_k w_k δ_k from the weighted stack (n, *s), divided (if ``normalize``) by Σ_k w_k.

    A weight sum with |Σ w| < 1e-8 counts as 1 (mergekit's guard), so opposite weights that
    cancel do not blow up. → (*s).
    """
    merged = weighted_deltas.sum(dim=0)
    if not normalize:
        return merged
    divisor = weights.to(merged.dtype).sum()
    if divisor.abs() < 1e-8:
        divisor = torch.ones_like(divisor)
    return merged / divisor


def weighted_average(tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True) -> torch.Tensor:
    """Linear merge Σ_k w_k θ_k (/ Σ_k w_k when ``normalize``), mergekit's ``linear``.

    n × (*s) → (*s). No guard on the divisor: weights that sum to 0 are a config error upstream.
    """
    result = torch.zeros_like(tensors[0], dtype=torch.float32)
    for tensor, weight in zip(tensors, weights, strict=True):
        result.add_(tensor.float(), alpha=float(weight))
    if normalize:
        # the divisor summed in float32, as mergekit sums its weight tensor: a float64 sum
        # (0.5 + 0.7 + 0.2) rounds differently and moved ~1 % of bfloat16 entries by one step
        result.div_(torch.tensor([float(w) for w in weights], dtype=torch.float32).sum())
    return result


def magmax(weighted_deltas: torch.Tensor) -> torch.Tensor:
    """MagMax (Marczak et al. 2024): per entry, the task-vector value of largest magnitude.

    (n, *s) → (*s). On equal magnitudes the first model wins (argmax's rule).
    """
    index = weighted_deltas.abs().argmax(dim=0, keepdim=True)
    return weighted_deltas.gather(0, index).squeeze(0)


def interpolate_gradient(values: float | Sequence[float], t: float) -> float:
    """A mergekit gradient at relative depth ``t`` ∈ [0, 1].

    A number is constant; a list of m values is piecewise linear with value i at t = i/(m − 1),
    computed as mergekit does (``i0 = int(t·(m−1))``, linear between i0 and i0 + 1), so a list
    with one value per block gives block j exactly its value when t = j/(L − 1).
    """
    if isinstance(values, (int, float)):
        return float(values)
    values = [float(v) for v in values]
    if not values:
        raise ValueError("a gradient needs at least one value")
    scaled = t * (len(values) - 1)
    lower = int(scaled)
    upper = min(len(values) - 1, lower + 1)
    fraction = scaled - lower
    return (1 - fraction) * values[lower] + fraction * values[upper]


def mergekit_t(kind: str, layer: int | None, num_layers: int) -> float:
    """The ``t`` at which mergekit 0.1.5 evaluates gradients for one tensor.

    Block j of L gets j / (L − 1) (1 when L = 1). Everything outside the blocks — embeddings, the
    final norm *and* the head — gets 0: mergekit plans pre- and post-block weights with a reader
    whose t is 0 (checked against ``mergekit-yaml``; the head does not get 1).
    """
    if kind == "block" and layer is not None:
        return layer / (num_layers - 1) if num_layers > 1 else 1.0
    return 0.0


def combine_task_vectors(
    base: torch.Tensor,
    deltas: torch.Tensor,
    weights: torch.Tensor,
    *,
    consensus: SignMethod | None,
    normalize: bool,
    scale: float = 1.0,
) -> torch.Tensor:
    """mergekit's generalized task arithmetic after sparsification.

    θ = θ_base + λ · merge(w_k δ_k): the weights multiply the task vectors first, so a weighted
    model also weighs more in the sign election; then either the TIES disjoint merge (with
    ``consensus``) or a plain sum, each optionally normalised by its weight sum.
    ``base`` (*s), ``deltas`` (n, *s), ``weights`` (n,) → (*s).
    """
    if deltas.shape[0] == 0:
        return base
    weighted = deltas * _broadcast_weights(weights, deltas)
    if consensus is not None:
        mixed = disjoint_merge(weighted, weights, sign_election(weighted, consensus), normalize)
    else:
        mixed = weighted_sum(weighted, weights, normalize)
    if scale != 1:
        mixed = mixed * scale
    return base + mixed


def lines_scale(alpha: float, beta: float, kind: str, layer: int | None, num_layers: int) -> float:
    """LiNeS (Wang et al., ICLR 2025): the scale of one tensor's task vector, λ = α + β·ℓ/(L − 1)
    for block ℓ of L, so shallow blocks stay near the base and deep ones keep their update.

    Tensors outside the blocks (embeddings, final norm, head) get α, as the official code does
    (its ``layer_scalings_dict.get(k, alpha)``). With a single block (L = 1) the block gets α.
    """
    if kind == "block" and layer is not None and num_layers > 1:
        return alpha + beta * layer / (num_layers - 1)
    return alpha
