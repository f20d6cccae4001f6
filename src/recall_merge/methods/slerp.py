"""Spherical interpolation merges: slerp (two models) and multislerp (any number), as mergekit 0.1.5.

Both need a whole tensor (its norm and direction), so they are not elementwise: the engine hands
them one tensor at a time, base and experts as float32 (a LoRA expert as base + B·A). The maths
follows ``mergekit/merge_methods/slerp.py`` and ``multislerp.py`` step by step, so that the same
config gives the same tensors in both tools (``tests/test_della_slerp.py`` checks ≤ 1e-5).

- **slerp**: θ = sin((1−t)Ω)/sin Ω · θ_base + sin(tΩ)/sin Ω · θ_1 over the whole flattened tensor,
  Ω the angle between them; where |cos Ω| > 0.9995 (near-parallel or antipodal) it falls back to
  the straight line (1−t)·θ_base + t·θ_1. ``t`` may be a gradient over depth.
- **multislerp**: the barycentre of the models' directions on the unit sphere around an origin (the
  base, or 0 with ``include_base``), reached through the tangent space at their weighted mean,
  with the weighted mean norm.

Memory per tensor beyond the inputs: slerp ≈ 3 copies of it; multislerp ≈ 3·N (the stack of the
N inputs, their unit vectors, their tangent vectors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from recall_merge.errors import ConfigError, excerpt
from recall_merge.methods import ops
from recall_merge.methods.base import MergeMethod, StrictParameters, TensorPosition
from recall_merge.methods.classic import _CANCELLATION, MAX_WEIGHT, LayerWeight, _check_numbers

if TYPE_CHECKING:
    from recall_merge.config import MergeConfig

# mergekit's slerp constants (arguments of its function, not options of its config).
SLERP_DOT_THRESHOLD = 0.9995
SLERP_EPS = 1e-8


# ------------------------------------------------------------------------------ tensor functions
@dataclass(frozen=True)
class SlerpResult:
    tensor: torch.Tensor
    cosine: float  # cos Ω between the two tensors (clamped to [-1, 1])
    linear: bool  # |cos Ω| above the threshold: the straight line was used


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = SLERP_DOT_THRESHOLD,
          eps: float = SLERP_EPS) -> SlerpResult:
    """Spherical interpolation from ``v0`` (t = 0) to ``v1`` (t = 1), the whole tensor as one vector.

    As mergekit: norms at or below ``eps`` count as 1 (a zero tensor then has cos Ω = 0), and
    |cos Ω| > ``dot_threshold`` uses (1−t)·v0 + t·v1, which is also what slerp tends to there.
    Computed in float32 (float64 inputs stay float64). (*s), (*s) → (*s).
    """
    dtype = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a, b = v0.reshape(-1).to(dtype), v1.reshape(-1).to(dtype)
    t_tensor = torch.tensor(t, dtype=dtype)  # mergekit's t is a tensor of the working dtype
    if a.numel() == 0:
        return SlerpResult(v0.to(dtype), 1.0, True)
    norm_a = torch.linalg.vector_norm(a)
    norm_b = torch.linalg.vector_norm(b)
    norm_a = torch.where(norm_a > eps, norm_a, 1)
    norm_b = torch.where(norm_b > eps, norm_b, 1)
    # Normalised before multiplying, as mergekit does, so the raw dot product cannot overflow.
    dot = ((a / norm_a) * (b / norm_b)).sum().clamp(-1, 1)
    linear = bool(dot.abs() > dot_threshold)
    if linear:
        coef_a, coef_b = 1 - t_tensor, t_tensor
    else:
        theta = torch.acos(dot)
        sin_theta = torch.sin(theta)
        coef_a = torch.sin((1 - t_tensor) * theta) / sin_theta
        coef_b = torch.sin(t_tensor * theta) / sin_theta
    return SlerpResult((coef_a * a + coef_b * b).reshape(v0.shape), float(dot), linear)


Interpolation = Literal["multislerp", "linear", "single", "origin"]


@dataclass(frozen=True)
class MultislerpResult:
    tensor: torch.Tensor
    # multislerp; linear (two antipodal directions whose weighted mean is 0, mergekit's fallback);
    # single (one model: itself); origin (every model equals the origin)
    interpolation: Interpolation
    tangent_norm: float | None  # the angle walked from the mean direction, in radians


class CancelledDirections(ValueError):
    """The weighted mean of three or more unit directions is zero: multislerp has no direction."""


def multislerp(tensors: list[torch.Tensor], weights: list[float], origin: torch.Tensor | None = None,
               normalize_weights: bool = True, eps: float = 1e-8) -> MultislerpResult:
    """Barycentric interpolation on the hypersphere (mergekit's ``multislerp``), whole tensors.

    Around ``origin`` (0 when None): each input x_k − origin is split into norm n_k and unit u_k;
    m = Σ w_k u_k / ‖Σ w_k u_k‖ (w normalised to sum 1 with ``normalize_weights``); the tangent
    vectors u_k − (u_k·m) m are averaged with w into v; the result is
    origin + (Σ w_k n_k) · (m cos‖v‖ + v sin‖v‖/‖v‖), with ‖v‖ + eps in place of ‖v‖.

    When Σ w_k u_k vanishes, two inputs fall back to origin + w_0 x_0' + w_1 x_1' (mergekit); inputs
    that all equal the origin give the origin (mergekit raises there); otherwise
    :class:`CancelledDirections`. N × (*s) → (*s).
    """
    if len(tensors) == 1:
        return MultislerpResult(tensors[0], "single", None)
    stacked = torch.stack(tensors, dim=0)
    if origin is not None:
        stacked -= origin
    flat = stacked.view(stacked.shape[0], -1)
    w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    unit = flat / (norms + eps)
    mean = (unit * w.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if stacked.shape[0] == 2:
            result = (stacked[0] * w[0] + stacked[1] * w[1]).view(stacked.shape[1:])
            return MultislerpResult(result if origin is None else result + origin, "linear", None)
        if bool((norms < eps).all()):
            zero = torch.zeros_like(stacked[0])
            return MultislerpResult(zero if origin is None else zero + origin, "origin", None)
        raise CancelledDirections("the weighted mean of the models' directions is zero")
    mean = mean / mean_norm
    dots = (unit * mean).sum(-1, keepdim=True)
    tangent = unit - dots * mean
    tangent_result = (tangent * w.view(-1, 1)).sum(0)
    tangent_norm = torch.norm(tangent_result) + eps
    result = mean * torch.cos(tangent_norm) + tangent_result * (torch.sin(tangent_norm) / tangent_norm)
    result = (result * (norms.squeeze(-1) * w).sum()).view(stacked.shape[1:])
    return MultislerpResult(result if origin is None else result + origin, "multislerp",
                            float(tangent_norm))


# ------------------------------------------------------------------------------ parameters
class SlerpParameters(StrictParameters):
    """mergekit's slerp options (its config names them the same)."""

    t: LayerWeight = Field(
        0.5, description="position between the base (t = 0) and the other model (t = 1), in [0, 1]; "
        "a number, or a gradient list over depth (read at block j of L at j/(L−1), tensors outside "
        "the blocks at 0, as mergekit). Default 0.5, the midpoint (mergekit has no default: its "
        "configs must give t, and reading one without t is refused)",
    )

    @field_validator("t", mode="before")
    @classmethod
    def _t_in_range(cls, value: Any) -> Any:
        _check_numbers(value, lambda t: 0 <= t <= 1, "[0, 1]",
                       "give t between 0 (the base) and 1 (the other model), or a list of such "
                       "numbers over depth")
        return value


class MultislerpParameters(StrictParameters):
    """mergekit's multislerp options, plus how the base is used (mergekit: whether `base_model` is set)."""

    weights: list[LayerWeight] | None = Field(
        None, description="one entry per model in `models`: a number, or a gradient list over depth; "
        "finite with |w| ≤ 1000. Default: 1.0 for every model (mergekit requires them)",
    )
    normalize_weights: bool = Field(True, description="divide the weights by their sum (which may "
                                    "then not be 0 at any depth); default true, as mergekit")
    eps: float = Field(1e-8, gt=0, lt=1, description="added to norms so that a zero task vector "
                       "divides safely; in (0, 1), default 1e-8 as mergekit")
    include_base: bool = Field(
        False, description="false: the base is the origin of the sphere and only `models` are "
        "interpolated (mergekit with `base_model`); true: the origin is 0 and the base is "
        "interpolated as one more model with `base_weight` (mergekit without `base_model`)",
    )
    base_weight: LayerWeight = Field(1.0, description="with include_base: the base's weight (a "
                                     "number or a gradient list, finite with |w| ≤ 1000)")

    @field_validator("weights", "base_weight", mode="before")
    @classmethod
    def _weights_in_range(cls, value: Any) -> Any:
        if value is not None:
            _check_numbers(value, lambda w: abs(w) <= MAX_WEIGHT, "[-1000, 1000]",
                           "give finite weights between -1000 and 1000 (one entry per model, each "
                           "a number or a non-empty list over depth)")
        return value


# ------------------------------------------------------------------------------ methods
class _SphericalMethod(MergeMethod):
    """Shared bookkeeping: depth t as mergekit reads it, and a per-tensor record for the report."""

    def __init__(self, parameters: Any, config: MergeConfig, num_layers: int) -> None:
        super().__init__(parameters, config, num_layers)
        self.chosen: dict[str, dict[str, Any]] = {}
        self.positions: dict[str, TensorPosition] = {}

    def depth_t(self, position: TensorPosition) -> float:
        # mergekit's t: block j of L at j/(L−1), every tensor outside the blocks at 0.
        return ops.mergekit_t(position.kind, position.layer, self.num_layers)

    def depths(self) -> list[tuple[str, float]]:
        return [("the tensors outside the blocks", 0.0)] + [
            (f"block {layer}", ops.mergekit_t("block", layer, self.num_layers))
            for layer in range(self.num_layers)]

    def settings_at(self, t: float) -> dict[str, Any]:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {}

    def remember(self, name: str, position: TensorPosition, record: dict[str, Any]) -> None:
        self.chosen[name] = record
        self.positions[name] = position

    def report(self) -> dict[str, Any]:
        """Per block the settings read there and every tensor's record; the same for the tensors
        outside the blocks (read at t = 0), and how many tensors took each path."""
        layers: list[dict[str, Any]] = []
        for layer in range(self.num_layers):
            t = ops.mergekit_t("block", layer, self.num_layers)
            layers.append({"layer": layer, "t": t, **self.settings_at(t), "tensors": {}})
        outside: dict[str, Any] = {"t": 0.0, **self.settings_at(0.0), "tensors": {}}
        paths: dict[str, int] = {}
        for name, record in self.chosen.items():
            position = self.positions[name]
            inside = position.kind == "block" and position.layer is not None and position.layer < self.num_layers
            (layers[position.layer] if inside else outside)["tensors"][name] = record
            paths[record["interpolation"]] = paths.get(record["interpolation"], 0) + 1
        return {
            "method": self.name,
            "applied": {**self.options(), "parameters": self.parameters.model_dump(by_alias=True)},
            "layers": layers,
            "outside_blocks": outside,
            "interpolations": dict(sorted(paths.items())),
            "tensors_merged": len(self.chosen),
        }


class Slerp(_SphericalMethod):
    """θ = slerp(θ_base, θ_1; t) per tensor (mergekit's ``slerp``)."""

    name = "slerp"
    summary = "spherical interpolation between the base (t = 0) and one model (t = 1), per tensor (mergekit slerp)"
    parameters_model: ClassVar[type[SlerpParameters]] = SlerpParameters
    # Exactly one expert besides the base (mergekit's slerp takes two inputs); a caller that
    # merges whatever experts it has (continual `merge:all`) can read this to skip slerp.
    max_experts: ClassVar[int] = 1

    def __init__(self, parameters: SlerpParameters, config: MergeConfig, num_layers: int) -> None:
        super().__init__(parameters, config, num_layers)
        self.parameters: SlerpParameters = parameters
        if self.num_experts != self.max_experts:
            raise ConfigError(
                f"slerp interpolates the base and exactly one model, but `models` lists {self.num_experts}",
                "list one model under `models` (t = 0 is the base, t = 1 that model), or use "
                "multislerp to interpolate more models")

    def settings_at(self, t: float) -> dict[str, Any]:
        return {"slerp_t": ops.interpolate_gradient(self.parameters.t, t)}

    def options(self) -> dict[str, Any]:
        return {"t": self.parameters.t, "dot_threshold": SLERP_DOT_THRESHOLD, "eps": SLERP_EPS}

    def merge_tensor(
        self, name: str, position: TensorPosition, base: torch.Tensor, experts: list[torch.Tensor]
    ) -> torch.Tensor:
        t = ops.interpolate_gradient(self.parameters.t, self.depth_t(position))
        result = slerp(t, base, experts[0])
        self.remember(name, position, {"t": t, "cosine": result.cosine,
                                       "interpolation": "lerp" if result.linear else "slerp"})
        return result.tensor


class Multislerp(_SphericalMethod):
    """θ = multislerp(θ_1..θ_N; w) around θ_base (mergekit's ``multislerp``)."""

    name = "multislerp"
    summary = "barycentric spherical interpolation of any number of models around the base (mergekit multislerp)"
    parameters_model: ClassVar[type[MultislerpParameters]] = MultislerpParameters

    def __init__(self, parameters: MultislerpParameters, config: MergeConfig, num_layers: int) -> None:
        super().__init__(parameters, config, num_layers)
        self.parameters: MultislerpParameters = parameters
        n = self.num_experts
        self.weights: list[LayerWeight] = list(parameters.weights) if parameters.weights is not None else [1.0] * n
        if len(self.weights) != n:
            raise ConfigError(f"parameters.weights has {len(self.weights)} entries but there are {n} models",
                              "give one entry per model in `models` (in order), or leave weights out")
        if parameters.normalize_weights:
            self._check_weight_sums()

    def _check_weight_sums(self) -> None:
        # The weights are divided by their sum: a zero sum is a NaN model, a near-zero one noise.
        for where, t in self.depths():
            weights = self.weights_at(t)
            total, magnitude = sum(weights), sum(abs(w) for w in weights)
            if len(weights) > 1 and abs(total) <= _CANCELLATION * magnitude:
                shown = ", ".join(f"{w:g}" for w in weights[:8]) + (", ..." if len(weights) > 8 else "")
                raise ConfigError(
                    f"parameters.weights{' and base_weight' if self.parameters.include_base else ''} "
                    f"sum to {total:.3g} at {where} (t = {t:.3g}: {shown}); multislerp divides by "
                    "this sum (normalize_weights), which would give NaN or amplified noise",
                    "give weights whose sum is clearly non-zero at every depth, or set "
                    "parameters.normalize_weights: false")

    def weights_at(self, t: float) -> list[float]:
        """The weights of the interpolated models at depth t: the base's first with include_base."""
        weights = [ops.interpolate_gradient(w, t) for w in self.weights]
        if self.parameters.include_base:
            weights = [ops.interpolate_gradient(self.parameters.base_weight, t), *weights]
        return weights

    def settings_at(self, t: float) -> dict[str, Any]:
        return {"weights": self.weights_at(t)}

    def options(self) -> dict[str, Any]:
        parameters = self.parameters
        return {"normalize_weights": parameters.normalize_weights, "eps": parameters.eps,
                "include_base": parameters.include_base,
                "origin": "zero" if parameters.include_base else "base"}

    def merge_tensor(
        self, name: str, position: TensorPosition, base: torch.Tensor, experts: list[torch.Tensor]
    ) -> torch.Tensor:
        parameters = self.parameters
        include_base = parameters.include_base
        tensors = [base, *experts] if include_base else list(experts)
        try:
            result = multislerp(tensors, self.weights_at(self.depth_t(position)),
                                None if include_base else base, parameters.normalize_weights, parameters.eps)
        except CancelledDirections:
            raise ConfigError(
                f"multislerp has no direction for tensor {excerpt(name)}: the weighted mean of the "
                f"{len(tensors)} models' unit directions is zero (opposite directions whose weights "
                "balance out); nothing was written",
                "change the weights so that they do not balance opposite models, or merge these "
                "models with another method (linear, task_arithmetic)") from None
        self.remember(name, position, {"interpolation": result.interpolation,
                                       "tangent_norm": result.tangent_norm})
        return result.tensor
