"""Stage 3 of RECALL: similarity between models' layer representations, and softmax weights.

All functions are pure. ``states`` is (K, m, d): K models, m typical samples, hidden size d, for
one layer. Similarities are (K, K).
"""

from __future__ import annotations

from typing import Literal

import torch

Kernel = Literal["rbf", "cosine", "cka"]
Aggregation = Literal["aligned", "all_pairs"]
Bandwidth = Literal["median", "median_aligned"] | float


def _pairwise_sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(a, d), (b, d) → (a, b) squared Euclidean distances, computed in float64 and clamped ≥ 0."""
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    sq = (x64 * x64).sum(-1)[:, None] + (y64 * y64).sum(-1)[None, :] - 2.0 * x64 @ y64.T
    return sq.clamp_min(0.0)


def bandwidth_for(states: torch.Tensor, rule: Bandwidth) -> float:
    """σ of the RBF kernel for one layer.

    median: median distance over all pairs of the K·m pooled vectors (the classic heuristic).
    median_aligned: median over same-sample, cross-model distances ‖h_p^k − h_p^l‖, k ≠ l, which
    is the scale at which models actually differ. A number is used as is. When every distance is
    zero (identical models) σ = 1, which makes every similarity exactly 1.
    """
    if not isinstance(rule, str):
        return float(rule)
    num_models, num_samples, _ = states.shape
    if rule == "median":
        flat = states.reshape(num_models * num_samples, -1)
        sq = _pairwise_sq_dists(flat, flat)
        upper = torch.triu_indices(sq.shape[0], sq.shape[0], offset=1)
        distances = sq[upper[0], upper[1]].sqrt()
    elif rule == "median_aligned":
        diffs = states[:, None, :, :].to(torch.float64) - states[None, :, :, :].to(torch.float64)
        sq = (diffs * diffs).sum(-1)  # (K, K, m)
        upper = torch.triu_indices(num_models, num_models, offset=1)
        distances = sq[upper[0], upper[1]].reshape(-1).sqrt()
    else:
        raise ValueError(f"unknown bandwidth rule {rule!r}")
    sigma = float(distances.median()) if distances.numel() else 0.0
    return sigma if sigma > 0 else 1.0


def rbf_similarity(states: torch.Tensor, sigma: float, aggregation: Aggregation = "aligned") -> torch.Tensor:
    """S[k, l] = mean over samples of exp(−‖h^k − h^l‖² / (2σ²)).

    aligned: the same sample p through both models (mean over p). all_pairs: every pair (p, q),
    an MMD-style kernel mean embedding inner product.
    """
    num_models = states.shape[0]
    similarity = torch.empty(num_models, num_models, dtype=torch.float64)
    for k in range(num_models):
        for ell in range(num_models):
            if aggregation == "aligned":
                diff = states[k].to(torch.float64) - states[ell].to(torch.float64)
                sq = (diff * diff).sum(-1)
            else:
                sq = _pairwise_sq_dists(states[k], states[ell])
            similarity[k, ell] = torch.exp(-sq / (2.0 * sigma * sigma)).mean()
    return similarity


def cosine_similarity(states: torch.Tensor, aggregation: Aggregation = "aligned") -> torch.Tensor:
    normed = torch.nn.functional.normalize(states.to(torch.float64), dim=-1)
    if aggregation == "aligned":
        return torch.einsum("kpd,lpd->klp", normed, normed).mean(-1)
    return torch.einsum("kpd,lqd->klpq", normed, normed).mean(dim=(-1, -2))


def linear_cka(states: torch.Tensor) -> torch.Tensor:
    """Linear CKA between the (m, d) sample matrices of each pair of models (Kornblith et al. 2019)."""
    centred = states.to(torch.float64) - states.to(torch.float64).mean(dim=1, keepdim=True)
    num_models = states.shape[0]
    grams = [c @ c.T for c in centred]  # (m, m) each
    norms = [torch.linalg.norm(g) for g in grams]
    similarity = torch.empty(num_models, num_models, dtype=torch.float64)
    for k in range(num_models):
        for ell in range(num_models):
            denominator = norms[k] * norms[ell]
            similarity[k, ell] = (grams[k] * grams[ell]).sum() / denominator if denominator > 0 else 1.0
    return similarity


def similarity_matrix(states: torch.Tensor, kernel: Kernel = "rbf", aggregation: Aggregation = "aligned",
                      bandwidth: Bandwidth = "median") -> tuple[torch.Tensor, float | None]:
    """(K, K) similarity of one layer and the bandwidth used (None for non-RBF kernels)."""
    if kernel == "rbf":
        sigma = bandwidth_for(states, bandwidth)
        return rbf_similarity(states, sigma, aggregation), sigma
    if kernel == "cosine":
        return cosine_similarity(states, aggregation), None
    if kernel == "cka":
        return linear_cka(states), None
    raise ValueError(f"unknown kernel {kernel!r}")


def softmax_weights(row: torch.Tensor, temperature: float) -> torch.Tensor:
    """α = softmax(row / τ) in float64 (sums to 1 to rounding)."""
    return torch.softmax(row.to(torch.float64) / temperature, dim=0)
