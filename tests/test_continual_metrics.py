"""Continual-learning metrics against matrices computed by hand, and the generation metrics."""

from __future__ import annotations

import pytest

from recall_merge.continual import metrics
from recall_merge.continual.scoring import (
    corpus_bleu,
    exact_match,
    generation_scores,
    normalize_answer,
    rouge_l,
    token_f1,
)

# Row 0: base; rows 1..3: after steps 1..3. Columns: tasks 1..3.
R3 = [
    [0.10, 0.20, 0.30],
    [0.80, 0.25, 0.35],
    [0.60, 0.90, 0.40],
    [0.50, 0.70, 0.95],
]


def test_average_performance_is_the_mean_of_the_last_row():
    assert metrics.average_performance(R3) == pytest.approx((0.50 + 0.70 + 0.95) / 3)


def test_backward_transfer_by_hand():
    # (R[3][1] - R[1][1]) + (R[3][2] - R[2][2]) = (0.5 - 0.8) + (0.7 - 0.9) = -0.5, over T-1 = 2
    assert metrics.backward_transfer(R3) == pytest.approx(-0.25)


def test_forward_transfer_by_hand():
    # (R[1][2] - b_2) + (R[2][3] - b_3) = (0.25 - 0.20) + (0.40 - 0.30) = 0.15, over T-1 = 2
    assert metrics.forward_transfer(R3) == pytest.approx(0.075)


def test_forgetting_by_hand():
    # task 1: max(0.8, 0.6) - 0.5 = 0.3; task 2: max(0.25, 0.9) - 0.7 = 0.2
    assert metrics.forgetting(R3) == pytest.approx([0.3, 0.2])


def test_forgetting_maximum_includes_steps_before_the_task_was_learned():
    matrix = [[0.0, 0.0, 0.0], [0.1, 0.9, 0.0], [0.1, 0.5, 0.0], [0.1, 0.4, 0.8]]
    assert metrics.forgetting(matrix) == pytest.approx([0.0, 0.5])


def test_summary_of_a_two_task_run():
    matrix = [[0.5, 0.5], [1.0, 0.6], [0.75, 1.0]]
    summary = metrics.summarise(matrix)
    assert summary["R"] == matrix
    assert summary["AP"] == pytest.approx(0.875)
    assert summary["BWT"] == pytest.approx(-0.25)
    assert summary["FWT"] == pytest.approx(0.1)
    assert summary["forgetting"] == pytest.approx([0.25])
    assert summary["average_forgetting"] == pytest.approx(0.25)


def test_ap_bwt_cells_leave_fwt_undefined_and_keep_the_rest():
    # cells: ap_bwt scores the diagonal and the last row of R3 only
    lean = [R3[0], [0.80, None, None], [None, 0.90, None], R3[3]]
    summary = metrics.summarise(lean)
    assert summary["FWT"] is None
    assert summary["AP"] == pytest.approx(metrics.average_performance(R3))
    assert summary["BWT"] == pytest.approx(metrics.backward_transfer(R3))
    assert summary["forgetting"] == pytest.approx([0.3, 0.2])  # the maxima sit on the diagonal


def test_no_transfer_is_defined_for_a_single_task():
    summary = metrics.summarise([[0.2], [0.9]])
    assert summary["AP"] == pytest.approx(0.9)
    assert summary["BWT"] is None and summary["FWT"] is None
    assert summary["forgetting"] == [] and summary["average_forgetting"] is None


def test_a_perfect_learner_that_never_forgets():
    matrix = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    assert metrics.average_performance(matrix) == 1.0
    assert metrics.backward_transfer(matrix) == 0.0
    assert metrics.forward_transfer(matrix) == 0.0
    assert metrics.forgetting(matrix) == [0.0, 0.0]


@pytest.mark.parametrize("bad", [[[0.1]], [[0.1, 0.2], [0.3]], []])
def test_a_matrix_of_the_wrong_shape_is_refused(bad):
    with pytest.raises(ValueError):
        metrics.average_performance(bad)


def test_squad_normalisation_exact_match_and_f1():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("the cat sat.", "Cat sat") == 1.0
    assert exact_match("a dog", "cat") == 0.0
    # prediction "cat sat down" vs gold "the cat sat": common 2, P = 2/3, R = 2/2 -> F1 = 0.8
    assert token_f1("cat sat down", "the cat sat") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_rouge_l_by_hand():
    # LCS("a b c d", "a c d e") = "a c d" = 3; P = 3/4, R = 3/4 -> F = 0.75
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert rouge_l("x y", "a b") == 0.0


def test_generation_scores_take_the_best_reference():
    scores = generation_scores(["paris", "rome"], [("Paris", "the city of paris"), ("london",)],
                               with_bleu=False)
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.5)
    assert "bleu" not in scores


def test_bleu_is_scaled_to_one():
    pytest.importorskip("sacrebleu")
    text = "the quick brown fox jumps over the lazy dog"
    assert corpus_bleu([text], [(text,)]) == pytest.approx(1.0)
    assert corpus_bleu(["nothing matches here at all"], [(text,)]) < 0.1
