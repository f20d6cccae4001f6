"""The SVD merges as plug-ins: TSV-M, Iso-C and Iso-CTS, each with an optional LiNeS depth ramp.

The maths is in :mod:`.svd_ops` (one matrix at a time, as FusionBench 0.2.33 does it); this module
holds the bookkeeping: which tensors get an SVD, the per-model weights, the scale (one α, or
LiNeS' λ per block), and what was chosen per tensor for the report (docs/methods.md).

Which tensors: every 2-D tensor whose name matches none of the ``exclude`` patterns gets the SVD
merge, embeddings and the head included (FusionBench does the same); every other tensor (norms,
biases, excluded names) gets the mean of the task vectors, θ = θ_base + λ·(1/T) Σ_k τ_k, again as
FusionBench does. The merged task vector of each tensor is then scaled by α (or LiNeS' λ).

Streaming: the engine hands a method one whole tensor (``elementwise = False``) with the base and
the T experts already in memory as float32 (a LoRA expert is base + B·A, rebuilt by the engine).
The task vectors are formed one at a time (:class:`~.svd_ops.LazyTaskVectors`), so the working
memory beyond those T + 1 inputs does not grow with T. Measured peak per m × n matrix (RSS high-water
mark with glibc's mmap threshold fixed, 576 × 1536, T = 3 and T = 8, one thread): TSV-M ≈ 7·m·n
floats, Iso-C ≈ 5·m·n, Iso-CTS ≈ 7·m·n; task arithmetic, which stacks the T task vectors, takes
≈ (2T + 2)·m·n on the same matrix.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from recall_merge.errors import ConfigError
from recall_merge.methods import svd_ops
from recall_merge.methods.base import MergeMethod, StrictParameters, TensorPosition
from recall_merge.methods.lines import LinesParameters, LinesScaling

if TYPE_CHECKING:
    from recall_merge.config import MergeConfig
    from recall_merge.io.pool import ModelPool


class SvdParameters(StrictParameters):
    """Options shared by the SVD merges (docs/methods.md)."""

    alpha: float = Field(
        1.0, description="scale of the merged task vector (FusionBench's `alpha` for TSV-M, "
        "`scaling_factor` for Iso-C/Iso-CTS; default 1.0 as there). Not allowed with `lines`",
    )
    exclude: list[str] = Field(
        default_factory=list, description="tensor names (fnmatch patterns) merged as the mean of "
        "the task vectors instead of by SVD (FusionBench's `exclude_keys`)",
    )
    lines: LinesParameters | None = Field(
        None, description="LiNeS depth ramp: {alpha, beta}; block l of L gets alpha + beta*l/(L-1), "
        "tensors outside the blocks get alpha. Replaces `alpha`",
    )


class TsvParameters(SvdParameters):
    weights: list[float] | None = Field(
        None, description="one number per model in `models`, multiplying its task vector before the "
        "SVD (FusionBench's list form of `alpha`). Default: 1.0 for every model",
    )


class IsoParameters(SvdParameters):
    spectrum: Literal["numerical_rank", "full"] = Field(
        "numerical_rank", description="which directions of the summed task vector share the flat "
        "spectrum: those above rounding noise (default), or all r = min(m, n) of them as "
        "FusionBench does. The two agree on full-rank sums (full fine-tuning); on a sum of LoRA "
        "updates `full` gives s̄ to directions that are rounding noise (docs/methods.md)",
    )


class IsoCtsParameters(IsoParameters):
    common_space_fraction: float = Field(
        0.8, description="fraction of the rank r = min(m, n) given to the common subspace of the "
        "summed task vectors; the rest is split evenly among the tasks (default 0.8, as the paper)",
    )

    @field_validator("common_space_fraction")
    @classmethod
    def _fraction_in_range(cls, value: float) -> float:
        if not 0 <= value <= 1:
            raise ValueError("common_space_fraction must lie in [0, 1]")
        return value


class _SvdMethod(LinesScaling, MergeMethod):
    """Shared bookkeeping: weights, exclusions, the scale per tensor, and the per-tensor record."""

    parameters_model: ClassVar[type[SvdParameters]] = SvdParameters

    def __init__(self, parameters: SvdParameters, config: MergeConfig, num_layers: int) -> None:
        super().__init__(parameters, config, num_layers)
        self.parameters: SvdParameters = parameters
        self.lines = parameters.lines
        if self.lines is not None and "alpha" in parameters.model_fields_set:
            raise ConfigError(
                "parameters.alpha and parameters.lines are both set; LiNeS replaces the single "
                "scale alpha with one scale per block",
                "remove parameters.alpha and give the scale as parameters.lines.alpha (the "
                "shallowest block) and parameters.lines.beta (added across depth)",
            )
        self.weights: list[float] | None = getattr(parameters, "weights", None)
        if self.weights is not None and len(self.weights) != self.num_experts:
            raise ConfigError(
                f"parameters.weights has {len(self.weights)} entries but there are "
                f"{self.num_experts} models",
                "give one number per model in `models` (in order), or leave weights out",
            )
        self.chosen: dict[str, dict[str, Any]] = {}
        self.positions: dict[str, TensorPosition] = {}

    def plan(self, pool: ModelPool, *, quiet: bool = False) -> None:
        self.resolve_lines_alpha(pool, self.merged_delta, quiet)

    # -- per tensor ---------------------------------------------------------------------------

    def is_svd_tensor(self, name: str, tensor: torch.Tensor) -> bool:
        return tensor.dim() == 2 and not any(
            fnmatch.fnmatchcase(name, pattern) for pattern in self.parameters.exclude)

    def task_vectors(self, base: torch.Tensor, experts: list[torch.Tensor]) -> svd_ops.LazyTaskVectors:
        return svd_ops.LazyTaskVectors(base, experts, self.weights)

    def merged_delta(self, name: str, position: TensorPosition, base: torch.Tensor,
                     experts: list[torch.Tensor], record: dict[str, Any] | None = None) -> torch.Tensor:
        """The method's merged task vector of one tensor, before any scaling; what was chosen
        goes into ``record`` when one is given."""
        deltas = self.task_vectors(base, experts)
        if self.is_svd_tensor(name, base):
            return self.merge_matrix(deltas, base.shape, record if record is not None else {})
        if record is not None:
            record["merged_as"] = "mean"
        return svd_ops.mean_task_vector(deltas)

    def merge_matrix(self, deltas: svd_ops.LazyTaskVectors, shape: torch.Size,
                     record: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def merge_tensor(
        self, name: str, position: TensorPosition, base: torch.Tensor, experts: list[torch.Tensor]
    ) -> torch.Tensor:
        record: dict[str, Any] = {"shape": list(base.shape)}
        delta = self.merged_delta(name, position, base, experts, record)
        scale = self.task_vector_scale(position, self.parameters.alpha)
        record["scale"] = scale
        self.chosen[name] = record
        self.positions[name] = position
        return delta.mul_(scale).add_(base)

    # -- report -------------------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        return {"alpha": None if self.lines is not None else self.parameters.alpha,
                "exclude": list(self.parameters.exclude)}

    def report(self) -> dict[str, Any]:
        """Per block, every tensor's record (SVD or mean, kept ranks or s̄, the scale applied), and
        the same for the tensors outside the blocks."""
        layers: list[dict[str, Any]] = [{"layer": layer, "tensors": {}} for layer in range(self.num_layers)]
        outside: dict[str, Any] = {}
        for name, record in self.chosen.items():
            position = self.positions[name]
            if position.kind == "block" and position.layer is not None and position.layer < self.num_layers:
                layers[position.layer]["tensors"][name] = record
            else:
                outside[name] = record
        return {
            "method": self.name,
            "applied": {**self._options(), "lines": self.lines_report(),
                        "parameters": self.parameters.model_dump(by_alias=True)},
            "layers": layers,
            "outside_blocks": {"tensors": outside},
            "tensors_merged": len(self.chosen),
        }


class TsvMerge(_SvdMethod):
    """TSV-M (Gargiulo et al., CVPR 2025): each task keeps its top ⌊r/T⌋ singular components;
    the kept vectors of all tasks are whitened together; θ = θ_base + α·U_⊥ Σ V_⊥ᵀ.

    Per matrix: T + 2 thin SVDs (one per task, then the two polar factors); peak ≈ 7·m·n floats
    beyond the inputs, whatever T."""

    name = "tsv_m"
    summary = "per matrix, each task's top 1/T singular vectors, whitened together (Gargiulo et al. 2025)"
    parameters_model = TsvParameters

    def merge_matrix(self, deltas: svd_ops.LazyTaskVectors, shape: torch.Size,
                     record: dict[str, Any]) -> torch.Tensor:
        rank = min(shape)
        keep = svd_ops.tsv_kept_rank(rank, len(deltas))
        if keep == 0:
            # Fewer directions than tasks: FusionBench keeps none and drops every update to this
            # matrix; the mean of the task vectors keeps them (as for a 1-D tensor).
            record.update(merged_as="mean", rank=rank, kept_per_task=0,
                          note="rank below the number of tasks")
            return svd_ops.mean_task_vector(deltas)
        record.update(merged_as="tsv_m", rank=rank, kept_per_task=keep, kept_total=keep * len(deltas))
        return svd_ops.tsv_merge(deltas, keep)

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "weights": self.weights}


class IsoC(_SvdMethod):
    """Iso-C (Marczak et al., ICML 2025): the summed task vector with its spectrum flattened to its
    mean singular value, θ = θ_base + α·s̄ U Vᵀ.

    Per matrix: one thin SVD of Σ_k τ_k; peak ≈ 5·m·n floats beyond the inputs, whatever T."""

    name = "iso_c"
    summary = "per matrix, the summed task vector with a flat spectrum s̄·U Vᵀ (Marczak et al. 2025)"

    parameters_model = IsoParameters

    def merge_matrix(self, deltas: svd_ops.LazyTaskVectors, shape: torch.Size,
                     record: dict[str, Any]) -> torch.Tensor:
        parameters = self.parameters
        assert isinstance(parameters, IsoParameters)
        full = parameters.spectrum == "full"
        merged = svd_ops.isotropic_merge(svd_ops.sum_task_vectors(deltas), full_spectrum=full)
        record.update(merged_as="iso_c", rank=min(shape), spectrum=parameters.spectrum,
                      mean_singular_value=merged.mean_singular_value)
        return merged.delta

    def _options(self) -> dict[str, Any]:
        parameters = self.parameters
        assert isinstance(parameters, IsoParameters)
        return {**super()._options(), "spectrum": parameters.spectrum}


class IsoCts(_SvdMethod):
    """Iso-CTS (Marczak et al., ICML 2025): Iso-C's common subspace (a fraction of the rank) plus
    each task's own top directions outside it, whitened together, with a flat spectrum.

    Per matrix: T + 3 thin SVDs (the sum, each task's residual, the two polar factors); peak
    ≈ 7·m·n floats beyond the inputs, whatever T."""

    name = "iso_cts"
    summary = "Iso-C's common subspace plus each task's own directions, flat spectrum (Marczak et al. 2025)"
    parameters_model = IsoCtsParameters

    def merge_matrix(self, deltas: svd_ops.LazyTaskVectors, shape: torch.Size,
                     record: dict[str, Any]) -> torch.Tensor:
        parameters = self.parameters
        assert isinstance(parameters, IsoCtsParameters)
        merged = svd_ops.iso_cts_merge(deltas, parameters.common_space_fraction,
                                       full_spectrum=parameters.spectrum == "full")
        record.update(merged_as="iso_cts", rank=min(shape), spectrum=parameters.spectrum,
                      common=merged.common, per_task=merged.per_task,
                      mean_singular_value=merged.mean_singular_value)
        return merged.delta

    def _options(self) -> dict[str, Any]:
        parameters = self.parameters
        assert isinstance(parameters, IsoCtsParameters)
        return {**super()._options(), "common_space_fraction": parameters.common_space_fraction}
