"""The classic merge methods as plug-ins: linear, task arithmetic, TIES, DARE, DELLA, breadcrumbs,
MagMax.

Each method is the tensor maths of :mod:`.ops` plus the bookkeeping of per-model options. The
defaults (normalize, rescale, weight 1.0) and the depth ``t`` at which gradients are read are
those of mergekit 0.1.5, so that the same config gives the same tensors in both tools
(docs/methods.md lists every formula and option).

The task-vector methods (all but linear) also take LiNeS' depth ramp (``lines``, see
:mod:`.lines`) in place of their single scale ``lambda``; mergekit has no equivalent.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from recall_merge.errors import ConfigError, ConfigValueError, excerpt
from recall_merge.methods import ops
from recall_merge.methods.base import MergeMethod, StrictParameters, TensorPosition
from recall_merge.methods.lines import LinesParameters, LinesScaling, check_scale_range

if TYPE_CHECKING:
    from recall_merge.config import MergeConfig
    from recall_merge.io.pool import ModelPool

LayerWeight = float | list[float]

MAX_WEIGHT = 1e3  # |weight|, |base_weight| and |lambda|: beyond this a merge is noise or overflow
# |Σ weights| below this share of Σ |weights| counts as zero where a method divides by the sum:
# the merge would then be the difference of near-equal numbers blown up by the division.
_CANCELLATION = 1e-6


def _check_numbers(value: Any, accept: Callable[[float], bool], rule: str, fix: str,
                   where: str = "", depth: int = 0) -> None:
    """Every number in ``value`` (a number, or lists of numbers at any depth: per-model entries
    and per-layer gradients) finite and accepted, each list non-empty; raised before pydantic's
    own validation so that the message names the entry rather than each member of the union.
    What is not a number or a list is left to pydantic's type error."""
    if isinstance(value, list):
        if not value:
            raise ConfigValueError(f"{'entry ' + where if where else 'the list'} is empty", fix)
        if depth < 4:  # deeper is no valid shape: pydantic says so
            for index, item in enumerate(value):
                _check_numbers(item, accept, rule, fix, f"{where}[{index}]", depth + 1)
        return
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return
    try:
        number = float(value)
    except (ValueError, OverflowError):
        if isinstance(value, str):
            return  # not a number: pydantic's type error
        number = math.inf  # an integer too large for a float
    label = f"entry {where}" if where else "the value"
    if not math.isfinite(number):
        raise ConfigValueError(f"{label} is {number}; every number must be finite", fix)
    if not accept(number):
        raise ConfigValueError(f"{label} is {number:g}, outside {rule}", fix)


class ClassicParameters(StrictParameters):
    """Options shared by the classic methods (each method reads the ones it uses; docs/methods.md).

    Per-model options (``weights``, and ``density``/``gamma`` when given as a list) hold one entry
    per model in ``models``; an entry is a number, or a list interpolated over depth (mergekit
    gradient). ``None`` for ``normalize``/``rescale`` means the method's mergekit default.
    """

    weights: list[LayerWeight] | None = Field(
        None,
        description="one entry per model in `models`: a number, or a list interpolated over depth "
        "(mergekit gradient; a list as long as the number of blocks gives one weight per block). "
        "Every number finite with |w| ≤ 1000; where the method divides by the sum (linear with "
        "normalize) the sum may not be 0 at any depth. Default: 1.0 for every model",
    )
    lambda_: float = Field(1.0, alias="lambda", ge=-MAX_WEIGHT, le=MAX_WEIGHT,
                           description="scale of the merged task vector, finite with |lambda| ≤ 1000; "
                           "not allowed with `lines`")
    density: float | list[LayerWeight] = Field(
        1.0, description="fraction of task-vector entries kept, in (0, 1] (one number, or one entry "
        "per model)"
    )
    gamma: float | list[LayerWeight] = Field(
        0.01, description="breadcrumbs: fraction of largest entries dropped, in [0, 1) (one number, "
        "or one per model)"
    )
    normalize: bool | None = Field(
        None, description="divide by the sum of the weights (default: the method's mergekit default); "
        "linear refuses weights whose sum is 0 at some depth"
    )
    rescale: bool | None = Field(
        None, description="rescale kept entries after sparsification (default: on for DARE only)"
    )
    rescale_norm: Literal["l1", "l2", "linf", "density"] = Field(
        "l1", description="l1/l2/linf: match that norm of the task vector (mergekit); density: divide "
        "by density, the DARE paper's 1/(1-p)",
    )
    majority_sign_method: Literal["sum", "count"] = Field(
        "sum", description="TIES sign election: sign of the summed mass (sum) or of the sign count"
    )
    include_base: bool = Field(False, description="linear: the base is averaged in as one more model")
    base_weight: LayerWeight = Field(1.0, description="linear with include_base: the base's weight "
                                     "(a number or a gradient list, finite with |w| ≤ 1000)")
    lines: LinesParameters | None = Field(
        None, description="task-vector methods (not linear): LiNeS depth ramp {alpha, beta}; block l "
        "of L gets alpha + beta*l/(L-1), tensors outside the blocks get alpha (alpha: auto, the "
        "paper's multi-task rule, costs one extra pass). Replaces `lambda`; |alpha|, |beta| ≤ 1000",
    )

    @field_validator("weights", "base_weight", mode="before")
    @classmethod
    def _weights_in_range(cls, value: Any) -> Any:
        if value is not None:
            _check_numbers(value, lambda w: abs(w) <= MAX_WEIGHT, "[-1000, 1000]",
                           "give finite weights between -1000 and 1000 (lists: one entry per model, "
                           "each a number or a non-empty list over depth)")
        return value

    @field_validator("density", mode="before")
    @classmethod
    def _density_in_range(cls, value: Any) -> Any:
        _check_numbers(value, lambda d: 0 < d <= 1, "(0, 1]",
                       "density must lie in (0, 1]: the fraction of task-vector entries kept")
        return value

    @field_validator("gamma", mode="before")
    @classmethod
    def _gamma_in_range(cls, value: Any) -> Any:
        _check_numbers(value, lambda g: 0 <= g < 1, "[0, 1)",
                       "gamma must lie in [0, 1): the fraction of the largest entries dropped")
        return value


Sparsification = Literal["magnitude", "random", "breadcrumbs", "della"]


def dare_seed(seed: int, tensor_name: str) -> int:
    """A 63-bit seed for one tensor's DARE masks, from the run seed and the tensor's name only, so
    that a tensor gets the same mask whatever order (or process) the engine merges it in."""
    digest = hashlib.sha256(f"{seed}\x00{tensor_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _per_model(setting: float | list[LayerWeight], num_models: int) -> list[LayerWeight]:
    """One number shared by all models → one entry per model; a list is already per model."""
    if isinstance(setting, list):
        return list(setting)
    return [setting] * num_models


class _ClassicMethod(MergeMethod):
    """Shared bookkeeping: per-model settings, gradients over depth, and the report."""

    parameters_model: ClassVar[type[ClassicParameters]] = ClassicParameters
    default_normalize: ClassVar[bool] = False
    default_rescale: ClassVar[bool] = False
    uses_density: ClassVar[bool] = False
    uses_gamma: ClassVar[bool] = False

    def __init__(self, parameters: ClassicParameters, config: MergeConfig, num_layers: int) -> None:
        super().__init__(parameters, config, num_layers)
        self.parameters: ClassicParameters = parameters
        n = self.num_experts
        self.weights: list[LayerWeight] = (
            list(parameters.weights) if parameters.weights is not None else [1.0] * n
        )
        self.densities = _per_model(parameters.density, n)
        self.gammas = _per_model(parameters.gamma, n)
        for key, values in (("weights", self.weights), ("density", self.densities), ("gamma", self.gammas)):
            if len(values) != n:
                raise ConfigError(
                    f"parameters.{key} has {len(values)} entries but there are {n} models",
                    "give one entry per model in `models` (in order), or one number for all",
                )
        self.normalize = parameters.normalize if parameters.normalize is not None else self.default_normalize
        self.rescale = parameters.rescale if parameters.rescale is not None else self.default_rescale
        if parameters.lines is not None and not isinstance(self, LinesScaling):
            # The schema is shared by all classic methods, so the refusal is here, not in it.
            raise ConfigError(
                f"parameters.lines is set, but {self.name} is not a task-vector method: LiNeS scales "
                "the merged task vector θ − θ_base, which a weighted average of the models has not",
                "remove parameters.lines, or use a task-vector method (task_arithmetic, ties, "
                "dare_linear, dare_ties, breadcrumbs, breadcrumbs_ties, magmax)",
            )
        self.tensors_merged = 0
        self._check_settings()

    def _check_settings(self) -> None:
        """Refuse, before any weight is read, settings that fail at some depth (the number of
        blocks is known only now). Most methods need nothing beyond the schema."""

    def depths(self) -> list[tuple[str, float]]:
        """Every depth t at which the merge reads the per-model settings, with what is read there."""
        return [("the tensors outside the blocks", 0.0)] + [
            (f"block {layer}", ops.mergekit_t("block", layer, self.num_layers))
            for layer in range(self.num_layers)]

    def depth_t(self, position: TensorPosition) -> float:
        # mergekit's t, not position.depth: mergekit reads gradients at t = 0 for the head and the
        # final norm too, and matching it is what makes a shared config give the same model.
        return ops.mergekit_t(position.kind, position.layer, self.num_layers)

    def weights_at(self, t: float) -> list[float]:
        return [ops.interpolate_gradient(w, t) for w in self.weights]

    def merge_tensor(
        self, name: str, position: TensorPosition, base: torch.Tensor, experts: list[torch.Tensor]
    ) -> torch.Tensor:
        self.tensors_merged += 1
        return self._merge(name, self.depth_t(position), base, experts)

    def _merge(self, name: str, t: float, base: torch.Tensor, experts: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _options(self) -> dict[str, Any]:
        return {"normalize": self.normalize}

    def _settings_at(self, t: float) -> dict[str, list[float]]:
        settings = {"weights": self.weights_at(t)}
        if self.uses_density:
            settings["density"] = [ops.interpolate_gradient(d, t) for d in self.densities]
        if self.uses_gamma:
            settings["gamma"] = [ops.interpolate_gradient(g, t) for g in self.gammas]
        return settings

    def report(self) -> dict[str, Any]:
        """Method, resolved options, and the per-model settings applied to every block and to the
        tensors outside the blocks (read at t = 0, as mergekit does)."""
        layers = []
        for layer in range(self.num_layers):
            t = ops.mergekit_t("block", layer, self.num_layers)
            layers.append({"layer": layer, "t": t, **self._settings_at(t)})
        # No "models"/"parameters" keys: the engine's report has those and merges this dict in.
        return {
            "method": self.name,
            "applied": {**self._options(), "parameters": self.parameters.model_dump(by_alias=True)},
            "layers": layers,
            "outside_blocks": {"t": 0.0, **self._settings_at(0.0)},
            "tensors_merged": self.tensors_merged,
        }


class Linear(_ClassicMethod):
    """θ = Σ_k w_k θ_k / Σ_k w_k (the base joins as one more model with ``include_base``)."""

    name = "linear"
    summary = "weighted average of the models' weights (mergekit linear)"
    elementwise = True
    default_normalize = True

    def _check_settings(self) -> None:
        # weighted_average divides by Σ w (no guard, unlike task arithmetic's |Σ| < 1e-8 → 1): a
        # zero sum is a NaN model, a near-zero one amplified noise, found only after the merge.
        if not self.normalize:
            return
        for where, t in self.depths():
            weights = self._linear_weights_at(t)
            total, magnitude = sum(weights), sum(abs(w) for w in weights)
            if abs(total) <= _CANCELLATION * magnitude:
                shown = ", ".join(f"{w:g}" for w in weights[:8]) + (", ..." if len(weights) > 8 else "")
                raise ConfigError(
                    f"parameters.weights{' and base_weight' if self.parameters.include_base else ''} "
                    f"sum to {total:.3g} at {where} (t = {t:.3g}: {shown}); "
                    "linear divides by this sum (normalize), which would give NaN or amplified noise",
                    "give weights whose sum is clearly non-zero at every depth, or set "
                    "parameters.normalize: false to use the weighted sum as is")

    def _linear_weights_at(self, t: float) -> list[float]:
        weights = self.weights_at(t)
        if self.parameters.include_base:
            weights = [ops.interpolate_gradient(self.parameters.base_weight, t), *weights]
        return weights

    def _merge(self, name: str, t: float, base: torch.Tensor, experts: list[torch.Tensor]) -> torch.Tensor:
        tensors, weights = list(experts), self.weights_at(t)
        if self.parameters.include_base:
            tensors = [base, *tensors]
            weights = [ops.interpolate_gradient(self.parameters.base_weight, t), *weights]
        return ops.weighted_average(tensors, weights, normalize=self.normalize)

    def _settings_at(self, t: float) -> dict[str, Any]:
        settings: dict[str, Any] = super()._settings_at(t)
        if self.parameters.include_base:
            settings["base_weight"] = ops.interpolate_gradient(self.parameters.base_weight, t)
        return settings

    def _options(self) -> dict[str, Any]:
        return {"normalize": self.normalize, "include_base": self.parameters.include_base,
                "base_weight": self.parameters.base_weight}


class _TaskVectorMethod(LinesScaling, _ClassicMethod):
    """A method of the form θ = θ_base + λ · Δ(τ_1..τ_N): λ is ``lambda``, or LiNeS' λ per block.

    The scale depends only on the tensor's position, so an elementwise method stays elementwise
    (the engine may hand it any row block of a tensor)."""

    def __init__(self, parameters: ClassicParameters, config: MergeConfig, num_layers: int) -> None:
        super().__init__(parameters, config, num_layers)
        self.lines = parameters.lines
        if self.lines is None:
            return
        if "lambda_" in parameters.model_fields_set:
            raise ConfigError(
                "parameters.lambda and parameters.lines are both set; LiNeS replaces the single "
                "scale lambda with one scale per block",
                "remove parameters.lambda and give the scale as parameters.lines.alpha (the "
                "shallowest block) and parameters.lines.beta (added across depth)",
            )
        check_scale_range(self.lines, MAX_WEIGHT)

    def plan(self, pool: ModelPool, *, quiet: bool = False) -> None:
        # Only `alpha: auto` reads anything: the merged task vector before scaling, per tensor.
        self.resolve_lines_alpha(
            pool, lambda name, position, base, experts:
            self._merge(name, self.depth_t(position), base, experts, scale=1.0) - base,
            quiet)

    def merge_tensor(
        self, name: str, position: TensorPosition, base: torch.Tensor, experts: list[torch.Tensor]
    ) -> torch.Tensor:
        self.tensors_merged += 1
        scale = self.task_vector_scale(position, self.parameters.lambda_)
        return self._merge(name, self.depth_t(position), base, experts, scale=scale)

    def _merge(self, name: str, t: float, base: torch.Tensor, experts: list[torch.Tensor],
               *, scale: float = 1.0) -> torch.Tensor:
        raise NotImplementedError

    def _scale_options(self) -> dict[str, Any]:
        # With LiNeS, lambda is not applied: the report says so rather than show its default.
        return {"lambda": None if self.lines is not None else self.parameters.lambda_,
                "lines": self.lines_report()}


class _TaskArithmeticFamily(_TaskVectorMethod):
    """θ = θ_base + λ · merge_k(w_k · sparsify(θ_k − θ_base)), mergekit's generalized task arithmetic."""

    sparsification: ClassVar[Sparsification | None] = None
    consensus: ClassVar[bool] = False

    def _merge(self, name: str, t: float, base: torch.Tensor, experts: list[torch.Tensor],
               *, scale: float = 1.0) -> torch.Tensor:
        settings = self._settings_at(t)
        deltas = ops.task_vectors(base, experts)
        if self.sparsification is not None:
            deltas = self._sparsify(name, deltas, settings)
        weights = torch.tensor(settings["weights"], dtype=deltas.dtype)
        consensus = self.parameters.majority_sign_method if self.consensus else None
        return ops.combine_task_vectors(
            base, deltas, weights, consensus=consensus, normalize=self.normalize, scale=scale,
        )

    def _sparsify(self, name: str, deltas: torch.Tensor, settings: dict[str, list[float]]) -> torch.Tensor:
        norm = self.parameters.rescale_norm if self.rescale else None
        generator = None
        if self.sparsification in ("random", "della"):
            generator = torch.Generator(device=deltas.device).manual_seed(dare_seed(self.config.seed, name))
        kept = []
        for k, delta in enumerate(deltas):
            density = settings["density"][k]
            if self.sparsification == "magnitude":
                kept.append(ops.magnitude_sparsify(delta, density, norm))
            elif self.sparsification == "breadcrumbs":
                kept.append(ops.breadcrumbs_sparsify(delta, density, settings["gamma"][k], norm))
            elif self.sparsification == "della":
                assert generator is not None
                kept.append(ops.della_sparsify(delta, density, settings["epsilon"][k], generator, norm))
            else:
                assert generator is not None
                kept.append(ops.dare_sparsify(delta, density, generator, norm))
        return torch.stack(kept)

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"normalize": self.normalize, **self._scale_options()}
        if self.sparsification is not None:
            options["sparsification"] = self.sparsification
            options["rescale"] = self.parameters.rescale_norm if self.rescale else None
        if self.consensus:
            options["majority_sign_method"] = self.parameters.majority_sign_method
        if self.sparsification in ("random", "della"):
            options["seed"] = self.config.seed
        return options


class TaskArithmetic(_TaskArithmeticFamily):
    name = "task_arithmetic"
    summary = "base + λ · Σ w_k τ_k, the sum of task vectors (Ilharco et al. 2023)"
    elementwise = True


class Ties(_TaskArithmeticFamily):
    name = "ties"
    summary = "task vectors trimmed to `density`, sign election, disjoint mean (Yadav et al. 2023)"
    sparsification = "magnitude"
    consensus = True
    default_normalize = True
    uses_density = True


class DareLinear(_TaskArithmeticFamily):
    name = "dare_linear"
    summary = "task vectors randomly dropped to `density` and rescaled, then summed (Yu et al. 2024)"
    sparsification = "random"
    default_rescale = True
    uses_density = True


class DareTies(_TaskArithmeticFamily):
    name = "dare_ties"
    summary = "DARE's random drop and rescale, then TIES' sign election"
    sparsification = "random"
    consensus = True
    default_rescale = True
    uses_density = True


class DellaParameters(ClassicParameters):
    """The classic options plus DELLA's ε (mergekit's ``epsilon``)."""

    epsilon: float | list[LayerWeight] = Field(
        0.15, description="DELLA: entries of a task-vector row ranked by magnitude are kept with "
        "probabilities from density − epsilon (smallest) to density + epsilon (largest); one number, "
        "or one entry per model; density ± epsilon must stay inside (0, 1) wherever density < 1. "
        "Default 0.15 (mergekit)",
    )

    @field_validator("epsilon", mode="before")
    @classmethod
    def _epsilon_in_range(cls, value: Any) -> Any:
        _check_numbers(value, lambda e: 0 <= e < 0.5, "[0, 0.5)",
                       "epsilon must lie in [0, 0.5) and leave density ± epsilon inside (0, 1): "
                       "it is the half-width of DELLA's keep probabilities around density")
        return value


class _DellaFamily(_TaskArithmeticFamily):
    """DELLA's MagPrune drop (keep probability rising with the magnitude rank, mean ``density``),
    rescale, then task arithmetic or TIES; one generator per tensor as for DARE. The report adds,
    per block, the share of each model's non-zero task-vector entries that were kept."""

    parameters_model = DellaParameters
    sparsification = "della"
    default_rescale = True
    uses_density = True

    def __init__(self, parameters: DellaParameters, config: MergeConfig, num_layers: int) -> None:
        # Read by _check_settings, which the base __init__ calls last.
        self.epsilons = _per_model(parameters.epsilon, len(config.models))
        self._kept: dict[int | str, list[list[int]]] = {}  # block or "outside" → per model [kept, non-zero]
        self._counting: int | str | None = None
        super().__init__(parameters, config, num_layers)

    def _check_settings(self) -> None:
        if len(self.epsilons) != self.num_experts:
            raise ConfigError(
                f"parameters.epsilon has {len(self.epsilons)} entries but there are {self.num_experts} models",
                "give one entry per model in `models` (in order), or one number for all")
        # mergekit raises this mid-merge; here it is refused before any weight is read.
        for where, t in self.depths():
            settings = self._settings_at(t)
            for k, (density, epsilon) in enumerate(zip(settings["density"], settings["epsilon"], strict=True)):
                if density < 1 and (density - epsilon <= 0 or density + epsilon >= 1):
                    raise ConfigError(
                        f"parameters.density {density:g} and epsilon {epsilon:g} for model {k + 1} "
                        f"({excerpt(self.config.models[k])}) at {where} give keep probabilities from "
                        f"{density - epsilon:g} to {density + epsilon:g}, which must lie inside (0, 1)",
                        f"give an epsilon below min(density, 1 − density) = {min(density, 1 - density):g} "
                        "there, or a density further from 0 and 1")

    def _settings_at(self, t: float) -> dict[str, list[float]]:
        settings = super()._settings_at(t)
        settings["epsilon"] = [ops.interpolate_gradient(e, t) for e in self.epsilons]
        return settings

    def merge_tensor(
        self, name: str, position: TensorPosition, base: torch.Tensor, experts: list[torch.Tensor]
    ) -> torch.Tensor:
        # Only the merge itself is counted, not LiNeS' `alpha: auto` pass over the same tensors.
        inside = position.kind == "block" and position.layer is not None and position.layer < self.num_layers
        self._counting = position.layer if inside else "outside"
        try:
            return super().merge_tensor(name, position, base, experts)
        finally:
            self._counting = None

    def _sparsify(self, name: str, deltas: torch.Tensor, settings: dict[str, list[float]]) -> torch.Tensor:
        kept = super()._sparsify(name, deltas, settings)
        if self._counting is not None:
            counts = self._kept.setdefault(self._counting, [[0, 0] for _ in range(len(deltas))])
            for k in range(len(deltas)):
                counts[k][0] += int(torch.count_nonzero(kept[k]))
                counts[k][1] += int(torch.count_nonzero(deltas[k]))
        return kept

    def _kept_fraction(self, where: int | str) -> list[float | None]:
        counts = self._kept.get(where, [[0, 0]] * self.num_experts)
        return [kept / nonzero if nonzero else None for kept, nonzero in counts]

    def report(self) -> dict[str, Any]:
        report = super().report()
        for layer in report["layers"]:
            layer["kept_fraction"] = self._kept_fraction(layer["layer"])
        report["outside_blocks"]["kept_fraction"] = self._kept_fraction("outside")
        return report


class Della(_DellaFamily):
    name = "della"
    summary = "task vectors dropped with magnitude-ranked probabilities, rescaled, TIES sign election (Deep et al. 2024)"
    consensus = True
    default_normalize = True


class DellaLinear(_DellaFamily):
    name = "della_linear"
    summary = "DELLA's magnitude-ranked random drop and rescale, then the task vectors summed"


class Breadcrumbs(_TaskArithmeticFamily):
    name = "breadcrumbs"
    summary = "task vectors with the largest `gamma` and smallest entries dropped (Davari & Belilovsky 2024)"
    sparsification = "breadcrumbs"
    uses_density = True
    uses_gamma = True


class BreadcrumbsTies(_TaskArithmeticFamily):
    name = "breadcrumbs_ties"
    summary = "breadcrumbs' two-sided trim, then TIES' sign election"
    sparsification = "breadcrumbs"
    consensus = True
    uses_density = True
    uses_gamma = True


class MagMax(_TaskVectorMethod):
    """θ = θ_base + λ · (per entry, the w_k τ_k of largest magnitude). Not in mergekit."""

    name = "magmax"
    summary = "per entry, the task-vector value of largest magnitude (Marczak et al. 2024)"
    elementwise = True

    def _merge(self, name: str, t: float, base: torch.Tensor, experts: list[torch.Tensor],
               *, scale: float = 1.0) -> torch.Tensor:
        deltas = ops.task_vectors(base, experts)
        weights = torch.tensor(self.weights_at(t), dtype=deltas.dtype)
        selected = ops.magmax(deltas * weights.reshape((-1,) + (1,) * (deltas.dim() - 1)))
        return base + scale * selected

    def _options(self) -> dict[str, Any]:
        return self._scale_options()
