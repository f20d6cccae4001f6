"""Per-tensor records of a whole-tensor method, grouped by block for ``recall_report.json``.

A method that decides something per tensor (a rank, a number of optimiser steps) records it under
the tensor's name; :func:`records_by_block` puts each record under its decoder block, or under
the tensors outside the blocks (embeddings, final norm, head), the layout of the SVD merges'
report (docs/methods.md).
"""

from __future__ import annotations

from typing import Any

from recall_merge.methods.base import TensorPosition


class TensorRecords:
    """What a method chose for each tensor, and where each tensor sits."""

    def __init__(self) -> None:
        self.chosen: dict[str, dict[str, Any]] = {}
        self.positions: dict[str, TensorPosition] = {}

    def add(self, name: str, position: TensorPosition, record: dict[str, Any]) -> None:
        self.chosen[name] = record
        self.positions[name] = position

    def __len__(self) -> int:
        return len(self.chosen)

    def by_block(self, num_layers: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """([{"layer": j, "tensors": {name: record}} for each block], {name: record} outside)."""
        layers: list[dict[str, Any]] = [{"layer": layer, "tensors": {}} for layer in range(num_layers)]
        outside: dict[str, Any] = {}
        for name, record in self.chosen.items():
            position = self.positions[name]
            if position.kind == "block" and position.layer is not None and position.layer < num_layers:
                layers[position.layer]["tensors"][name] = record
            else:
                outside[name] = record
        return layers, outside
