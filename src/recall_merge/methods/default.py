"""The merge `recall merge` and `recall continual` run when a config names no method.

It is the candidate the continual benchmark's development sequence chose (docs/benchmarks.md,
"The default continual merge, chosen on the development sequence"): every candidate data-free
merge was tuned there with the same budget, run on three task orders with 300 test items per task,
and ranked by average accuracy (AP). Task arithmetic at λ 0.25 led (0.882); eighteen candidates,
RECALL's paper form among them, tied with it (a paired 95 % interval of the AP difference holding
zero, or Holm's p ≥ 0.05), and none beat it. RECALL's paper form at its tuned τ 20 gave the same
answer on every test item: its per-layer weights are then ≈ 1/(N+1) for each of the N + 1 models,
which is task arithmetic at λ 1/(N+1) = 0.25 for the sequence's three experts. An exact tie goes to
the candidate listed first, task arithmetic.

RECALL stays one line away (`method: recall`); the README says which method to pick when.
"""

from __future__ import annotations

from typing import Any

DEFAULT_METHOD = "task_arithmetic"
DEFAULT_PARAMETERS: dict[str, Any] = {"lambda": 0.25}


def default_parameters() -> dict[str, Any]:
    """A fresh copy: callers may add to it."""
    return dict(DEFAULT_PARAMETERS)
