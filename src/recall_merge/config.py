"""Typed, validated merge configuration.

Everything here is checked before a single weight is read: unknown keys (with the closest valid
name), wrong types, out-of-range values, and method-specific parameters.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

ModelRef = str  # a folder path, or a packaged model name such as "smollm2"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RecallParameters(_Strict):
    """Options of RECALL. Defaults marked *choice* in RECALL_METHOD.md are documented in the README."""

    variant: Literal["paper", "task_vector", "ties"] = Field(
        "paper",
        description="paper: θ_j = Σ_k α_j^(k) θ_j^(k) over M_0..M_N. task_vector: α renormalised over "
        "the experts (ᾱ) and applied to task vectors, θ_j = θ_base + λ_j·N·Σ_k ᾱ_j^(k) τ_j^(k). "
        "ties: the same weights N·ᾱ_j inside TIES (trim to `density`, sign election, disjoint mean).",
    )
    num_typical: int = Field(20, ge=1, description="number of clusters m = number of typical samples")
    selection: Literal["kmeans", "random"] = "kmeans"
    cluster_layer: int = Field(-1, description="hidden-state index clustered (-1: last layer)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature τ")
    kernel: Literal["rbf", "cosine", "cka"] = "rbf"
    aggregation: Literal["aligned", "all_pairs"] = "aligned"
    bandwidth: Literal["median", "median_aligned"] | float = Field(
        "median", description="median: median pairwise distance over all pooled states of the layer; "
        "median_aligned: median over same-sample cross-model distances; a number: fixed σ"
    )
    include_base: bool = Field(True, description="the base M_0 takes part in the softmax and the merge")
    per_layer: bool = Field(True, description="False: one global α (mean over layers) for every layer")
    embeddings: Literal["first_layer", "mean"] = "first_layer"
    head: Literal["last_layer", "mean"] = "last_layer"
    scale: float = Field(1.0, gt=0, description="λ of the task_vector and ties variants")
    density: float = Field(0.2, gt=0, le=1, description="ties variant: fraction of task-vector entries kept")
    similarity_space: Literal["states", "shifts"] = Field(
        "states", description="compare hidden states h_k, or their shifts from the base h_k − h_0")
    standardize: bool = Field(False, description="z-score M_N's similarity row per layer before the "
                              "softmax, so τ is scale-free")
    newest_share: float | None = Field(
        None, gt=0, lt=1, description="fixed share of the weight for M_N; the other models split the rest "
        "by softmax of their similarity to M_N (removes M_N's self-similarity bias)")
    strength: Literal["none", "agreement", "redundancy"] = Field(
        "none", description="agreement: per-layer task-vector strength λ_j ∝ mean similarity among the "
        "experts at layer j (mean 1 over layers). redundancy: λ_j = N / Σ_ik C_j[i, k], C_j the cosine "
        "(clipped at 0) between the experts' representation shifts h_k − h_0 at layer j, so N identical "
        "shifts are averaged (λ = 1/N) and orthogonal ones summed (λ = 1); no λ to tune. Both for the "
        "task_vector and ties variants, times `scale`")
    max_length: int = Field(256, ge=8, description="tokens per sample for the representation pass")
    truncation_side: Literal["right", "left"] = Field(
        "right", description="which end of a sample longer than max_length is cut in the "
        "representation pass: right keeps its start (chat frame and instruction), left keeps its end "
        "(the input itself and the generation prompt). Samples that share an instruction longer "
        "than max_length are the same input under right; the report counts the distinct ones")
    batch_size: int = Field(8, ge=1)

    @field_validator("bandwidth")
    @classmethod
    def _positive_bandwidth(cls, value: Any) -> Any:
        if isinstance(value, float) and value <= 0:
            raise ValueError("a fixed bandwidth must be > 0")
        return value


LayerWeight = float | list[float]


class ClassicParameters(_Strict):
    """Options shared by the classic methods (each method reads the ones it uses; docs/methods.md).

    Per-model options (``weights``, and ``density``/``gamma`` when given as a list) hold one entry
    per model in ``models``; an entry is a number, or a list interpolated over depth (mergekit
    gradient). ``None`` for ``normalize``/``rescale`` means the method's mergekit default.
    """

    weights: list[LayerWeight] | None = Field(
        None,
        description="one entry per model in `models`: a number, or a list interpolated over depth "
        "(mergekit gradient; a list as long as the number of blocks gives one weight per block). "
        "Default: 1.0 for every model",
    )
    lambda_: float = Field(1.0, alias="lambda", description="scale of the merged task vector")
    density: float | list[LayerWeight] = Field(
        1.0, description="fraction of task-vector entries kept (one number, or one entry per model)"
    )
    gamma: float | list[LayerWeight] = Field(
        0.01, description="breadcrumbs: fraction of largest entries dropped (one number, or one per model)"
    )
    normalize: bool | None = Field(
        None, description="divide by the sum of the weights (default: the method's mergekit default)"
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
    base_weight: LayerWeight = Field(1.0, description="linear with include_base: the base's weight")

    @field_validator("density")
    @classmethod
    def _density_in_range(cls, value: Any) -> Any:
        for number in _flatten(value):
            if not 0 < number <= 1:
                raise ValueError("density must lie in (0, 1]")
        return value

    @field_validator("gamma")
    @classmethod
    def _gamma_in_range(cls, value: Any) -> Any:
        for number in _flatten(value):
            if not 0 <= number < 1:
                raise ValueError("gamma must lie in [0, 1)")
        return value


def _flatten(value: Any) -> list[float]:
    if isinstance(value, list):
        return [number for entry in value for number in _flatten(entry)]
    return [float(value)]


class MergeConfig(_Strict):
    method: str = "recall"
    base: ModelRef
    models: list[ModelRef] = Field(min_length=1)
    samples: Path | None = None
    output: Path
    seed: int = 0
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    parameters: dict[str, Any] = Field(default_factory=dict)
    shard_size: str = Field("2GB", description="largest output shard, e.g. 500MB or 2GB")
    block_size: str = Field("256MB", description="elementwise methods merge large tensors in row blocks "
                            "whose inputs (all models, float32) stay under this size: memory stays flat "
                            "as the number of models grows")
    allow_pickle: bool = Field(False, description="read .bin/.pt checkpoints (torch.load weights_only=True)")
    trust_remote_code: bool = False
    device: str = "cpu"

    def method_parameters(self) -> RecallParameters | ClassicParameters:
        from .methods import parameters_model

        model = parameters_model(self.method)
        try:
            return model.model_validate(self.parameters)
        except ValidationError as exc:
            raise _explain(exc, model, prefix="parameters.") from None

    def shard_size_bytes(self) -> int:
        return parse_size(self.shard_size)

    def block_size_bytes(self) -> int:
        return parse_size(self.block_size)


def parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    cleaned = text.strip().upper()
    for unit in sorted(units, key=len, reverse=True):
        if cleaned.endswith(unit):
            number = cleaned[: -len(unit)].strip()
            try:
                size = int(float(number) * units[unit])
            except ValueError:
                break
            if size > 0:
                return size
            break
    raise ConfigError(f"shard_size {text!r} is not a size", "write it like 500MB or 2GB")


def _field_names(model: type[BaseModel]) -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        names.append(field.alias or name)
    return names


def _explain(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> ConfigError:
    """Turn pydantic's error list into one ConfigError naming each bad key and its fix."""
    lines: list[str] = []
    fixes: list[str] = []
    for error in exc.errors():
        where = prefix + ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            key = str(error["loc"][-1])
            close = difflib.get_close_matches(key, _field_names(model), n=1, cutoff=0.5)
            lines.append(f"unknown key {where!r}")
            fixes.append(f"did you mean {close[0]!r}?" if close else
                         f"valid keys are: {', '.join(_field_names(model))}")
        elif error["type"] == "missing":
            lines.append(f"missing required key {where!r}")
            fixes.append(f"add {where!r} to the config")
        else:
            lines.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
            fixes.append(f"give {where!r} a valid value")
    return ConfigError("invalid configuration: " + "; ".join(lines), "; ".join(fixes))


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file holding a mapping, or a ConfigError that names the fault (shared by every
    config loader of the package)."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist", "check the path")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}",
                          "fix the YAML syntax (indentation, colons, quotes)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text", "save it as UTF-8") from None
    if raw is None:
        raise ConfigError(f"config file {str(path)!r} is empty", "see examples/ for a complete config")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, not {type(raw).__name__}",
                          "write it as `key: value` lines; see examples/")
    return raw


def load_config(source: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None) -> MergeConfig:
    """Read and validate a merge config from a YAML file or a dict. Relative paths in a file are
    resolved against the file's folder, so a config can travel with its models."""
    base_dir = Path.cwd()
    if isinstance(source, dict):
        raw = dict(source)
    else:
        path = Path(source)
        raw = read_yaml_mapping(path)
        base_dir = path.parent
        if _looks_like_mergekit(raw):
            from .mergekit_interop import from_mergekit

            raw = from_mergekit(raw)
    raw.update(overrides or {})
    try:
        config = MergeConfig.model_validate(raw)
    except ValidationError as exc:
        raise _explain(exc, MergeConfig) from None
    config = _resolve_paths(config, base_dir)
    config.method_parameters()  # validate the method's own parameters now, not mid-merge
    return config


def _looks_like_mergekit(raw: dict[str, Any]) -> bool:
    return "merge_method" in raw


def _resolve_paths(config: MergeConfig, base_dir: Path) -> MergeConfig:
    def resolve(ref: str) -> str:
        from .checkpoints.packaged import is_packaged_name

        if is_packaged_name(ref) or Path(ref).is_absolute():
            return ref
        return str((base_dir / ref).resolve())

    update: dict[str, Any] = {
        "base": resolve(config.base),
        "models": [resolve(m) for m in config.models],
        "output": config.output if config.output.is_absolute() else (base_dir / config.output).resolve(),
    }
    if config.samples is not None and not config.samples.is_absolute():
        update["samples"] = (base_dir / config.samples).resolve()
    return config.model_copy(update=update)
