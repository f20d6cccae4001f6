"""A mergekit config merged the way mergekit 0.1.5 plans it: one output tensor at a time.

:func:`~recall_merge.interop.mergekit.from_mergekit` keeps what a whole-model merge cannot express
(``slices:``, passthrough, filtered parameters, ``tokenizer_source``, ``chat_template``, a float16
or bfloat16 ``dtype``) as mergekit's plan under the config key ``mergekit``; this module merges it.

The plan (mergekit/plan.py). Every config is a list of slices: ``models:`` is one slice over all
blocks of every model, with the base added when it is not listed. The output's decoder blocks are
the slices' blocks in order, renumbered from 0 (config.json's ``num_hidden_layers`` becomes their
number). The tensors before the blocks (embeddings) are merged from the first slice's sources, the
ones after them (final norm, head) from the last slice's, both read at t = 0; block ``offset`` of a
slice of n blocks is read at t = offset / (n − 1) (t = 1 when n = 1).

The parameters of one output tensor (mergekit/parameter_resolver.py): for each parameter the first
scope that gives a value, in the order the model's own entry, the slice's ``parameters``, the global
``parameters``. A conditional setting gives the value of its first entry whose ``filter`` is a
substring of the tensor's name (the input tensor's name for per-model parameters, the output
tensor's for shared ones), or nothing (the next scope is asked); a gradient is read at t. Those
numbers make a merge of plain numbers that our method computes, with the code of a whole-model
merge; passthrough returns its one input, times ``scale`` when given.

Precision: the inputs are cast to mergekit's ``dtype`` before anything else (mergekit loads them
in it and computes in it), the merge runs in that dtype, and the result is written in
``out_dtype`` (else ``dtype``). Without ``dtype`` the merge computes in float32.

Streaming: one output tensor is read, merged and written at a time; elementwise methods cut large
tensors into row blocks (``block_size``) as the engine does. Nothing is read before the plan is
complete, so a config that cannot work is refused first.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from recall_merge.config import MergeConfig
from recall_merge.errors import CheckpointError, ConfigError, excerpt
from recall_merge.interop.mergekit import (
    PASSTHROUGH,
    SPECS,
    convert_method,
    evaluate_setting,
    from_mergekit,
)
from recall_merge.io import atomic
from recall_merge.io.lora import LoraAdapter, is_lora_folder
from recall_merge.io.output import (
    MergeResult,
    check_free_space,
    check_output,
    check_output_finite,
    copy_support_files,
    peak_rss_mb,
    publish,
    removed_on_failure,
)
from recall_merge.io.pool import (
    _BLOCK_PATTERN,
    _check_remote_code,
    check_support_files,
    check_tokenizer_files,
    resolve_ref,
    tensor_position,
)
from recall_merge.io.reader import Checkpoint, TensorInfo, check_finite, check_same_dtype_class
from recall_merge.io.tokenizer_merge import (
    TOKENIZER_FILES,
    MergedVocabulary,
    TokenizerInput,
    build_vocabulary,
    config_vocab_size,
    load_tokenizer,
    permute_rows,
    resolve_chat_template,
    save_tokenizer,
)
from recall_merge.io.writer import StreamingShardWriter
from recall_merge.methods.base import MergeMethod, TensorPosition
from recall_merge.methods.registry import get_method
from recall_merge.provenance import versions
from recall_merge.reports.model_card import model_card

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_PRE_KINDS = ("embedding", "other")  # planned before the blocks, from the first slice
_EXTRAS_FIX = ("`mergekit:` is written by the mergekit reader: write the merge as a mergekit YAML "
               "(merge_method, models or slices, ...) and let `recall merge` read it")


@dataclass
class _Model:
    """One input: a full checkpoint, or a LoRA adapter on the base (model 0)."""

    folder: Path
    checkpoint: Checkpoint | None
    adapter: LoraAdapter | None
    config: dict[str, Any]
    num_layers: int
    tensors: dict[str, TensorInfo]
    layers: dict[int, list[str]] = field(default_factory=dict)  # block → its tensor names


@dataclass(frozen=True)
class _Input:
    model: int
    name: str


@dataclass
class PlannedTensor:
    """One output tensor: its inputs in mergekit's order, which of them are our (base, experts),
    and the merge (a key of ``MergekitPlan.merges``) that combines them."""

    name: str
    shape: tuple[int, ...]
    stored_dtype: torch.dtype
    inputs: list[_Input]
    order: list[int]
    merge: str
    position: TensorPosition
    t: float
    base_model: int | None
    vocabulary: bool = False


class _Passthrough:
    """mergekit's passthrough: the one input, times ``scale`` when given."""

    elementwise = True

    def __init__(self, scale: float | None) -> None:
        self.scale = scale

    def is_elementwise(self) -> bool:
        return True

    def merge_tensor(self, name: str, position: TensorPosition, base: torch.Tensor,
                     experts: list[torch.Tensor]) -> torch.Tensor:
        return base if self.scale is None else base * self.scale


@dataclass
class MergekitPlan:
    models: dict[int, _Model]
    tensors: list[PlannedTensor]
    merges: dict[str, MergeMethod | _Passthrough]
    merge_settings: dict[str, dict[str, Any]]
    num_layers: int
    compute_dtype: torch.dtype | None
    out_dtype: torch.dtype
    vocabulary: MergedVocabulary | None
    chat_template: str | None
    write_tokenizer: bool
    slices: list[dict[str, Any]]


# ------------------------------------------------------------------------------------ planning
def build_plan(config: MergeConfig) -> MergekitPlan:
    """Open the models (headers only) and plan every output tensor; refuse what cannot work."""
    extras = _checked_extras(config)
    method = extras["merge_method"]
    refs = [config.base, *config.models]
    used = sorted({0} | {source["model"] for piece in extras["slices"] for source in piece["sources"]}
                  | ({extras["base_model"]} if extras["base_model"] is not None else set())
                  | ({extras["tokenizer_source"]["model"]} if isinstance(extras["tokenizer_source"], dict)
                     and "model" in extras["tokenizer_source"] else set()))
    if used[-1] >= len(refs):
        raise ConfigError(f"`mergekit:` refers to model {used[-1]}, but the config lists {len(refs)}", _EXTRAS_FIX)
    models = _open_models(refs, used, config)
    slices = _normalised_slices(extras["slices"], models, extras["merge_method"])
    compute = _DTYPES[extras["dtype"]] if extras["dtype"] else None
    plan = MergekitPlan(
        models=models, tensors=[], merges={}, merge_settings={},
        num_layers=sum(piece["sources"][0]["layer_range"][1] - piece["sources"][0]["layer_range"][0]
                       for piece in slices),
        compute_dtype=compute, out_dtype=_DTYPES[config.dtype], vocabulary=None, chat_template=None,
        write_tokenizer=False, slices=slices)
    source = extras["tokenizer_source"]
    if source is not None:
        plan.vocabulary = _vocabulary(source, extras, models, used, config)
        plan.write_tokenizer = True
        orphans = _orphan_tokens(plan.vocabulary)
        if orphans:
            warnings.warn(f"{len(orphans)} token(s) of the output vocabulary are in none of the merged "
                          f"models (e.g. {orphans[0]!r}): their embedding and head rows are zeros, as in "
                          "mergekit", UserWarning, stacklevel=2)
    if extras["chat_template"] is not None:
        folders = [_tokenizer_folder(models, index) for index in used]
        plan.chat_template = resolve_chat_template(extras["chat_template"], folders,
                                                   trust_remote_code=config.trust_remote_code)
        plan.write_tokenizer = True

    planner = _Planner(plan, extras, config, method)
    donor = models[0]
    first, last = slices[0], slices[-1]
    outside = [name for name in _file_order(donor.tensors) if _block_of(name) is None]
    for name in outside:
        if tensor_position(name, plan.num_layers).kind in _PRE_KINDS:
            planner.plan_outside(name, first)
    out_layer = 0
    for piece in slices:
        start, stop = piece["sources"][0]["layer_range"]
        length = stop - start
        for offset in range(length):
            t = offset / (length - 1) if length > 1 else 1.0
            planner.plan_block(piece, offset, out_layer, t)
            out_layer += 1
    for name in outside:
        if tensor_position(name, plan.num_layers).kind not in _PRE_KINDS:
            planner.plan_outside(name, last)
    return plan


def _orphan_tokens(vocabulary: MergedVocabulary) -> list[str]:
    """Output tokens that no merged model has (their rows are zeros)."""
    present = torch.stack(list(vocabulary.permutations.values())).ge(0).any(dim=0)
    return [token for token, index in sorted(vocabulary.vocab.items(), key=lambda item: item[1])
            if not present[index]]


def _checked_extras(config: MergeConfig) -> dict[str, Any]:
    """The ``mergekit`` block, with the shape the reader writes. A config saved from a merge's model
    card holds one, and may have been edited: it is written back as a mergekit config and read
    again, so that it passes every check a mergekit YAML does."""
    extras = config.mergekit
    keys = {"merge_method", "base_model", "slices", "parameters", "tokenizer_source", "pad_to_multiple_of",
            "chat_template", "dtype", "out_dtype"}
    if not isinstance(extras, dict) or set(extras) != keys or extras["merge_method"] not in SPECS:
        raise ConfigError(f"the config's `mergekit:` block is not one the mergekit reader wrote "
                          f"({excerpt(extras, 120)})", _EXTRAS_FIX)
    slices = extras["slices"]
    if not isinstance(slices, list) or not slices or not all(
            isinstance(piece, dict) and isinstance(piece.get("sources"), list) and piece["sources"]
            and all(isinstance(source, dict) and isinstance(source.get("model"), int) for source in piece["sources"])
            for piece in slices):
        raise ConfigError("the `mergekit:` block's slices are malformed", _EXTRAS_FIX)
    try:
        from_mergekit(to_mergekit_document(config))
    except (KeyError, TypeError, IndexError, AttributeError, ValueError):
        raise ConfigError("the `mergekit:` block of the config is malformed", _EXTRAS_FIX) from None
    return extras


def _open_models(refs: list[str], used: list[int], config: MergeConfig) -> dict[int, _Model]:
    """The used inputs, headers only, with the pool's safety checks (remote code, tokenizer and
    support files of the base). Their shapes are checked per output tensor, not per model: a
    frankenmerge may join models of different depth and a tokenizer merge ones of different
    vocabularies."""
    trust = config.trust_remote_code
    base_folder = resolve_ref(refs[0], trust_remote_code=trust)
    if base_folder.exists() and is_lora_folder(base_folder):
        raise CheckpointError(f"base {base_folder} is a LoRA adapter, not a full model",
                              "set `base_model` to the full model the adapters were trained on")
    base = Checkpoint(base_folder, allow_pickle=config.allow_pickle)
    _check_remote_code(base, trust)
    check_tokenizer_files(base.folder)
    check_support_files(base.folder)
    models: dict[int, _Model] = {0: _Model(base.folder, base, None, base.config, base.num_layers, base.tensors)}
    for index in used:
        if index == 0:
            continue
        folder = resolve_ref(refs[index], trust_remote_code=trust)
        if not folder.exists():
            raise CheckpointError(f"model folder {str(folder)!r} does not exist", "check the path in the config")
        if is_lora_folder(folder):
            adapter = LoraAdapter(folder, base, allow_pickle=config.allow_pickle)
            models[index] = _Model(folder, None, adapter, base.config, base.num_layers, base.tensors)
        else:
            checkpoint = Checkpoint(folder, allow_pickle=config.allow_pickle)
            _check_remote_code(checkpoint, trust)
            if checkpoint.config.get("model_type") != base.config.get("model_type"):
                raise CheckpointError(
                    f"{folder} is a {checkpoint.config.get('model_type')!r} model, the base a "
                    f"{base.config.get('model_type')!r} one", "merge only models of one architecture")
            models[index] = _Model(folder, checkpoint, None, checkpoint.config, checkpoint.num_layers,
                                   checkpoint.tensors)
    for model in models.values():
        for name in model.tensors:
            block = _block_of(name)
            if block is not None:
                model.layers.setdefault(block, []).append(name)
    return models


def _normalised_slices(slices: list[dict[str, Any]], models: dict[int, _Model], method: str) -> list[dict[str, Any]]:
    """Slices with every layer range filled in (``models:`` takes all blocks) and checked against
    the models' depths."""
    result = []
    for s, piece in enumerate(slices):
        sources = []
        for source in piece["sources"]:
            model = models[source["model"]]
            layer_range = source.get("layer_range") or [0, model.num_layers]
            if layer_range[1] > model.num_layers:
                raise ConfigError(f"slices[{s}] takes blocks {layer_range[0]}..{layer_range[1] - 1} of "
                                  f"{model.folder}, which has {model.num_layers}",
                                  f"give a layer_range within [0, {model.num_layers}]")
            sources.append({**source, "layer_range": list(layer_range)})
        lengths = sorted({source["layer_range"][1] - source["layer_range"][0] for source in sources})
        if len(lengths) != 1:
            raise ConfigError(f"the models of this {method} merge have different numbers of blocks "
                              f"({', '.join(map(str, lengths))})",
                              "merge models of one depth, or take equal block ranges with `slices:`")
        result.append({**piece, "sources": sources})
    return result


def _tokenizer_folder(models: dict[int, _Model], index: int) -> Path:
    # a LoRA adapter's tokenizer is its base's (mergekit loads BASE+ADAPTER's from BASE)
    model = models[index]
    return models[0].folder if model.adapter is not None else model.folder


def _vocabulary(source: Any, extras: dict[str, Any], models: dict[int, _Model], used: list[int],
                config: MergeConfig) -> MergedVocabulary:
    def entry(index: int) -> TokenizerInput:
        return TokenizerInput(index, _tokenizer_folder(models, index), config_vocab_size(models[index].config))

    base_index = extras["base_model"] if extras["base_model"] is not None else 0
    source_folder = None
    if isinstance(source, dict):
        source_folder = (_tokenizer_folder(models, source["model"]) if "model" in source
                         else resolve_ref(source["path"], trust_remote_code=config.trust_remote_code))
        source = "model"
    return build_vocabulary(source, entry(base_index), [entry(index) for index in used if index != base_index],
                            source_folder=source_folder, pad_to_multiple_of=extras["pad_to_multiple_of"],
                            trust_remote_code=config.trust_remote_code)


def _block_of(name: str) -> int | None:
    match = _BLOCK_PATTERN.search(name)
    return int(match.group(1)) if match else None


def _renumbered(name: str, layer: int) -> str:
    match = _BLOCK_PATTERN.search(name)
    start, end = match.span(1)
    return name[:start] + str(layer) + name[end:]


def _file_order(tensors: dict[str, TensorInfo]) -> list[str]:
    return sorted(tensors, key=lambda name: (str(tensors[name].file), tensors[name].start))


class _Planner:
    """Plans output tensors into ``plan``: inputs, shapes, resolved parameters, merge functions."""

    def __init__(self, plan: MergekitPlan, extras: dict[str, Any], config: MergeConfig, method: str) -> None:
        self.plan = plan
        self.extras = extras
        self.config = config
        self.method = method
        self.spec = SPECS[method]
        self.labels = {index: str(model.folder) for index, model in plan.models.items()}
        if len(set(self.labels.values())) != len(self.labels):
            self.labels = {index: f"{label} (#{index})" for index, label in self.labels.items()}

    def plan_outside(self, name: str, piece: dict[str, Any]) -> None:
        sources = piece["sources"]
        present = [name in self.plan.models[source["model"]].tensors for source in sources]
        if not any(present) and tensor_position(name, 1).kind == "head":
            return  # mergekit's optional head: tied to the embeddings in these models
        if not all(present):
            missing = self.plan.models[sources[present.index(False)]["model"]].folder
            raise CheckpointError(f"{missing} has no tensor {excerpt(name)}, which the merge takes from the "
                                  f"{'first' if tensor_position(name, 1).kind in _PRE_KINDS else 'last'} slice's models",
                                  "merge models of one architecture (or check the slices' models)")
        self.add(name, [_Input(source["model"], name) for source in sources], piece, 0.0)

    def plan_block(self, piece: dict[str, Any], offset: int, out_layer: int, t: float) -> None:
        sources = piece["sources"]
        names_per_source = []
        for source in sources:
            model = self.plan.models[source["model"]]
            layer = source["layer_range"][0] + offset
            names = model.layers.get(layer, [])
            if not names:
                raise CheckpointError(f"{model.folder} has no tensors of block {layer}",
                                      "check the slice's layer_range against the model")
            names_per_source.append({_renumbered(name, out_layer): name for name in names})
        outputs = list(names_per_source[0])
        for source, names in zip(sources[1:], names_per_source[1:], strict=True):
            if set(names) != set(outputs):
                odd = sorted(set(names) ^ set(outputs))[0]
                raise CheckpointError(
                    f"block {source['layer_range'][0] + offset} of {self.plan.models[source['model']].folder} "
                    f"does not have the tensors of the slice's first model's block (e.g. {excerpt(odd)})",
                    "merge blocks of one architecture in a slice")
        for out_name in outputs:
            self.add(out_name, [_Input(source["model"], names[out_name])
                                for source, names in zip(sources, names_per_source, strict=True)], piece, t)

    def add(self, out_name: str, inputs: list[_Input], piece: dict[str, Any], t: float) -> None:
        plan = self.plan
        infos = [plan.models[item.model].tensors[item.name] for item in inputs]
        position = tensor_position(out_name, plan.num_layers)
        vocabulary = plan.vocabulary is not None and position.kind in ("embedding", "head") and all(
            len(info.shape) >= 1 and info.shape[0] == config_vocab_size(plan.models[item.model].config)
            for item, info in zip(inputs, infos, strict=True))
        first = infos[0]
        for item, info in zip(inputs[1:], infos[1:], strict=True):
            folder = plan.models[item.model].folder
            if info.shape != first.shape and not (vocabulary and info.shape[1:] == first.shape[1:]):
                raise CheckpointError(
                    f"{folder}: tensor {excerpt(item.name, 200)} has shape {list(info.shape)}, "
                    f"{plan.models[inputs[0].model].folder}'s {excerpt(inputs[0].name, 200)} has "
                    f"{list(first.shape)}; they merge into {excerpt(out_name, 200)}",
                    "merge models of one size (a tokenizer_source aligns vocabularies, nothing else)")
            check_same_dtype_class(item.name, info.dtype, first.dtype, folder, plan.models[inputs[0].model].folder)
        shape = (plan.vocabulary.rows, *first.shape[1:]) if vocabulary else tuple(first.shape)
        base_model = piece["base_model"] if piece["base_model"] is not None else self.extras["base_model"]
        order, key = [0], "copy"
        if first.dtype.is_floating_point:
            order, key = self._merge_for(out_name, inputs, piece, t, base_model)
        elif base_model is not None and any(item.model == base_model for item in inputs):
            order = [next(k for k, item in enumerate(inputs) if item.model == base_model)]
        plan.tensors.append(PlannedTensor(out_name, shape, first.dtype, inputs, order, key, position, t,
                                          base_model, vocabulary))

    def _resolve(self, key: str, kind: type, name: str, scopes: list[Any], t: float) -> Any:
        for scope in scopes:
            if isinstance(scope, dict) and key in scope:
                value = evaluate_setting(name, scope[key], t, kind)
                if value is not None:
                    return value
        return None

    def _merge_for(self, out_name: str, inputs: list[_Input], piece: dict[str, Any], t: float,
                   base_model: int | None) -> tuple[list[int], str]:
        shared_scopes = [piece["parameters"], self.extras["parameters"]]
        shared = {}
        for key, kind in self.spec.shared.items():
            value = self._resolve(key, kind, out_name, shared_scopes, t)
            if value is not None:
                shared[key] = value
        per_model = []
        for item in inputs:
            scopes = [source["parameters"] for source in piece["sources"] if source["model"] == item.model]
            resolved = {}
            for key, (kind, scope, default) in self.spec.per_input.items():
                if item.model == base_model and scope != "input":
                    continue
                value = self._resolve(key, kind, item.name, [*scopes, *shared_scopes], t)
                if value is None:
                    value = default  # mergekit's default for a parameter no scope sets
                if value is not None:
                    resolved[key] = value
            per_model.append(resolved)
        if self.method == PASSTHROUGH:
            scale = per_model[0].get("scale")
            key = json.dumps([PASSTHROUGH, scale])
            if key not in self.plan.merges:
                self.plan.merges[key] = _Passthrough(scale)
                self.plan.merge_settings[key] = {"method": PASSTHROUGH, "scale": scale, "tensors": []}
            self.plan.merge_settings[key]["tensors"].append(out_name)
            return [0], key
        labels = [self.labels[item.model] for item in inputs]
        method_base = None if self.spec.base == "ignored" else base_model
        try:
            our_base, our_models, parameters = convert_method(
                self.method, self.labels[method_base] if method_base is not None else None,
                [(label, params) for label, params in zip(labels, per_model, strict=True)], shared)
        except ConfigError as error:
            raise ConfigError(f"{error.problem} (for tensor {excerpt(out_name, 200)}, as mergekit resolves "
                              "its parameters)", error.fix) from None
        order = [labels.index(our_base)] + [labels.index(label) for label, _ in our_models]
        key = json.dumps([self.method, len(our_models), parameters], sort_keys=True)
        if key not in self.plan.merges:
            local = self.config.model_copy(update={"method": self.method, "models": [label for label, _ in our_models],
                                                   "parameters": parameters, "mergekit": None})
            try:
                validated = local.method_parameters()
            except ConfigError as error:
                raise ConfigError(f"{error.problem} (for tensor {excerpt(out_name, 200)}: mergekit resolves its "
                                  f"parameters to {excerpt(parameters, 160)})", error.fix) from None
            self.plan.merges[key] = get_method(self.method)(validated, local, self.plan.num_layers)
            self.plan.merge_settings[key] = {"method": self.method, "parameters": parameters, "tensors": []}
        self.plan.merge_settings[key]["tensors"].append(out_name)
        return order, key


# ------------------------------------------------------------------------------------ merging
def merge_planned(config: MergeConfig, *, overwrite: bool = False, quiet: bool = False,
                  emit_mergekit: Path | None = None) -> MergeResult:
    """:func:`recall_merge.engine.merge` for a config with a ``mergekit`` plan: the same checks,
    temporary folder, report, model card and atomic rename around :func:`stream_plan`."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    output = Path(config.output)
    check_output(output, config, overwrite)
    if config.output_format != "full":
        raise ConfigError("output_format: lora is not available for a mergekit config merged per tensor "
                          "(slices, filters, tokenizer or a float16/bfloat16 dtype)",
                          "leave out output_format, or merge whole models without these options")
    torch.manual_seed(config.seed)
    plan = build_plan(config)
    _check_free_space(output, plan)
    timings["plan_s"] = time.perf_counter() - started
    temp = atomic.temporary_folder_for(output)
    with removed_on_failure(temp, output):
        stage = time.perf_counter()
        files = stream_plan(plan, config, temp, quiet)
        timings["merge_s"] = time.perf_counter() - stage
        _write_support_files(plan, config, temp)
        timings["total_s"] = time.perf_counter() - started
        report = _report(plan, config, files, timings)
        publish(temp, output, report, model_card(report), overwrite=overwrite,
                emit_mergekit=emit_mergekit,
                mergekit_document=to_mergekit_document(config) if emit_mergekit else None)
    return MergeResult(output=output, report=report)


def _check_free_space(output: Path, plan: MergekitPlan) -> None:
    needed = 0
    for tensor in plan.tensors:
        dtype = plan.out_dtype if tensor.stored_dtype.is_floating_point else tensor.stored_dtype
        needed += math.prod(tensor.shape) * torch.empty((), dtype=dtype).element_size()
    check_free_space(output, needed)


def _read(plan: MergekitPlan, item: _Input, rows: tuple[int, int] | None) -> torch.Tensor:
    model = plan.models[item.model]
    if model.adapter is not None:
        return model.adapter.apply(item.name, plan.models[0].checkpoint.get(item.name, rows), rows)
    return model.checkpoint.get(item.name, rows)


def _blocks(plan: MergekitPlan, tensor: PlannedTensor, block_bytes: int) -> list[tuple[int, int] | None]:
    """Row ranges of one output tensor: all at once, or row blocks for an elementwise merge."""
    merge = plan.merges.get(tensor.merge)
    if (merge is None or not merge.is_elementwise() or tensor.vocabulary or len(tensor.shape) < 1
            or tensor.shape[0] < 2):
        return [None]
    row_bytes = 4 * math.prod(tensor.shape[1:]) * len(tensor.inputs)
    if row_bytes * tensor.shape[0] <= block_bytes:
        return [None]
    step = max(1, block_bytes // row_bytes)
    return [(start, min(start + step, tensor.shape[0])) for start in range(0, tensor.shape[0], step)]


def stream_plan(plan: MergekitPlan, config: MergeConfig, folder: Path, quiet: bool) -> list[str]:
    """Merge and write every planned tensor, one at a time (row blocks where elementwise)."""
    def out_dtype(tensor: PlannedTensor) -> torch.dtype:
        return plan.out_dtype if tensor.stored_dtype.is_floating_point else tensor.stored_dtype

    writer = StreamingShardWriter(folder, [(t.name, out_dtype(t), t.shape) for t in plan.tensors],
                                  config.shard_size_bytes(),
                                  metadata={"merged_by": "recall-merge",
                                            "method": plan_method(config)})
    by_name = {tensor.name: tensor for tensor in plan.tensors}
    compute = plan.compute_dtype or torch.float32
    try:
        names = [name for shard in writer.shards for name in shard.names]
        for name in tqdm(names, desc=f"merging ({plan_method(config)}, per tensor)", disable=quiet, unit="tensor"):
            tensor = by_name[name]
            blocks = _blocks(plan, tensor, config.block_size_bytes())
            for rows in blocks:
                merged = _merge_one(plan, tensor, rows, compute)
                if tensor.stored_dtype.is_floating_point:
                    merged = merged.to(plan.out_dtype)
                    check_output_finite(name, merged, config)
                writer.write_part(name, merged.contiguous(), rows is None or rows[1] == tensor.shape[0])
                del merged
        return writer.finish()
    finally:
        writer.abort()


def _merge_one(plan: MergekitPlan, tensor: PlannedTensor, rows: tuple[int, int] | None,
               compute: torch.dtype) -> torch.Tensor:
    if not tensor.stored_dtype.is_floating_point:
        return _read(plan, tensor.inputs[tensor.order[0]], rows)
    values = []
    for item in tensor.inputs:
        value = _read(plan, item, rows)
        check_finite(value, item.name, plan.models[item.model].folder)
        values.append(value.to(compute))  # mergekit loads every input in `dtype`
    if tensor.vocabulary:
        values = permute_rows([(item.model, value) for item, value in zip(tensor.inputs, values, strict=True)],
                              plan.vocabulary, tensor.base_model)
    ordered = [values[k] for k in tensor.order]
    return plan.merges[tensor.merge].merge_tensor(tensor.name, tensor.position, ordered[0], ordered[1:])


def plan_method(config: MergeConfig) -> str:
    return config.mergekit["merge_method"] if config.mergekit else config.method


def _write_support_files(plan: MergekitPlan, config: MergeConfig, folder: Path) -> None:
    """The base's support files as the engine copies them, config.json with the output's number of
    blocks and vocabulary, and the merged tokenizer when the config asks for one (in place of the
    base's tokenizer files)."""
    source = plan.models[0].folder
    copy_support_files(source, folder, config)
    config_path = folder / "config.json"
    if config_path.is_file():
        model_config = json.loads(config_path.read_text())
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if key in model_config:
                model_config[key] = plan.num_layers  # as mergekit: the slices' blocks
                break
        if plan.vocabulary is not None:
            text = model_config.get("text_config")
            block = text if "vocab_size" not in model_config and isinstance(text, dict) else model_config
            block["vocab_size"] = plan.vocabulary.rows
        config_path.write_text(json.dumps(model_config, indent=2))
    if plan.write_tokenizer:
        for name in TOKENIZER_FILES:
            (folder / name).unlink(missing_ok=True)
        if plan.vocabulary is not None:
            tokenizer = plan.vocabulary.tokenizer
        else:
            # chat_template alone: mergekit re-saves the donor's (the base's) tokenizer with it
            tokenizer = load_tokenizer(source, trust_remote_code=config.trust_remote_code, role="the base model")
        save_tokenizer(tokenizer, folder, plan.chat_template)


def _report(plan: MergekitPlan, config: MergeConfig, files: list[str], timings: dict[str, float]) -> dict[str, Any]:
    from recall_merge.io import hub

    extras = config.mergekit
    refs = [config.base, *config.models]
    used = sorted(plan.models)
    report: dict[str, Any] = {
        "method": extras["merge_method"],
        "models": [str(plan.models[index].folder) for index in used],
        "model_kinds": ["base" if index == 0 else "lora" if plan.models[index].adapter else "full" for index in used],
        "hub": [hub.snapshot_record(refs[index]) for index in used],
        "output_format": "full",
        "num_layers": plan.num_layers,
        "seed": config.seed,
        "config": json.loads(config.model_dump_json()),
        "parameters": extras.get("parameters") or {},
        "versions": versions(),
        "output_files": files,
        "mergekit_plan": {
            "compute_dtype": extras["dtype"] or "float32",
            "out_dtype": config.dtype,
            "slices": [{"sources": [{"model": str(plan.models[source["model"]].folder),
                                     "layer_range": source["layer_range"]} for source in piece["sources"]]}
                       for piece in plan.slices],
            "tokenizer": None if plan.vocabulary is None else {
                "source": extras["tokenizer_source"], "vocab_size": len(plan.vocabulary.vocab),
                "rows": plan.vocabulary.rows, "tokens_in_no_model": len(_orphan_tokens(plan.vocabulary))},
            "chat_template": plan.chat_template is not None,
            # each distinct resolved setting and the output tensors merged with it
            "merges": list(plan.merge_settings.values()),
        },
        "run": {"timings": timings, "peak_rss_mb": {"total": peak_rss_mb()}},
    }
    return report


def to_mergekit_document(config: MergeConfig) -> dict[str, Any]:
    """The mergekit config of a planned merge (``--emit-mergekit``): the plan written back with
    the model paths."""
    extras = config.mergekit
    refs = [config.base, *config.models]

    def ref(index: int | None) -> str | None:
        return None if index is None else refs[index]

    def drop_none(mapping: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in mapping.items() if value is not None}

    document: dict[str, Any] = {"merge_method": extras["merge_method"]}
    if extras["base_model"] is not None:
        document["base_model"] = ref(extras["base_model"])
    document["slices"] = [drop_none({
        "sources": [drop_none({"model": ref(source["model"]), "layer_range": source.get("layer_range"),
                               "parameters": source.get("parameters")}) for source in piece["sources"]],
        "base_model": ref(piece.get("base_model")), "parameters": piece.get("parameters")})
        for piece in extras["slices"]]
    if any(source.get("layer_range") is None for piece in extras["slices"] for source in piece["sources"]):
        # a `models:` config: written back as such (its one slice has no layer ranges)
        document["models"] = [drop_none({"model": source["model"], "parameters": source.get("parameters")})
                              for source in document.pop("slices")[0]["sources"]]
    source = extras["tokenizer_source"]
    if source is not None:
        document["tokenizer_source"] = (source if isinstance(source, str)
                                        else ref(source["model"]) if "model" in source else source["path"])
    for key in ("parameters", "chat_template", "dtype", "out_dtype"):
        if extras.get(key) is not None:
            document[key] = extras[key]
    if extras.get("pad_to_multiple_of"):
        document["tokenizer"] = {"source": document.pop("tokenizer_source"),
                                 "pad_to_multiple_of": extras["pad_to_multiple_of"]}
    return document


__all__ = ["MergekitPlan", "PlannedTensor", "build_plan", "merge_planned", "stream_plan"]
