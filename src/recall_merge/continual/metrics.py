"""Continual-learning metrics over an accuracy matrix (pure functions, no torch).

Conventions (docs/continual.md, "Metrics"):

* ``R`` has ``T + 1`` rows and ``T`` columns. Row 0 is the untouched base model (the ``b_j`` of
  FWT); row ``i`` (1..T) is the model after training step ``i``; column ``j`` (0-based here,
  task ``j + 1`` in the paper's 1-based notation) is the score on that task's test split.
* AP  = (1/T) Σ_j R[T][j]
* BWT = (1/(T−1)) Σ_{j<T} (R[T][j] − R[j][j])
* FWT = (1/(T−1)) Σ_{j≥2} (R[j−1][j] − b_j)
* forgetting_j = max_{1≤i<T} R[i][j] − R[T][j] for the tasks j < T (Chaudhry et al. 2018: the
  maximum runs over every earlier step, also those before task j was learned).

Normalisation: AP divides by T, BWT and FWT by T − 1; with T = 1 BWT, FWT and forgetting are
undefined (None / empty).

A cell may be None (not scored: ``cells: summary`` scores only the last row, the diagonal and the
cell above it; ``cells: ap_bwt`` the last row and the diagonal). AP, BWT and FWT never read another
cell (FWT is None where a cell it reads is); the maximum of forgetting runs over the scored cells
only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

NORMALISATION = (
    "R rows: 0 = base model, i = after step i (1-based); AP = mean over the T tasks of the last "
    "row; BWT and FWT are divided by T-1; forgetting_j = max over steps 1..T-1 of R[i][j] minus "
    "R[T][j], for tasks 1..T-1; average_forgetting is their mean (divided by T-1)"
)

Matrix = Sequence[Sequence[float | None]]


def _check(matrix: Matrix) -> int:
    """Return T after checking that ``matrix`` is (T + 1) × T."""
    num_tasks = len(matrix) - 1
    if num_tasks < 1:
        raise ValueError("R needs a base row and at least one step row")
    for row in matrix:
        if len(row) != num_tasks:
            raise ValueError(f"R must be (T+1) x T; got a row of {len(row)} for T = {num_tasks}")
    return num_tasks


def average_performance(matrix: Matrix) -> float:
    """AP = (1/T) Σ_j R[T][j]."""
    num_tasks = _check(matrix)
    return sum(matrix[num_tasks]) / num_tasks


def backward_transfer(matrix: Matrix) -> float | None:
    """BWT = (1/(T−1)) Σ_{j<T} (R[T][j] − R[j][j]); None when T = 1."""
    num_tasks = _check(matrix)
    if num_tasks < 2:
        return None
    last = matrix[num_tasks]
    total = sum(last[j] - matrix[j + 1][j] for j in range(num_tasks - 1))
    return total / (num_tasks - 1)


def forward_transfer(matrix: Matrix) -> float | None:
    """FWT = (1/(T−1)) Σ_{j≥2} (R[j−1][j] − b_j) with b_j = R[0][j]; None when T = 1 or when a
    cell it reads was not scored (``cells: ap_bwt``)."""
    num_tasks = _check(matrix)
    if num_tasks < 2 or any(matrix[j][j] is None for j in range(1, num_tasks)):
        return None
    base = matrix[0]
    # 0-based column j (j ≥ 1) is learned at step j + 1, so "just before" is row j.
    total = sum(matrix[j][j] - base[j] for j in range(1, num_tasks))
    return total / (num_tasks - 1)


def forgetting(matrix: Matrix) -> list[float]:
    """forgetting_j = max_{1≤i<T} R[i][j] − R[T][j] for the first T − 1 tasks."""
    num_tasks = _check(matrix)
    last = matrix[num_tasks]
    return [
        max(value for i in range(1, num_tasks) if (value := matrix[i][j]) is not None) - last[j]
        for j in range(num_tasks - 1)
    ]


def summarise(matrix: Matrix) -> dict[str, Any]:
    """Every metric of one strategy, JSON-ready."""
    per_task = forgetting(matrix)
    return {
        "R": [[None if value is None else float(value) for value in row] for row in matrix],
        "AP": average_performance(matrix),
        "BWT": backward_transfer(matrix),
        "FWT": forward_transfer(matrix),
        "forgetting": per_task,
        "average_forgetting": sum(per_task) / len(per_task) if per_task else None,
    }
