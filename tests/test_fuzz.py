"""Hypothesis fuzzing of the config loader and the RECALL tensor functions (synthetic inputs)."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recall_merge.config import load_config
from recall_merge.errors import ConfigError
from recall_merge.recall.similarity import (
    bandwidth_for,
    cosine_similarity,
    linear_cka,
    rbf_similarity,
    similarity_matrix,
    softmax_weights,
)
from recall_merge.recall.typical import select_typical

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
keys = st.sampled_from(["method", "base", "models", "samples", "output", "seed", "dtype", "parameters",
                        "shard_size", "allow_pickle", "trust_remote_code", "device", "bogus", "modles"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, json_values, max_size=8))
def test_config_loader_accepts_or_raises_config_error(raw):
    """Whatever the dict holds, loading either validates or raises ConfigError (never a crash)."""
    try:
        load_config(raw)
    except ConfigError as error:
        assert error.problem and error.fix
    except Exception as error:  # a missing path is found later by the pool, not the loader
        raise AssertionError(f"unexpected {type(error).__name__}: {error}") from error


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.sampled_from(["num_typical", "temperature", "kernel", "aggregation", "bandwidth",
                                        "variant", "include_base", "scale", "max_length", "typo_key"]),
                       json_values, max_size=5))
def test_recall_parameters_validate_or_explain(parameters):
    raw = {"method": "recall", "base": "/nonexistent/base", "models": ["/nonexistent/m"],
           "samples": "/nonexistent/s.jsonl", "output": "/tmp/out", "parameters": parameters}
    try:
        load_config(raw)
    except ConfigError as error:
        assert "parameters" in error.problem or "invalid" in error.problem


shapes = st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 8))
scales = st.sampled_from([0.0, 1e-6, 1.0, 1e3, 1e6])


@settings(max_examples=100, deadline=None)
@given(shapes, scales, st.integers(0, 2**16))
def test_similarities_are_finite_bounded_and_symmetric(shape, scale, seed):
    states = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale
    for kernel in ("rbf", "cosine", "cka"):
        for aggregation in ("aligned", "all_pairs"):
            similarity, sigma = similarity_matrix(states, kernel, aggregation, "median")
            assert similarity.shape == (shape[0], shape[0])
            assert torch.isfinite(similarity).all()
            assert torch.allclose(similarity, similarity.T, atol=1e-9)
            assert (similarity <= 1 + 1e-9).all()
            if kernel == "rbf":
                assert sigma > 0 and (similarity >= 0).all()
                assert torch.allclose(similarity.diagonal(), torch.ones(shape[0], dtype=torch.float64)) or \
                    aggregation == "all_pairs"


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(0, 2**16))
def test_identical_models_are_maximally_similar(shape, seed):
    one = torch.randn(shape[1:], generator=torch.Generator().manual_seed(seed))
    states = one.expand(shape[0], *shape[1:]).clone()
    assert torch.allclose(rbf_similarity(states, bandwidth_for(states, "median_aligned")),
                          torch.ones(shape[0], shape[0], dtype=torch.float64))
    assert torch.allclose(linear_cka(states), torch.ones(shape[0], shape[0], dtype=torch.float64)) or shape[1] == 1
    if one.norm() > 0:
        assert torch.allclose(cosine_similarity(states), torch.ones(shape[0], shape[0], dtype=torch.float64))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=8), st.floats(1e-4, 1e3))
def test_softmax_weights_sum_to_one(row, temperature):
    alpha = softmax_weights(torch.tensor(row, dtype=torch.float64), temperature)
    assert math.isclose(float(alpha.sum()), 1.0, abs_tol=1e-9)
    assert (alpha >= 0).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 10), st.integers(0, 1000), st.sampled_from(["kmeans", "random"]))
def test_typical_selection_returns_distinct_valid_indices(n, count, seed, selection):
    features = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
    if n > 3:
        features[1] = features[0]  # duplicates must not be picked twice
    chosen = select_typical(features, count, seed=seed, selection=selection)
    assert len(chosen) == min(count, n)
    assert len(set(chosen)) == len(chosen)
    assert all(0 <= i < n for i in chosen)
    assert chosen == select_typical(features, count, seed=seed, selection=selection)
