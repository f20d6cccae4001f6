"""What the continual merges OPCM and DOP share: a *chain* over the models, which tensors count as
matrices, and the option that leaves some matrices out.

Both methods are continual: each step merges the running merge with one new expert, and the first
expert alone is the first merge (FusionBench's ``run`` loops: ``merged = load_model(names[0])``,
then one step per further model). Given ``models: [m_1, …, m_N]`` the engine's tensor function
folds the steps over them in order, one tensor at a time. So the same config covers the two
continual protocols of ``recall continual``:

* ``library: previous`` gives ``[previous merge, new expert]``: one step;
* ``library: experts`` gives ``[expert_1, …, expert_t]``: the whole chain again from the first
  expert (the same model, at the cost of recomputing the earlier steps).

A first model that is the base itself means that nothing was merged yet (``guard_newest`` left
the first experts out, so the "previous merge" is the base): it is skipped, and the chain starts
at the next model. Its task vector is zero, and neither method's step is defined on one (an SVD of
a zero matrix has no subspace).

Which tensors are matrices: FusionBench projects or optimises the weights of ``nn.Linear``
modules and nothing else. Here that is every 2-D tensor except the token embeddings (an
``nn.Embedding``: position kind ``embedding``), and except names matching ``exclude``. The head
(``lm_head``, an ``nn.Linear``) is a matrix.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field

from recall_merge.methods.base import MergeMethod, StrictParameters, TensorPosition

if TYPE_CHECKING:
    from recall_merge.config import MergeConfig


class ChainParameters(StrictParameters):
    exclude: list[str] = Field(
        default_factory=list, description="tensor names (fnmatch patterns) merged like the 1-D "
        "tensors instead of as matrices (FusionBench's `exclude_keys`, which takes module names)",
    )


def model_folder(ref: str | Path) -> Path:
    """Where a model ref lives on disk (a packaged name becomes its cached folder)."""
    from recall_merge.io.pool import resolve_ref

    return resolve_ref(ref)


def same_folder(first: str | Path, second: str | Path) -> bool:
    try:
        return model_folder(first).resolve() == model_folder(second).resolve()
    except OSError:  # a symbolic-link loop: not the same folder as anything usable
        return False


class ChainMerge(MergeMethod):
    """Bookkeeping shared by the chain methods: ``self.chain`` holds the positions (in
    ``models`` and in the engine's list of expert tensors) of the models the chain runs over."""

    parameters_model = ChainParameters

    def __init__(self, parameters: ChainParameters, config: MergeConfig, num_layers: int) -> None:
        super().__init__(parameters, config, num_layers)
        self.exclude = list(parameters.exclude)
        self.chain = list(range(len(config.models)))
        self.skipped_base = len(config.models) > 1 and same_folder(config.models[0], config.base)
        if self.skipped_base:
            self.chain = self.chain[1:]
        self.records: dict[str, dict[str, Any]] = {}
        self.positions: dict[str, TensorPosition] = {}

    def is_matrix(self, name: str, position: TensorPosition, tensor: torch.Tensor) -> bool:
        """Projected (OPCM) or optimised (DOP) as a matrix; everything else is combined entrywise."""
        return (tensor.dim() == 2 and position.kind != "embedding"
                and not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.exclude))

    def record(self, name: str, position: TensorPosition, record: dict[str, Any]) -> None:
        self.records[name] = record
        self.positions[name] = position

    def tensor_report(self) -> dict[str, Any]:
        """Every tensor's record, per block and outside the blocks (as the SVD merges report)."""
        layers: list[dict[str, Any]] = [{"layer": layer, "tensors": {}} for layer in range(self.num_layers)]
        outside: dict[str, Any] = {}
        for name, record in self.records.items():
            position = self.positions[name]
            if position.kind == "block" and position.layer is not None and position.layer < self.num_layers:
                layers[position.layer]["tensors"][name] = record
            else:
                outside[name] = record
        return {"layers": layers, "outside_blocks": {"tensors": outside},
                "tensors_merged": len(self.records)}
