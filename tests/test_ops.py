"""Tensor functions of the classic methods: hand examples and hypothesis properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recall_merge.methods import ops

# ---------------------------------------------------------------------------------------------
# Hand examples (numbers small enough to check on paper)


def test_task_vectors_stack() -> None:
    base = torch.tensor([1.0, 2.0])
    out = ops.task_vectors(base, [torch.tensor([2.0, 2.0]), torch.tensor([0.0, 5.0])])
    assert torch.equal(out, torch.tensor([[1.0, 0.0], [-1.0, 3.0]]))


def test_magnitude_sparsify_keeps_top_k() -> None:
    x = torch.tensor([0.1, -3.0, 2.0, -0.5])
    assert torch.equal(ops.magnitude_sparsify(x, 0.5), torch.tensor([0.0, -3.0, 2.0, 0.0]))
    # at least one entry survives a positive density
    assert torch.equal(ops.magnitude_sparsify(x, 0.01), torch.tensor([0.0, -3.0, 0.0, 0.0]))
    assert ops.magnitude_sparsify(x, 1.0) is x


def test_magnitude_sparsify_l1_rescale() -> None:
    x = torch.tensor([1.0, -3.0, 2.0, -2.0])
    out = ops.magnitude_sparsify(x, 0.5, rescale_norm="l1")
    assert torch.allclose(out.abs().sum(), x.abs().sum())
    assert torch.allclose(out, torch.tensor([0.0, -3.0, 2.0, 0.0]) * 8 / 5)


def test_breadcrumbs_drops_outliers_and_small() -> None:
    x = torch.arange(1.0, 11.0)  # |x| = 1..10
    out = ops.breadcrumbs_sparsify(x, density=0.5, gamma=0.2)
    # drop the 2 largest (9, 10) and the 3 smallest (1, 2, 3): keep 4..8
    expected = torch.tensor([0, 0, 0, 4, 5, 6, 7, 8, 0, 0], dtype=torch.float32)
    assert torch.equal(out, expected)


def test_breadcrumbs_keeps_density_when_gamma_too_large() -> None:
    x = torch.arange(1.0, 11.0)
    out = ops.breadcrumbs_sparsify(x, density=0.9, gamma=0.5)
    assert int((out != 0).sum()) == 9  # only one outlier can go
    assert out[-1] == 0 and out[0] != 0  # the largest goes, the smallest stays


def test_sign_election_sum_and_count() -> None:
    deltas = torch.tensor([[1.0, -1.0], [1.0, -1.0], [-5.0, 3.0]])
    by_sum = ops.sign_election(deltas, "sum")
    by_count = ops.sign_election(deltas, "count")
    # column 0: mass −3 elects −; column 1: mass +1 elects + although two of three are −
    assert torch.equal(by_sum, torch.tensor([[False, False], [False, False], [True, True]]))
    assert torch.equal(by_count, torch.tensor([[True, True], [True, True], [False, False]]))


def test_disjoint_merge_divisor_guard() -> None:
    deltas = torch.tensor([[2.0, 0.0], [4.0, 0.0]])
    weights = torch.tensor([1.0, 1.0])
    mask = ops.sign_election(deltas)
    # second entry: nobody agrees with + (both are 0) → divisor 1, result 0, no NaN
    assert torch.equal(ops.disjoint_merge(deltas, weights, mask), torch.tensor([3.0, 0.0]))


def test_weighted_sum_guard_on_cancelling_weights() -> None:
    weighted = torch.tensor([[1.0], [-1.0]])
    assert torch.equal(ops.weighted_sum(weighted, torch.tensor([1.0, -1.0]), normalize=True),
                       torch.tensor([0.0]))


def test_ties_hand_example() -> None:
    base = torch.zeros(3)
    experts = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 1.0, -0.5])]
    deltas = ops.task_vectors(base, experts)
    out = ops.combine_task_vectors(base, deltas, torch.tensor([1.0, 1.0]), consensus="sum", normalize=True)
    # entry 0 agree → mean 2; entry 1 sum −1 → only −2 kept; entry 2 sum 0 → + elected → 0.5
    assert torch.allclose(out, torch.tensor([2.0, -2.0, 0.5]))


def test_weights_apply_before_sign_election() -> None:
    base = torch.zeros(1)
    deltas = torch.tensor([[1.0], [-2.0]])
    # unweighted, − wins; with weight 3 on the first model, + wins (3 > 2), as in mergekit
    out = ops.combine_task_vectors(base, deltas, torch.tensor([3.0, 1.0]), consensus="sum", normalize=True)
    assert torch.allclose(out, torch.tensor([1.0]))


def test_magmax_picks_largest_magnitude() -> None:
    deltas = torch.tensor([[1.0, -4.0, 0.0], [-2.0, 3.0, 0.0]])
    assert torch.equal(ops.magmax(deltas), torch.tensor([-2.0, -4.0, 0.0]))


def test_dare_seeded_and_rescaled() -> None:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    a = ops.dare_sparsify(x, 0.3, torch.Generator().manual_seed(7), rescale_norm="density")
    b = ops.dare_sparsify(x, 0.3, torch.Generator().manual_seed(7), rescale_norm="density")
    c = ops.dare_sparsify(x, 0.3, torch.Generator().manual_seed(8), rescale_norm="density")
    assert torch.equal(a, b) and not torch.equal(a, c)
    kept = a != 0
    assert torch.allclose(a[kept], x[kept] / 0.3)
    assert 0.22 < kept.float().mean() < 0.38
    l1 = ops.dare_sparsify(x, 0.3, torch.Generator().manual_seed(7), rescale_norm="l1")
    assert torch.allclose(l1.abs().sum(), x.abs().sum())


def test_dare_unbiased_in_expectation() -> None:
    x = torch.randn(64, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    draws = torch.stack([ops.dare_sparsify(x, 0.5, generator, rescale_norm="density") for _ in range(4000)])
    # each entry is x/p with probability p: mean x, standard error |x|·sqrt((1-p)/p)/sqrt(4000)
    stderr = x.abs() / 4000**0.5
    assert ((draws.mean(0) - x).abs() <= 5 * stderr + 1e-6).all()


@pytest.mark.parametrize(
    ("values", "t", "expected"),
    [(0.5, 0.3, 0.5), ([0.0, 1.0], 0.25, 0.25), ([0.0, 1.0, 0.0], 0.75, 0.5),
     ([1.0, 2.0, 3.0, 4.0], 2 / 3, 3.0), ([1.0, 2.0], 1.0, 2.0), ([7.0], 0.5, 7.0)],
)
def test_interpolate_gradient(values, t, expected) -> None:
    assert ops.interpolate_gradient(values, t) == pytest.approx(expected)


def test_gradient_with_one_value_per_block_is_exact() -> None:
    values = [0.1 * k + 0.013 for k in range(29)]
    for layer in range(29):
        t = ops.mergekit_t("block", layer, 29)
        assert ops.interpolate_gradient(values, t) == pytest.approx(values[layer], abs=1e-12)


def test_mergekit_t() -> None:
    assert ops.mergekit_t("block", 0, 4) == 0.0
    assert ops.mergekit_t("block", 3, 4) == 1.0
    assert ops.mergekit_t("block", 0, 1) == 1.0
    assert ops.mergekit_t("head", None, 4) == 0.0
    assert ops.mergekit_t("norm", None, 4) == 0.0


# ---------------------------------------------------------------------------------------------
# Properties (hypothesis). Each "method" maps (base, experts, weights) → merged tensor.


def _ta(base, experts, weights):
    deltas = ops.task_vectors(base, experts)
    return ops.combine_task_vectors(base, deltas, weights, consensus=None, normalize=True)


def _ties(base, experts, weights, density=0.5):
    deltas = torch.stack([ops.magnitude_sparsify(d, density) for d in ops.task_vectors(base, experts)])
    return ops.combine_task_vectors(base, deltas, weights, consensus="sum", normalize=True)


def _breadcrumbs(base, experts, weights):
    deltas = torch.stack([ops.breadcrumbs_sparsify(d, 0.6, 0.1) for d in ops.task_vectors(base, experts)])
    return ops.combine_task_vectors(base, deltas, weights, consensus=None, normalize=True)


def _magmax(base, experts, weights):
    deltas = ops.task_vectors(base, experts)
    return base + ops.magmax(deltas * weights.reshape(-1, 1))


def _linear(base, experts, weights):
    return ops.weighted_average(experts, weights.tolist(), normalize=True)


def _dare(base, experts, weights):
    generator = torch.Generator().manual_seed(0)
    deltas = torch.stack([ops.dare_sparsify(d, 0.5, generator) for d in ops.task_vectors(base, experts)])
    return ops.combine_task_vectors(base, deltas, weights, consensus=None, normalize=True)


SYMMETRIC = {"linear": _linear, "task_arithmetic": _ta, "ties": _ties, "breadcrumbs": _breadcrumbs}
ALL = {**SYMMETRIC, "magmax": _magmax, "dare": _dare}

# Values on a grid of multiples of 1/8 are exact in float32, so sums do not depend on order and
# magnitude ties are real ties only where the values are really equal.
_value = st.integers(-64, 64).map(lambda i: i / 8)
_size = st.integers(1, 12)


@st.composite
def _models(draw, min_models: int = 1, max_models: int = 4):
    size = draw(_size)
    n = draw(st.integers(min_models, max_models))
    base = torch.tensor(draw(st.lists(_value, min_size=size, max_size=size)))
    experts = [torch.tensor(draw(st.lists(_value, min_size=size, max_size=size))) for _ in range(n)]
    return base, experts


@settings(max_examples=40, deadline=None)
@given(_models(1, 1), st.sampled_from(sorted(set(ALL) - {"dare"})))
def test_one_model_in_same_model_out(models, method) -> None:
    base, experts = models
    out = ALL[method](base, experts, torch.ones(1))
    if method in ("ties", "breadcrumbs"):
        # a single model survives sparsification only where it is kept; density 1 gives it back
        out = {"ties": lambda: _ties(base, experts, torch.ones(1), density=1.0),
               "breadcrumbs": lambda: ops.combine_task_vectors(
                   base, torch.stack([ops.breadcrumbs_sparsify(d, 1.0, 0.1)
                                      for d in ops.task_vectors(base, experts)]),
                   torch.ones(1), consensus=None, normalize=True)}[method]()
    assert torch.allclose(out, experts[0], atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(_models(2, 4), st.sampled_from(sorted(SYMMETRIC)), st.randoms(use_true_random=False))
def test_permutation_invariance(models, method, rng) -> None:
    base, experts = models
    weights = torch.tensor([1.0 + k * 0.5 for k in range(len(experts))])
    order = list(range(len(experts)))
    rng.shuffle(order)
    out = SYMMETRIC[method](base, experts, weights)
    permuted = SYMMETRIC[method](base, [experts[i] for i in order], weights[order])
    assert torch.allclose(out, permuted, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(_models(1, 4), st.sampled_from(sorted(set(ALL) - {"linear"})))
def test_zero_task_vectors_return_base(models, method) -> None:
    base, experts = models
    same = [base.clone() for _ in experts]
    out = ALL[method](base, same, torch.ones(len(same)))
    assert torch.equal(out, base)


@settings(max_examples=40, deadline=None)
@given(_models(1, 4))
def test_linear_of_identical_models_is_that_model(models) -> None:
    base, experts = models
    same = [experts[0].clone() for _ in experts]
    assert torch.allclose(_linear(base, same, torch.ones(len(same))), experts[0], atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(_models(1, 1), st.floats(0.05, 1.0))
def test_magnitude_sparsify_count(models, density) -> None:
    _, experts = models
    x = experts[0]
    out = ops.magnitude_sparsify(x, density)
    keep = x.numel() if density >= 1 else max(1, int(density * x.numel()))
    assert int((out != 0).sum()) <= keep
    # every kept entry is at least as large as every dropped one
    kept, dropped = x[out != 0].abs(), x[(out == 0) & (x != 0)].abs()
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()
