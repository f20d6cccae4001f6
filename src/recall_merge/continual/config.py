"""Typed configuration of ``recall continual CONFIG.yaml`` (validated before any weight is read)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recall_merge.config import MAX_SEED, check_device, explain, read_yaml_mapping
from recall_merge.errors import ConfigError, ConfigValueError, excerpt
from recall_merge.io import hub
from recall_merge.methods.default import DEFAULT_METHOD, default_parameters

StrategyKind = Literal["sequential", "ewc", "lwf", "replay", "joint", "expert", "merge"]
Library = Literal["experts", "previous"]
FinetuneFrom = Literal["base", "previous"]
Deploy = Literal["merge", "ema"]
# EMA deployment's weight of the newest merge. TIME (Dziadzio et al., CVPR 2025) deploys an EMA of
# the merges but no stored source gave us its coefficient: 0.5 (newest merge and the running
# average weighted alike) is this project's choice
DEFAULT_EMA_BETA = 0.5
TINY_RANDOM = "tiny-random"  # a model ref: a SYNTHETIC 2-block random Llama built in the run folder


class _Strict(BaseModel):
    # no .inf / .nan: an infinite learning rate trains a NaN model, an infinite cap means nothing
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TrainingConfig(_Strict):
    """How each model is fine-tuned. EWC, LwF and replay options are read by those strategies."""

    mode: Literal["lora", "full"] = "lora"
    top_k_blocks: int | None = Field(None, ge=1, description="train only the last k decoder blocks")
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps")
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(2e-4, gt=0, le=1.0, description="AdamW step size: each step "
                                 "moves a weight by about this much, so above 1 nothing is learned")
    weight_decay: float = Field(0.0, ge=0)
    max_length: int = Field(256, ge=8, description="tokens per training example (prompt cut left)")
    ewc_lambda: float = Field(100.0, ge=0, description="EWC: weight of the quadratic penalty")
    ewc_samples: int = Field(64, ge=1, description="EWC: training examples used for the Fisher")
    lwf_alpha: float = Field(1.0, ge=0, description="LwF: weight of the distillation term")
    lwf_temperature: float = Field(2.0, gt=0, description="LwF: softmax temperature")
    replay_per_task: int = Field(16, ge=1, description="replay: examples kept from each old task")
    progress: bool = Field(True, description="tqdm bar with the running loss")


class EvaluationConfig(_Strict):
    split: Literal["test", "dev"] = "test"
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(256, ge=8)
    max_new_tokens: int = Field(32, ge=1)
    backend: Literal["builtin", "lm_eval"] = Field(
        "builtin", description="who scores the R cells: our scorer (continual/scoring.py), or "
        "lm-evaluation-harness in the same prompt format (pip install 'recall-merge[eval]'; "
        "docs/evaluation.md)")

    @field_validator("backend")
    @classmethod
    def _installed(cls, value: str) -> str:
        import importlib.util

        if value == "lm_eval" and importlib.util.find_spec("lm_eval") is None:
            raise ConfigValueError("evaluation.backend lm_eval needs lm-eval, which is not installed",
                                   "pip install 'recall-merge[eval]', or drop evaluation.backend")
        return value


class StrategyConfig(_Strict):
    """One strategy. Strings in the YAML are shorthands (see :func:`parse_shorthand`)."""

    kind: StrategyKind
    name: str | None = None
    training: dict[str, Any] = Field(default_factory=dict, description="overrides of `training`")
    method: str | None = Field(None, description="merge: method name, or 'all'; without it the "
                               f"default merge, {DEFAULT_METHOD} {default_parameters()}")
    library: Library | Literal["*"] = "experts"
    finetune_from: FinetuneFrom | Literal["*"] = "base"
    parameters: dict[str, Any] | None = Field(None, description="merge: the method's parameters")
    guard_newest: bool = Field(
        False, description="merge: score the newest expert and the base on the newest task's dev "
        "split (data that is at hand at that step) and leave the expert out of the merge when it "
        "does not beat the base")
    steps_per_task: bool = Field(
        False, description="joint: train max_steps × the number of tasks so far at each step, the "
        "total step budget of the experts a merge of those tasks gets (without it every stage "
        "has max_steps, spread over more tasks)")
    deploy: Deploy = Field(
        "merge", description="merge: which model is deployed (scored) after each step: the merge "
        "itself, or ema, an exponential moving average of the merges (TIME's EMA deployment, "
        "docs/continual.md#deployment); the merges still feed the next step either way")
    ema_beta: float | None = Field(
        None, description=f"merge with deploy: ema: the newest merge's weight β in "
        f"θ_deploy_t = (1 − β)·θ_deploy_{{t−1}} + β·θ_merge_t, strictly between 0 and 1 (default "
        f"{DEFAULT_EMA_BETA})")


class ContinualConfig(_Strict):
    model: str = Field(description="HF folder, packaged name (smollm2), hub id org/name[@revision] "
                       "(an existing local path wins) or 'tiny-random' (synthetic)")
    tasks: list[str | dict[str, Any]] = Field(
        min_length=1, description="task specs in learning order (strings or registry dicts)")
    task_options: dict[str, Any] = Field(
        default_factory=dict, description="extra load_task kwargs (over n_train/n_dev/n_test)")
    max_train: int = Field(256, ge=1)
    max_dev: int = Field(32, ge=1)
    max_test: int = Field(100, ge=1)
    strategies: list[StrategyConfig | str] = Field(min_length=1)
    merge_parameters: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="method name -> parameters, for merges that set none")
    merge_samples: int = Field(64, ge=1, description="newest-task train prompts given to a merge")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    seed: int = Field(0, ge=0, le=MAX_SEED, description=f"random seed, 0 to {MAX_SEED} (2**32 - 1)")
    device: str = Field("cpu", description="torch device for training, scoring and merging: cpu, "
                        "cuda, cuda:N or mps, checked against what the machine has")
    cells: Literal["full", "summary", "ap_bwt"] = Field(
        "full", description="which R cells to score: every one; only those AP, BWT and FWT read "
        "(summary: the last row, the diagonal and the cell just above it); or only those AP and "
        "BWT read (ap_bwt: the last row and the diagonal; FWT is then null). Cells not scored are "
        "null")
    keep_weights: Literal["all", "final"] = Field(
        "final", description="which merged or fully fine-tuned models keep their weights once "
        "scored: every step's, or only each strategy's final model (a 135M-parameter model is "
        "0.5 GB in fp32, so T steps × S strategies fill a disk fast); LoRA adapters are always kept")
    expert_cache: Path | None = Field(
        None, description="folder where experts fine-tuned from the base and their scores are kept "
        "by task, so that runs of other orders or sequences share them")
    reference_strategy: str | None = Field(
        None, description="the strategy whose AP every other strategy is compared with in "
        "results.json (paired bootstrap interval of the AP difference, Holm-adjusted p-values, a "
        "better/worse/tie verdict); default: the first RECALL merge, else the first strategy")
    run_dir: Path

    @field_validator("model", mode="before")
    @classmethod
    def _hub_mapping(cls, value: Any) -> Any:
        return hub.normalise_ref(value)  # {id: org/name, revision: REV} → org/name@REV

    @field_validator("device")
    @classmethod
    def _servable_device(cls, value: str) -> str:
        return check_device(value)


@dataclass(frozen=True)
class Strategy:
    """A concrete strategy after shorthand and 'all' expansion."""

    name: str
    kind: StrategyKind
    training: TrainingConfig
    method: str | None = None
    library: Library = "experts"
    finetune_from: FinetuneFrom = "base"
    parameters: dict[str, Any] = field(default_factory=dict)
    guard_newest: bool = False
    steps_per_task: bool = False
    deploy: Deploy = "merge"
    ema_beta: float = DEFAULT_EMA_BETA

    @property
    def uses_old_data(self) -> bool:
        return self.kind in ("replay", "joint")


def parse_shorthand(text: str) -> StrategyConfig:
    """``sequential``, ``sequential_full``, ``ewc``, ``lwf``, ``replay``, ``joint``, ``expert``
    (each with an optional ``_full`` or ``_lora`` suffix that sets the training mode), or
    ``merge:METHOD[:LIBRARY[:FINETUNE_FROM]]`` where METHOD may be ``all`` and the protocol parts
    may be ``*`` (both)."""
    if text.startswith("merge:"):
        parts = text.split(":")[1:]
        if not 1 <= len(parts) <= 3 or not parts[0]:
            raise ConfigError(f"strategy {text!r} is not merge:METHOD[:LIBRARY[:FINETUNE_FROM]]",
                              "write e.g. merge:recall or merge:ties:previous:base")
        values: dict[str, Any] = {"kind": "merge", "method": parts[0]}
        if len(parts) > 1:
            values["library"] = parts[1]
        if len(parts) > 2:
            values["finetune_from"] = parts[2]
        return _validate(StrategyConfig, values, prefix=f"strategy {text!r}: ")
    kind, mode = text, None
    for suffix in ("_full", "_lora"):
        if text.endswith(suffix):
            kind, mode = text[: -len(suffix)], suffix[1:]
    values = {"kind": kind, "name": text, "training": {"mode": mode} if mode else {}}
    return _validate(StrategyConfig, values, prefix=f"strategy {text!r}: ")


def _validate(model: type[BaseModel], values: dict[str, Any], prefix: str = "") -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = explain(exc, model)
        raise ConfigError(prefix + error.problem, error.fix) from None


def expand_strategies(config: ContinualConfig, merge_methods: list[str] | None = None) -> list[Strategy]:
    """Concrete strategies in config order; ``merge_methods`` is what ``method: all`` means."""
    strategies: list[Strategy] = []
    for entry in config.strategies:
        spec = parse_shorthand(entry) if isinstance(entry, str) else entry
        training = _validate(TrainingConfig, {**config.training.model_dump(), **spec.training},
                             prefix=f"strategy {spec.name or spec.kind!r}: training overrides: ")
        if spec.steps_per_task and spec.kind != "joint":
            raise ConfigError(f"steps_per_task is for joint training, not {spec.kind!r}",
                              "drop steps_per_task from this strategy")
        if spec.steps_per_task and training.max_steps is None:
            raise ConfigError("steps_per_task scales training.max_steps, which is not set",
                              "set training.max_steps, or drop steps_per_task: with epochs alone "
                              "joint training already passes over every task's examples")
        _check_deploy(spec)
        if spec.kind != "merge":
            name = spec.name or spec.kind
            strategies.append(Strategy(name, spec.kind, training,
                                       steps_per_task=spec.steps_per_task))
            continue
        # no method: the default merge (methods/default.py) with its own parameters unless the
        # config's merge_parameters set that method's
        method_default = default_parameters() if not spec.method else {}
        methods = [spec.method or DEFAULT_METHOD] if spec.method != "all" else list(merge_methods or [])
        libraries = ["experts", "previous"] if spec.library == "*" else [spec.library]
        starts = ["base", "previous"] if spec.finetune_from == "*" else [spec.finetune_from]
        for method in methods:
            for library in libraries:
                for start in starts:
                    # an EMA-deployed strategy's own name, so that it runs beside the plain merge
                    name = spec.name if spec.name and len(methods) * len(libraries) * len(starts) == 1 \
                        else f"merge:{method}:{library}:{start}" + (":ema" if spec.deploy == "ema" else "")
                    parameters = spec.parameters if spec.parameters is not None \
                        else config.merge_parameters.get(method, method_default)
                    beta = DEFAULT_EMA_BETA if spec.ema_beta is None else spec.ema_beta
                    strategies.append(Strategy(name, "merge", training, method, library, start,
                                               dict(parameters), spec.guard_newest,
                                               deploy=spec.deploy, ema_beta=beta))
    names = [s.name for s in strategies]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"strategy names repeat: {', '.join(duplicates)}",
                          "give each strategy its own `name`")
    check_folder_names("strategy", names)
    return strategies


def _check_deploy(spec: StrategyConfig) -> None:
    """``deploy`` and ``ema_beta`` choose what a merge strategy deploys: refused elsewhere, and
    ``ema_beta`` without ``deploy: ema`` (where nothing would read it)."""
    label = repr(spec.name or spec.kind)
    if spec.kind != "merge" and (spec.deploy != "merge" or spec.ema_beta is not None):
        option = "deploy: ema" if spec.deploy != "merge" else "ema_beta"
        raise ConfigError(f"strategy {label}: {option} chooses which model a merge strategy "
                          f"deploys, and {spec.kind!r} merges nothing",
                          f"drop {option.split(':')[0]} from this strategy, or make it a merge "
                          "strategy (kind: merge, method: ...)")
    if spec.ema_beta is not None and not 0 < spec.ema_beta < 1:
        # checked here, not by the field: a failed field of a list item reads as a union error
        raise ConfigError(f"strategy {label}: ema_beta is {spec.ema_beta:g}, not strictly between "
                          "0 and 1 (at 0 the deployed model would never change, at 1 it would "
                          "be the merge itself)",
                          f"give ema_beta a value in (0, 1), e.g. {DEFAULT_EMA_BETA}, or drop it "
                          "for that default; deploy: merge deploys the merge itself")
    if spec.ema_beta is not None and spec.deploy != "ema":
        raise ConfigError(f"strategy {label}: ema_beta is the weight of EMA deployment, but deploy "
                          f"is {spec.deploy!r}",
                          "set deploy: ema to deploy the moving average of the merges, or drop "
                          "ema_beta")


MAX_FOLDER_NAME = 120  # well under the 255 bytes of a file name, room for a suffix such as .json


def check_folder_names(kind: str, names: list[str]) -> None:
    """Refuse names whose folder (``slug``) would be unsafe or shared: empty, hidden or a path
    step (``.``, ``..``), too long for a file system, or the same folder as another name's (two
    names that differ only in the characters the slug replaces, or only in case, which a
    case-insensitive file system does not tell apart)."""
    from recall_merge.reports.html import slug

    seen: dict[str, str] = {}
    for name in names:
        folder = slug(name)
        if not folder or folder.startswith(".") or len(folder.encode()) > MAX_FOLDER_NAME:
            raise ConfigError(
                f"{kind} name {excerpt(name, 60)} cannot be a folder name (it would be "
                f"{excerpt(folder, 60)})",
                f"give the {kind} a `name` that starts with a letter or a digit, at most "
                f"{MAX_FOLDER_NAME} characters")
        other = seen.setdefault(folder.casefold(), name)
        if other != name:
            raise ConfigError(
                f"{kind} names {excerpt(other, 60)} and {excerpt(name, 60)} would share the folder "
                f"{excerpt(folder, 60)}",
                "rename one of them: letters, digits, '-', '_' and '.' are kept, every other "
                "character becomes '_', and case is not told apart")


def _refuse_non_finite(value: Any, where: str = "") -> None:
    """No .inf or .nan anywhere: not a meaningful setting, and results.json must stay JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{excerpt(where, 120)} is {value}, not a finite number",
                          f"give {excerpt(where, 120)} a finite value")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_non_finite(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _refuse_non_finite(item, f"{where}[{index}]")


def load_continual_config(source: str | Path | dict[str, Any]) -> ContinualConfig:
    """Read and validate a continual config; relative paths resolve against the file's folder."""
    base_dir = Path.cwd()
    if isinstance(source, dict):
        raw = dict(source)
    else:
        path = Path(source)
        raw = read_yaml_mapping(path)
        base_dir = path.parent.resolve()
    config = _validate(ContinualConfig, raw)
    _refuse_non_finite(config.model_dump())  # task options and merge parameters are free-form
    update: dict[str, Any] = {}
    if not config.run_dir.is_absolute():
        update["run_dir"] = (base_dir / config.run_dir).resolve()
    if config.expert_cache is not None and not config.expert_cache.is_absolute():
        update["expert_cache"] = (base_dir / config.expert_cache).resolve()
    model_path = base_dir / config.model
    if config.model != TINY_RANDOM and not Path(config.model).is_absolute() and model_path.exists():
        update["model"] = str(model_path.resolve())
    elif config.model != TINY_RANDOM and hub.is_hub_ref(config.model, base_dir):
        # fetched or found in the hub cache now (refused with a fix if missing); the run then uses
        # that snapshot's folder like any local one
        update["model"] = str(hub.resolve(config.model, key="model").folder)
    tasks = [_resolve_local(spec, base_dir) for spec in config.tasks]
    if tasks != config.tasks:
        update["tasks"] = tasks
    config = config.model_copy(update=update)
    expand_strategies(config, merge_methods=[])  # shorthand and name errors now, not mid-run
    return config


def _resolve_local(spec: str | dict[str, Any], base_dir: Path) -> str | dict[str, Any]:
    """Relative paths of local task files resolve against the config file's folder."""
    if isinstance(spec, dict):
        path = spec.get("path")
        if isinstance(path, str) and not Path(path).is_absolute():
            return {**spec, "path": str((base_dir / path).resolve())}
        name = spec.get("name")
        if (path is None and str(spec.get("source", "")).lower() == "local" and isinstance(name, str)
                and not Path(name).is_absolute()):
            return {**spec, "name": str((base_dir / name).resolve())}  # the name is the path here
        return spec
    if spec.startswith("local:") and not Path(spec[len("local:"):]).is_absolute():
        return "local:" + str((base_dir / spec[len("local:"):]).resolve())
    return spec
