"""Typed, validated merge configuration.

Everything here is checked before a single weight is read: unknown keys (with the closest valid
name), wrong types, out-of-range values, and method-specific parameters.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from recall_merge.errors import ConfigError
from recall_merge.io.packaged import is_packaged_name
from recall_merge.methods.base import StrictParameters as _Strict
from recall_merge.methods.registry import parameters_model

ModelRef = str  # a folder path, or a packaged model name such as "smollm2"


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

    def method_parameters(self) -> BaseModel:
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
            from recall_merge.interop.mergekit import from_mergekit

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
