"""Bootstrap intervals and Holm's correction (recall_merge.continual.statistics), on synthetic
per-item scores whose true means are known."""

from __future__ import annotations

import numpy as np
import pytest

from recall_merge.continual.statistics import (
    bootstrap_interval,
    holm,
    macro_mean,
    paired_differences,
)


def test_constant_scores_give_a_point_interval():
    interval = bootstrap_interval([[[1, 1, 1], [0, 0]]], resamples=200)
    assert interval.estimate == interval.low == interval.high == 0.5  # macro: (1 + 0) / 2


def test_estimate_is_the_macro_mean_over_tasks_then_runs():
    runs = [[[1, 0, 1, 1], [0, 0]], [[1, 1, 1, 1], [1, 0]]]
    assert macro_mean(runs[0]) == pytest.approx((0.75 + 0) / 2)
    assert bootstrap_interval(runs, resamples=100).estimate == pytest.approx(((0.375) + (0.75)) / 2)


def test_width_matches_the_binomial_standard_error():
    rng = np.random.default_rng(1)
    items = (rng.random(300) < 0.5).astype(float)
    interval = bootstrap_interval([[items]], resamples=4000, seed=0)
    expected = 1.96 * np.sqrt(items.mean() * (1 - items.mean()) / 300)
    assert (interval.high - interval.low) / 2 == pytest.approx(expected, rel=0.1)


def test_coverage_is_close_to_nominal():
    rng = np.random.default_rng(2)
    truth, covered, trials = 0.7, 0, 200
    for trial in range(trials):
        tasks = [(rng.random(120) < truth).astype(float) for _ in range(3)]
        interval = bootstrap_interval([tasks], resamples=500, seed=trial)
        covered += interval.low <= truth <= interval.high
    assert 0.88 <= covered / trials <= 0.99


def test_same_seed_same_interval_and_another_seed_differs():
    rng = np.random.default_rng(3)
    runs = [[rng.random(50), rng.random(40)] for _ in range(3)]
    assert bootstrap_interval(runs, seed=5, resamples=500) == bootstrap_interval(runs, seed=5, resamples=500)
    assert bootstrap_interval(runs, seed=6, resamples=500) != bootstrap_interval(runs, seed=5, resamples=500)


def test_paired_difference_sees_a_small_consistent_gain():
    """B equals A except that it gets 5 % more items right: paired, the gain is clear; two separate
    intervals would overlap."""
    rng = np.random.default_rng(4)
    a = (rng.random(400) < 0.6).astype(float)
    b = a.copy()
    wrong = np.flatnonzero(a == 0)
    b[rng.choice(wrong, size=20, replace=False)] = 1.0
    difference = bootstrap_interval(paired_differences([[b]], [[a]]), resamples=2000)
    assert difference.estimate == pytest.approx(0.05)
    assert difference.excludes_zero() and difference.p_value < 0.01
    alone_a = bootstrap_interval([[a]], resamples=2000)
    alone_b = bootstrap_interval([[b]], resamples=2000)
    assert alone_b.low < alone_a.high  # unpaired intervals overlap


def test_no_difference_is_a_tie():
    rng = np.random.default_rng(5)
    a = (rng.random(300) < 0.5).astype(float)
    b = rng.permutation(a)  # same accuracy, items shuffled
    interval = bootstrap_interval(paired_differences([[a]], [[b]]), resamples=2000)
    assert not interval.excludes_zero() and interval.p_value > 0.05


def test_runs_that_disagree_widen_the_interval():
    rng = np.random.default_rng(6)
    close = [[(rng.random(200) < 0.6).astype(float)] for _ in range(4)]
    apart = [[(rng.random(200) < p).astype(float)] for p in (0.3, 0.9, 0.35, 0.85)]
    width = [bootstrap_interval(runs, resamples=2000).high - bootstrap_interval(runs, resamples=2000).low
             for runs in (close, apart)]
    assert width[1] > 2 * width[0]


def test_holm_adjustment():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert holm({}) == {}
    assert holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}


@pytest.mark.parametrize("runs", [[], [[]], [[[]]], [[[0.5, float("nan")]]]])
def test_bad_input_is_refused(runs):
    with pytest.raises(ValueError):
        bootstrap_interval(runs, resamples=10)


def test_pairs_must_match():
    with pytest.raises(ValueError):
        paired_differences([[[1, 0]]], [[[1, 0, 1]]])


def test_orders_that_share_items_are_not_counted_as_new_items():
    """Three orders of one training seed that score the same items the same way (a symmetric merge
    of the same experts) hold no more information than one: drawn as one item group, their interval
    is the one run's; drawn per run, it would be about √3 narrower."""
    rng = np.random.default_rng(0)
    run = [rng.integers(0, 2, size=300).astype(float) for _ in range(3)]
    width = lambda interval: interval.high - interval.low  # noqa: E731
    one = width(bootstrap_interval([run], resamples=4000, seed=1))
    shared = bootstrap_interval([run] * 3, resamples=4000, seed=1, item_groups=[0, 0, 0])
    per_run = width(bootstrap_interval([run] * 3, resamples=4000, seed=1))
    assert width(shared) == pytest.approx(one, rel=0.1)
    assert per_run == pytest.approx(one / np.sqrt(3), rel=0.15)
    assert shared.estimate == pytest.approx(bootstrap_interval([run]).estimate) and shared.runs == 3
    # two seeds (two item sets) draw independently: between the two cases above
    two_seeds = width(bootstrap_interval([run] * 4, resamples=4000, seed=1, item_groups=[0, 0, 1, 1]))
    assert per_run < two_seeds < one
    with pytest.raises(ValueError, match="same tasks and items"):
        bootstrap_interval([run, run[:2]], item_groups=[0, 0])


def test_runs_with_different_subsets_of_tasks_share_draws_by_task_key():
    """BWT's runs of one training seed hold different subsets of the same tasks (the last task
    trained has no term): keyed by task, the draws of a task are shared by the runs that hold it.
    Three orders that leave out a different task each, with the same values per task, hold no
    more information than the union of tasks: their crossed interval is as wide as pooling each
    task's items once, and wider than drawing each run on its own."""
    rng = np.random.default_rng(3)
    tasks = [rng.integers(0, 2, size=300).astype(float) for _ in range(3)]
    keys = [[1, 2], [0, 2], [0, 1]]  # order k left task k out
    runs = [[tasks[key] for key in run_keys] for run_keys in keys]
    width = lambda interval: interval.high - interval.low  # noqa: E731
    crossed = bootstrap_interval(runs, resamples=4000, seed=2, item_groups=[0, 0, 0], task_keys=keys)
    per_run = bootstrap_interval(runs, resamples=4000, seed=2)
    assert crossed.estimate == pytest.approx(per_run.estimate)
    assert crossed.estimate == pytest.approx(np.mean([task.mean() for task in tasks]))
    assert width(crossed) > 1.3 * width(per_run)
    # keyed by position instead (the wrong pairing: task 1 of one run with task 0 of another),
    # the draws of different tasks' items would be shared; by default positions must line up
    with pytest.raises(ValueError, match="task_keys"):
        bootstrap_interval([runs[0], runs[0][:1]], item_groups=[0, 0])
    with pytest.raises(ValueError, match="same number of items"):
        bootstrap_interval([[tasks[0]], [tasks[0][:10]]], item_groups=[0, 0], task_keys=[[0], [0]])
    with pytest.raises(ValueError, match="each task once"):
        bootstrap_interval([[tasks[0], tasks[0]], [tasks[0]]], item_groups=[0, 0],
                           task_keys=[[0, 0], [0]])


def test_positional_keys_give_the_draws_they_gave_before_task_keys():
    """Passing each run's positions as task_keys is the default: the same numbers, resample for
    resample (the stored pooled intervals depend on it)."""
    rng = np.random.default_rng(4)
    runs = [[rng.random(50) for _ in range(3)] for _ in range(4)]
    groups = [0, 0, 1, 1]
    assert bootstrap_interval(runs, resamples=500, item_groups=groups) == bootstrap_interval(
        runs, resamples=500, item_groups=groups, task_keys=[[0, 1, 2]] * 4)
