"""Typed, validated merge configuration.

Everything here is checked before a single weight is read: unknown keys (with the closest valid
name), wrong types, out-of-range or non-finite values, method-specific parameters, sizes, seeds,
the device, and paths that cannot work (NUL bytes, too long, symbolic-link loops, an output under
a file).
"""

from __future__ import annotations

import difflib
import errno
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import (
    BaseModel,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from recall_merge.errors import (
    MAX_QUOTED_CHARS,
    ConfigError,
    ConfigValueError,
    OutputError,
    RecallError,
    excerpt,
)
from recall_merge.io import hub
from recall_merge.io.packaged import is_packaged_name
from recall_merge.methods.base import StrictParameters as _Strict
from recall_merge.methods.default import DEFAULT_METHOD, default_parameters
from recall_merge.methods.registry import available_methods, parameters_model
from recall_merge.recall.samples import MAX_LINE_BYTES, MAX_SAMPLES

ModelRef = str  # a folder path, a packaged model name such as "smollm2", or a hub id org/name[@rev]

MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds (K-means) are 32-bit unsigned
MAX_SIZE_BYTES = 10**15  # 1 PB: a larger shard or block size is a typo, not a plan
MAX_CONFIG_BYTES = 1_000_000  # a config is a few kilobytes; a bigger file is not one
MAX_YAML_NODES = 100_000  # values in a config once its YAML aliases are expanded
_MAX_REPORTED_ERRORS = 6

_PATHS_NOTE = ("paths in a config file are relative to the file's folder; paths given on the command "
               "line are relative to the current directory")


_REFS_NOTE = ("a folder, a packaged name (smollm2), or a Hugging Face hub id org/name (pinned as "
              "org/name@revision or {id: org/name, revision: REV}); an existing local path always wins")
MAX_LORA_RANK = 65536


class LoraOutputOptions(_Strict):
    """How a merge of LoRA experts is written as one LoRA adapter (``output_format: lora``).
    Neither option: exact (every non-zero direction of the merged delta is kept); both: the
    smaller of the two ranks."""

    rank: StrictInt | None = Field(None, ge=1, le=MAX_LORA_RANK, description="largest rank per module, "
                                   f"a whole number from 1 to {MAX_LORA_RANK}")
    energy: float | None = Field(None, gt=0, le=1, description="keep the fewest singular directions "
                                 "whose squared singular values reach this fraction of the merged "
                                 "delta's squared Frobenius norm, in (0, 1]")

    @field_validator("rank", mode="before")
    @classmethod
    def _rank_in_range(cls, value: Any) -> Any:
        fix = f"give lora_output.rank as a whole number from 1 to {MAX_LORA_RANK} (e.g. 16)"
        if value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigValueError(f"rank {excerpt(value, 60)} of lora_output is not a whole number", fix)
        if not 1 <= value <= MAX_LORA_RANK:
            raise ConfigValueError(f"rank {excerpt(value, 60)} of lora_output is out of range", fix)
        return value

    @field_validator("energy", mode="before")
    @classmethod
    def _energy_in_range(cls, value: Any) -> Any:
        fix = ("give lora_output.energy as a fraction in (0, 1], e.g. 0.99: the share of the merged "
               "delta's squared Frobenius norm that each module keeps")
        if value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigValueError(f"energy {excerpt(value, 60)} of lora_output is not a number", fix)
        if not (math.isfinite(value) and 0 < value <= 1):
            raise ConfigValueError(f"energy {excerpt(value, 60)} of lora_output is outside (0, 1]", fix)
        return value


class MergeConfig(_Strict):
    method: str = Field(DEFAULT_METHOD, description=f"merge method (`recall methods` lists them); "
                        f"without it, {DEFAULT_METHOD} with parameters {default_parameters()} "
                        "(the continual benchmark's choice, methods/default.py)")
    base: ModelRef = Field(description="base model M_0: " + _REFS_NOTE + ". " + _PATHS_NOTE)
    models: list[ModelRef] = Field(min_length=1, description="experts M_1..M_N in order, newest last, "
                                   "each " + _REFS_NOTE + ". " + _PATHS_NOTE)
    samples: Path | None = Field(None, description="the newest task's inputs (.jsonl with a \"text\" "
                                 f"field, or .txt one per line; a regular file of at most {MAX_SAMPLES:,} "
                                 f"samples and {MAX_LINE_BYTES:,} bytes per line); RECALL only. "
                                 + _PATHS_NOTE)
    output: Path = Field(description="output folder, written atomically. " + _PATHS_NOTE)
    seed: int = Field(0, ge=0, le=MAX_SEED, description=f"random seed, 0 to {MAX_SEED} (2**32 - 1)")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    parameters: dict[str, Any] = Field(default_factory=dict)
    shard_size: str = Field("2GB", description="largest output shard, e.g. 500MB or 2GB (above 0, at "
                            "most 1PB)")
    block_size: str = Field("256MB", description="elementwise methods merge large tensors in row blocks "
                            "whose inputs (all models, float32) stay under this size: memory stays flat "
                            "as the number of models grows (above 0, at most 1PB)")
    allow_pickle: bool = Field(False, description="read .bin/.pt checkpoints (torch.load weights_only=True)")
    trust_remote_code: bool = False
    device: str = Field("cpu", description="torch device of RECALL's representation pass and of its "
                        "per-tensor merge arithmetic (tensors moved there one row block at a time, "
                        "the results back to the CPU for writing): cpu, cuda, cuda:N, mps, or auto "
                        "(cuda when a CUDA GPU is usable, else cpu), checked against this machine "
                        "when the config is loaded. The other methods always merge on the CPU")
    compute_dtype: Literal["float32", "bfloat16", "float64"] = Field(
        "float32", description="precision of RECALL's representation pass and merge arithmetic; "
        "the output keeps `dtype`. bfloat16 halves the memory traffic (meant for GPUs) and moves "
        "merged weights by about one bfloat16 rounding step (2^-8 relative); float64 makes the "
        "merged bytes independent of the CPU's kernels (float32's products round differently on "
        "AVX2 and AVX-512, which moves α in the last bits) at about twice the time and the pass's "
        "memory; RECALL only")
    output_format: Literal["full", "lora"] = Field(
        "full", description="full: a Hugging Face model folder; lora: one PEFT LoRA adapter on the "
        "base (every model in `models` must be a LoRA adapter of it)")
    lora_output: LoraOutputOptions | None = Field(
        None, description="with output_format: lora, {rank: R} and/or {energy: E}; neither keeps the "
        "merge exact")
    mergekit: dict[str, Any] | None = Field(
        None, description="written by the mergekit reader (interop/mergekit.py) for a mergekit config "
        "merged per output tensor: its slices, parameters with filters, tokenizer_source, chat_template "
        "and dtype, with models as indices into [base, *models]; write a mergekit YAML rather than this")

    @model_validator(mode="before")
    @classmethod
    def _default_merge(cls, raw: Any) -> Any:
        # No method: the default merge with its own parameters. RECALL-only keys then mean the
        # config was written for RECALL (the default before the benchmark chose another): refused
        # rather than silently merged by another method.
        if not isinstance(raw, dict) or "method" in raw:
            return raw
        recall_keys = [key for key in ("samples", "parameters") if raw.get(key)]
        if recall_keys:
            raise ConfigValueError(
                f"{' and '.join(recall_keys)} set but no method: the default merge is "
                f"{DEFAULT_METHOD} {default_parameters()}, which reads "
                f"{'neither' if len(recall_keys) > 1 else 'no ' + recall_keys[0]}",
                "add `method: recall` to merge with RECALL (or name the method these belong to)")
        return {**raw, "method": DEFAULT_METHOD, "parameters": default_parameters()}

    @field_validator("base", "models", mode="before")
    @classmethod
    def _hub_mappings(cls, value: Any) -> Any:
        # {id: org/name, revision: REV} is written org/name@REV from here on: one spelling to
        # resolve, report and rebuild from
        if isinstance(value, list):
            return [hub.normalise_ref(item) for item in value]
        return hub.normalise_ref(value)

    @field_validator("lora_output")
    @classmethod
    def _lora_options_need_lora_output(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("output_format", "full") != "lora":
            raise ConfigValueError("lora_output is set, but output_format is 'full'",
                                   "add `output_format: lora`, or remove lora_output")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        # Here rather than in the registry's lookup, so that a long bogus name is quoted cut short.
        names = available_methods()
        if value not in names:
            close = difflib.get_close_matches(value, names, n=1, cutoff=0.5) if len(value) <= 100 else []
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigValueError(f"unknown merge method {_short(value, 60)}",
                                   f"{hint}available methods: {', '.join(names)}")
        return value

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_in_range(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_SEED:
            raise ConfigValueError(f"seed {excerpt(value, 40)} is out of range",
                                   f"use a seed from 0 to {MAX_SEED} (2**32 - 1)")
        return value

    @field_validator("shard_size", "block_size")
    @classmethod
    def _valid_size(cls, value: str, info: Any) -> str:
        parse_size(value, info.field_name, error=ConfigValueError)
        return value

    @field_validator("device")
    @classmethod
    def _usable_device(cls, value: str) -> str:
        return check_device(value)

    @field_validator("compute_dtype")
    @classmethod
    def _compute_dtype_for_recall(cls, value: str, info: Any) -> str:
        # The other methods' tensor functions (SVD, top-k ranks) are written and checked in
        # float32 only: refused rather than silently run in another precision.
        method = info.data.get("method", DEFAULT_METHOD)
        if value != "float32" and method != "recall":
            raise ConfigValueError(f"compute_dtype {value} is only supported by method recall, not "
                                   f"{_short(method, 60)}",
                                   "remove compute_dtype (float32 is the default), or use method: recall")
        return value

    def method_parameters(self) -> BaseModel:
        model = parameters_model(self.method)
        try:
            return model.model_validate(self.parameters)
        except ValidationError as exc:
            raise explain(exc, model, prefix="parameters.") from None

    def shard_size_bytes(self) -> int:
        return parse_size(self.shard_size, "shard_size")

    def block_size_bytes(self) -> int:
        return parse_size(self.block_size, "block_size")


# --------------------------------------------------------------------------- quoting user values
def _short(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """A string (a path, a key) cut to ``limit`` characters, quoted."""
    return repr(text) if len(text) <= limit else repr(text[: limit - 3]) + "..."


# ---------------------------------------------------------------------------------------- sizes
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:E([+-]?[0-9]{1,4}))?\s*([KMGTP]I?B|B)\s*$")


def parse_size(text: str, key: str = "shard_size", *, error: type[ConfigError] = ConfigError) -> int:
    """Bytes of a size such as ``500MB``, ``2GB`` or ``1.5GiB``; ``key`` names the option in the
    error. Refused: no unit, zero or negative, inf/nan, or more than 1 PB."""
    fix = f"write {key} like 500MB or 2GB (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB; at most 1PB)"
    if not isinstance(text, str):
        raise error(f"{key} {excerpt(text, 60)} is not a size", fix)
    match = _SIZE_PATTERN.match(text.upper())
    if match is None:
        raise error(f"{key} {_short(text, 60)} is not a size", fix)
    mantissa, exponent, unit = match.groups()
    value = float(mantissa) * 10.0 ** int(exponent or 0) if int(exponent or 0) < 300 else math.inf
    size = value * _SIZE_UNITS[unit]
    if not math.isfinite(size) or size > MAX_SIZE_BYTES:
        raise error(f"{key} {_short(text, 60)} is larger than 1PB", fix)
    if int(size) < 1:
        raise error(f"{key} {_short(text, 60)} is less than one byte", fix)
    return int(size)


# --------------------------------------------------------------------------------------- device
def check_device(text: Any, key: str = "device") -> str:
    """``text`` as a torch device string this machine can run on, or a :class:`ConfigValueError`
    (a ConfigError, raisable inside pydantic validators) naming the problem and the fix.

    Accepted: ``cpu``, ``cuda``/``cuda:N`` when CUDA is available and N < the number of GPUs,
    ``mps`` when the Metal backend is available, and ``auto``: ``cuda`` where CUDA is usable, else
    ``cpu`` (returned resolved, so reports name the device that ran). Everything else torch may
    name (xla, meta, ...) runs no merge here. Shared by the merge and continual configs.
    """
    fix = ("use device: cpu (or cuda / cuda:N on a machine with NVIDIA GPUs, mps on Apple silicon, "
           "auto for cuda where available)")
    if not isinstance(text, str):
        raise ConfigValueError(f"{key} {excerpt(text, 60)} is not a device name", fix)
    if text.strip().lower() == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text.strip().lower())
    except Exception:  # torch raises RuntimeError for unknown names, others for odd input
        raise ConfigValueError(f"{key} {_short(text, 60)} is not a torch device", fix) from None
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigValueError(f"{key} {_short(text, 60)} asks for CUDA, but this machine (or this "
                                   "torch build) has no usable CUDA GPU", fix)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigValueError(f"{key} {_short(text, 60)} names GPU {device.index}, but this machine "
                                   f"has {count} GPU(s) (cuda:0 to cuda:{count - 1})",
                                   f"use cuda:0 to cuda:{count - 1}, or device: cpu")
        return str(device)
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigValueError(f"{key} {_short(text, 60)} asks for Apple's Metal backend (mps), "
                                   "which this machine does not have", fix)
        return str(device)
    raise ConfigValueError(f"{key} {_short(text, 60)} is a {device.type!r} device, which recall-merge "
                           "does not run on", fix)


# ---------------------------------------------------------------------------------------- paths
_MAX_PATH_BYTES = 4095  # Linux PATH_MAX less the NUL
_MAX_NAME_BYTES = 255  # NAME_MAX of the common file systems


def check_path_text(path: str | Path, key: str, *, error: type[RecallError] = ConfigError) -> None:
    """Refuse a path no file system call can use: a NUL byte, an undecodable character, too long
    (as a whole or in one component), or one that runs into a symbolic-link loop. A path that
    simply does not exist passes: whoever reads it says so with its own error."""
    text = str(path)
    shown = _short(text, 120)
    if "\x00" in text:
        raise error(f"{key} {shown} contains a NUL byte", f"remove the NUL (\\0) from {key}")
    try:
        raw = os.fsencode(text)
    except (UnicodeError, ValueError):
        raise error(f"{key} {shown} holds characters that are not valid in a file name",
                    f"write {key} in plain text") from None
    if len(raw) > _MAX_PATH_BYTES or any(len(part) > _MAX_NAME_BYTES for part in raw.split(b"/")):
        raise error(f"{key} is too long ({len(raw)} bytes; at most {_MAX_PATH_BYTES}, and "
                    f"{_MAX_NAME_BYTES} per folder or file name): {shown}", f"use a shorter path for {key}")
    try:
        os.stat(raw)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{key} {shown} runs into a loop of symbolic links",
                        "fix or remove the looping link (ls -l shows where each link points)") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise error(f"{key} {shown} is too long for the file system", f"use a shorter path for {key}") from None


def check_output_path(path: str | Path, key: str = "output") -> None:
    """Refuse an output folder that cannot be created: a path no system call takes (a NUL byte,
    too long, a symbolic-link loop: :class:`ConfigError`, like any other bad value), or one the
    file system blocks (:class:`OutputError`): a file where the folder would go, a dangling link,
    or a file among the folders above it. Only reads metadata; the engine's own checks (overlap
    with inputs, --overwrite) come on top."""
    check_path_text(path, key)
    output = Path(path)
    shown = _short(str(output), 120)
    if output.exists() and not output.is_dir():
        raise OutputError(f"{key} {shown} is a file", "choose a folder path for the output")
    if output.is_symlink() and not output.exists():
        raise OutputError(f"{key} {shown} is a symbolic link to nothing", "remove the link or choose another path")
    for parent in output.absolute().parents:
        try:
            mode = os.stat(parent).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue  # missing: created by the merge; or under a file: found further up
        except OSError as exc:
            raise OutputError(f"the folder {_short(str(parent), 120)} above {key} cannot be used: "
                              f"{os.strerror(exc.errno or 0)}", f"choose another path for {key}") from None
        if not stat.S_ISDIR(mode):
            raise OutputError(f"{_short(str(parent), 120)} is a file, so {key} {shown} cannot be created "
                              "under it", f"choose an {key} path whose parent folders are folders")
        break


# ----------------------------------------------------------------------------- pydantic errors
def _field_names(model: type[BaseModel]) -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        names.append(field.alias or name)
    return names


def _description(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """The description of the field an error is about (it states the valid range), or ""."""
    if not loc:
        return ""
    for name, field in model.model_fields.items():
        if loc[0] in (name, field.alias):
            text = field.description or ""
            return text if len(text) <= 400 else text[:397] + "..."
    return ""


def _location(prefix: str, loc: tuple[Any, ...]) -> str:
    where = prefix + ".".join(str(part)[:60] for part in loc)
    return where.rstrip(".") or "the configuration"


def explain(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> ConfigError:
    """Turn pydantic's error list into one ConfigError naming each bad key and its fix. Every
    quoted value is an excerpt of at most 200 characters, and at most a few errors are listed."""
    lines: list[str] = []
    fixes: list[str] = []
    errors = exc.errors(include_url=False)
    for error in errors[:_MAX_REPORTED_ERRORS]:
        where = _location(prefix, error["loc"])
        cause = (error.get("ctx") or {}).get("error")
        if error["type"] == "extra_forbidden":
            key = str(error["loc"][-1])
            close = difflib.get_close_matches(key, _field_names(model), n=1, cutoff=0.5) \
                if len(key) <= 100 else []
            lines.append(f"unknown key {_short(where)}")
            fixes.append(f"did you mean {close[0]!r}?" if close else
                         f"valid keys are: {', '.join(_field_names(model))}")
        elif error["type"] == "missing":
            lines.append(f"missing required key {_short(where)}")
            fixes.append(f"add {_short(where)} to the config")
        elif isinstance(cause, RecallError):
            named = cause.problem.startswith(str(error["loc"][-1])) if error["loc"] else False
            lines.append(cause.problem if named else f"{where}: {cause.problem}")
            fixes.append(cause.fix or f"give {where!r} a valid value")
        else:
            # 120, not 200: several of these may share one message
            lines.append(f"{where}: {error['msg'][:MAX_QUOTED_CHARS]} (got {excerpt(error.get('input'), 120)})")
            # one fix per key, not per entry: models.0 ... models.9 share "give 'models' ..."
            key = _location(prefix, error["loc"][:1])
            described = _description(model, error["loc"])
            fixes.append(f"give {key!r} a valid value" + (f": {described}" if described else ""))
    if len(errors) > _MAX_REPORTED_ERRORS:
        lines.append(f"and {len(errors) - _MAX_REPORTED_ERRORS} more error(s)")
    unique_fixes = list(dict.fromkeys(fixes))
    return ConfigError("invalid configuration: " + "; ".join(lines), "; ".join(unique_fixes))


# ------------------------------------------------------------------------------------ YAML files
def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Number of nodes of the document once every alias is expanded, counted without expanding
    anything (aliases share their node, so a node's size is computed once) and capped at
    ``limit + 1``. Raises ConfigError for an alias that contains itself. Iterative: a deeply
    nested document must not exhaust Python's stack here."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        children: list[yaml.Node] = (
            [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode)
            else list(node.value))
        if children_done:
            on_path.discard(id(node))
            sizes[id(node)] = min(limit + 1, 1 + sum(sizes[id(child)] for child in children))
            continue
        if id(node) in on_path:
            raise ConfigError("the config's YAML holds an alias that contains itself (a recursive "
                              "structure)", "remove the recursive anchor/alias (&name ... *name)")
        on_path.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                raise ConfigError("the config's YAML holds an alias that contains itself (a recursive "
                                  "structure)", "remove the recursive anchor/alias (&name ... *name)")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _load_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` with a budget: a document whose aliases expand to more than
    MAX_YAML_NODES values ("billion laughs") is refused before anything is built from it."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise ConfigError(f"config file {where} holds more than {MAX_YAML_NODES:,} values once its "
                              "YAML aliases (*name) are expanded: a config is far smaller, so this "
                              "is refused rather than built",
                              "write the values out, or use anchors and aliases (&name, *name) only "
                              "for small repeated parts")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file holding a mapping, or a ConfigError that names the fault (shared by every
    config loader of the package). The file must be a regular file under 1 MB, and its aliases
    may not expand beyond MAX_YAML_NODES values."""
    path = Path(path)
    where = _short(str(path), 120)
    check_path_text(path, "the config path")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"config file {where} does not exist", "check the path") from None
    except OSError as exc:
        raise ConfigError(f"config file {where} cannot be read: {os.strerror(exc.errno or 0)}",
                          "check the path and its permissions") from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"config path {where} is a folder", "give the YAML file's path")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"config path {where} is not a regular file (a device, pipe or socket)",
                          "give the path of a YAML file")
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {where} has {info.st_size:,} bytes; a config is at most "
                          f"{MAX_CONFIG_BYTES:,}", "check that this is the config file")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config file {where} cannot be read: {os.strerror(exc.errno or 0)}",
                          "check the path and its permissions") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {where} has more than {MAX_CONFIG_BYTES:,} bytes",
                          "check that this is the config file")
    try:
        raw = _load_yaml(data.decode("utf-8"), where)
    except UnicodeDecodeError:
        raise ConfigError(f"config file {where} is not UTF-8 text", "save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {where} is not valid YAML: {str(exc)[:400]}",
                          "fix the YAML syntax (indentation, colons, quotes)") from None
    except RecursionError:
        raise ConfigError(f"config file {where} nests its values too deeply",
                          "a config needs a few levels of nesting; check the file") from None
    if raw is None:
        raise ConfigError(f"config file {where} is empty", "see examples/ for a complete config")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {where} must hold a mapping of keys, not {type(raw).__name__}",
                          "write it as `key: value` lines; see examples/")
    return raw


# ---------------------------------------------------------------------------------------- loading
_PATH_KEYS = ("base", "models", "samples", "output")


def load_config(source: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None) -> MergeConfig:
    """Read and validate a merge config from a YAML file or a dict.

    Relative paths in a file are resolved against the file's folder, so a config can travel with
    its models; relative paths in a dict, and in ``overrides`` (values given on the command line,
    such as ``--output``), against the current directory.
    """
    cwd = Path.cwd()
    base_dir = cwd
    if isinstance(source, dict):
        raw = dict(source)
    else:
        path = Path(source)
        raw = read_yaml_mapping(path)
        base_dir = path.parent
        if _looks_like_mergekit(raw):
            from recall_merge.interop.mergekit import from_mergekit

            raw = from_mergekit(raw)
    overrides = dict(overrides or {})
    try:
        overrides = {key: _absolute_override(key, value, cwd) for key, value in overrides.items()}
        raw.update(overrides)
        config = MergeConfig.model_validate(raw)
    except ValidationError as exc:
        raise explain(exc, MergeConfig) from None
    config = _resolve_paths(config, base_dir)
    check_output_path(config.output)
    config.method_parameters()  # validate the method's own parameters now, not mid-merge
    return config


def _absolute_override(key: str, value: Any, cwd: Path) -> Any:
    """A command-line path made absolute against the current directory (the file's folder is
    for paths written in the file)."""
    if key not in _PATH_KEYS or value is None:
        return value
    if key == "models" and isinstance(value, list | tuple):
        return [_absolute_override("base", item, cwd) for item in value]
    value = hub.normalise_ref(value) if key in ("base", "models") else value
    if not isinstance(value, str | os.PathLike):
        return value  # pydantic reports the wrong type
    text = str(value)
    check_path_text(text, key)
    if key in ("base", "models") and (is_packaged_name(text) or hub.is_hub_ref(text, cwd)):
        return text
    return text if Path(text).is_absolute() else str(cwd / text)


def _looks_like_mergekit(raw: dict[str, Any]) -> bool:
    return "merge_method" in raw


def _resolve(path: Path, key: str) -> Path:
    """``path`` made absolute with symbolic links resolved, after the checks that make resolve()
    itself safe (it raises on a NUL byte or a link loop)."""
    check_path_text(path, key)
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        raise ConfigError(f"{key} {_short(str(path), 120)} cannot be resolved (a symbolic-link loop or an "
                          "unreadable folder on the way)", f"check {key}") from None


def _resolve_paths(config: MergeConfig, base_dir: Path) -> MergeConfig:
    def resolve(ref: str, key: str) -> str:
        check_path_text(ref, key)  # first: is_packaged_name's exists() raises on a too-long path
        if is_packaged_name(ref) or Path(ref).is_absolute():
            return ref
        if hub.is_hub_ref(ref, base_dir):
            # fetched (or found in the cache) now, so that a missing model is refused before the
            # merge reads anything; the merge then opens this very snapshot
            hub.resolve(ref, trust_remote_code=config.trust_remote_code, key=key)
            return ref.strip()
        return str(_resolve(base_dir / ref, key))

    update: dict[str, Any] = {
        "base": resolve(config.base, "base"),
        "models": [resolve(m, f"models[{k}]") for k, m in enumerate(config.models)],
    }
    tokenizer_source = (config.mergekit or {}).get("tokenizer_source")
    if isinstance(tokenizer_source, dict) and isinstance(tokenizer_source.get("path"), str):
        # a mergekit tokenizer_source that is none of the merged models
        update["mergekit"] = {**config.mergekit,
                              "tokenizer_source": {"path": resolve(tokenizer_source["path"], "tokenizer_source")}}
    if config.output.is_absolute():
        check_path_text(config.output, "output")
    else:
        update["output"] = _resolve(base_dir / config.output, "output")
    if config.samples is not None:
        if config.samples.is_absolute():
            check_path_text(config.samples, "samples")
        else:
            update["samples"] = _resolve(base_dir / config.samples, "samples")
    return config.model_copy(update=update)
