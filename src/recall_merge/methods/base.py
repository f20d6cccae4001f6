"""The interface every merge method implements, and the registry that names them.

A method has two parts (docs/design.md): an optional *planning pass* that may look at the models
and data once (RECALL reads hidden states here), and a small pure *tensor function* applied by the
streaming engine to one output tensor at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from recall_merge.config import MergeConfig
    from recall_merge.io.pool import ModelPool

# The file a continual method (OPCM) writes beside the merged weights: what its next step needs
# and the weights do not hold. The engine writes it from MergeMethod.state() and never copies one
# from the base folder.
MERGE_STATE_NAME = "merge_state.json"


class StrictParameters(BaseModel):
    """Base of every method's parameter schema: unknown keys are refused (with the closest name),
    and so is NaN or ±inf in any float, at any depth of a list."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


TensorKind = Literal["block", "embedding", "head", "norm", "other"]


@dataclass(frozen=True)
class TensorPosition:
    """Where a tensor sits in the network.

    ``layer`` is the decoder-block index for ``kind == "block"``; ``depth`` is the relative depth in
    [0, 1]: blocks at layer / (num_layers - 1), embeddings at 0, final norm and head at 1. (mergekit
    reads gradients at t = 0 for the head and norm too; the classic methods use
    ``ops.mergekit_t`` to match it exactly.)
    """

    kind: TensorKind
    layer: int | None
    depth: float


class MergeMethod(ABC):
    """Base class of all merge methods; :mod:`.registry` lists them by ``name``."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""  # one line: what `recall methods` prints
    parameters_model: ClassVar[type[BaseModel]]
    needs_samples: ClassVar[bool] = False
    # True when each output entry depends only on the same entry of the inputs: the engine may
    # then merge a large tensor in row blocks, which keeps memory flat as the number of models
    # grows. (TIES and breadcrumbs rank a whole tensor; DARE draws one mask per tensor.)
    elementwise: ClassVar[bool] = False

    def is_elementwise(self) -> bool:
        return self.elementwise

    def __init__(self, parameters: BaseModel, config: MergeConfig, num_layers: int) -> None:
        self.parameters = parameters
        self.config = config
        self.num_experts = len(config.models)
        self.num_layers = num_layers

    def plan(self, pool: ModelPool, *, quiet: bool = False) -> None:  # noqa: B027 - optional hook
        """Look at the models/data once before the streaming merge. Most methods need nothing."""

    @abstractmethod
    def merge_tensor(
        self, name: str, position: TensorPosition, base: torch.Tensor, experts: list[torch.Tensor]
    ) -> torch.Tensor:
        """Merge one tensor. ``base`` and each expert tensor have the same shape, float32."""

    def linear_coefficients(self, position: TensorPosition) -> list[float] | None:
        """(c_0 … c_N), base first, where :meth:`merge_tensor` of every tensor at ``position`` is
        the fixed combination Σ_i c_i θ_i of the models, whatever their values; else None (the
        default). With LoRA experts the engine then merges from their factors
        (``io.lora.low_rank_combination``) instead of rebuilding each expert's tensor."""
        return None

    def report(self) -> dict[str, Any]:
        """What the method applied, for ``recall_report.json``."""
        return {}

    def state(self) -> dict[str, Any] | None:
        """What the method's next continual step reads back (written as ``MERGE_STATE_NAME`` in
        the output folder, after the streaming merge), or None when it needs nothing."""
        return None
