"""Reading and writing mergekit (0.1.5) configurations.

``from_mergekit`` turns a mergekit YAML for one of the shared methods into our config dict, with
the same meaning (defaults, base handling and per-model parameters as mergekit resolves them). What
a whole-model merge cannot express (``slices:``, passthrough, filtered parameters,
``tokenizer_source``, ``chat_template``, a float16/bfloat16 ``dtype``) is kept as mergekit's plan
and merged per output tensor by :mod:`recall_merge.interop.mergekit_plan`; a key that is not
implemented is refused, never ignored.
``to_mergekit`` writes a mergekit config that reproduces a merge made here, including RECALL's
per-block weights, so that ``mergekit-yaml`` rebuilds the same tensors.

How per-block weights are written (checked against mergekit 0.1.5): mergekit reads a gradient
list of m values for block j of L at t = j/(L−1) as value ``t·(m−1)``, so a list with one value
per block gives every block its own weight exactly. Tensors outside the blocks (embeddings, final
norm, head) are all read at t = 0, i.e. block 0's value; RECALL gives the head and final norm the
last block's α, so each tensor outside the blocks gets its own conditional entry
``{filter: <exact tensor name>, value: α}`` ahead of the gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recall_merge.errors import ConfigError, excerpt

if TYPE_CHECKING:
    from recall_merge.config import MergeConfig
    from recall_merge.io.pool import ModelPool
    from recall_merge.methods.base import MergeMethod

# Methods whose mergekit and recall-merge semantics are the same (docs/methods.md).
SHARED_METHODS = ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
                  "breadcrumbs_ties", "della", "della_linear")
# Whole-weight interpolations (not task arithmetic): read and written by their own functions.
SPHERICAL_METHODS = ("slerp", "multislerp")
# mergekit's passthrough (one input per tensor, times an optional scale): the frankenmerge method.
# It exists only for mergekit configs, merged per output tensor by interop/mergekit_plan.py.
PASSTHROUGH = "passthrough"
READ_METHODS = SHARED_METHODS + SPHERICAL_METHODS + (PASSTHROUGH,)
_TOP_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
             "tokenizer_source", "tokenizer", "chat_template", "name"}
# Keys of our own config a user may add to a mergekit file; passed through unchanged.
_OWN_KEYS = {"output", "seed", "shard_size", "device", "allow_pickle", "trust_remote_code", "samples"}
_MODEL_PARAMS = {"weight", "density", "gamma"}
_GLOBAL_PARAMS = _MODEL_PARAMS | {"lambda", "normalize", "rescale", "int8_mask"}
# What a method reads beyond the above: (per-model keys, global keys), as mergekit 0.1.5's specs.
_METHOD_PARAMS: dict[str, tuple[set[str], set[str]]] = {
    "della": ({"epsilon"}, {"epsilon"}), "della_linear": ({"epsilon"}, {"epsilon"}),
}
_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class MethodSpec:
    """What mergekit 0.1.5's ``merge_methods.get(name).spec`` declares: the parameters shared by
    all inputs of a tensor, each input's own parameters with their scope (``input``: the base too;
    ``non_base``: every input but the base) and default, and the structural contract on a tensor's
    inputs. (A weight has no default in mergekit; here it is 1.0 where our methods default it.)"""

    shared: dict[str, type]
    per_input: dict[str, tuple[type, str, float | None]]  # type, scope, default (None: none)
    base: str  # "ignored", "required" or "optional"
    min_inputs: int = 1
    max_inputs: int | None = None


_GTA_SHARED = {"int8_mask": bool, "normalize": bool, "rescale": bool, "lambda": float}
_GTA_INPUT = {"weight": (float, "non_base", None), "density": (float, "non_base", 1.0)}
SPECS: dict[str, MethodSpec] = {
    "linear": MethodSpec({"normalize": bool}, {"weight": (float, "input", None)}, "ignored"),
    **{name: MethodSpec(_GTA_SHARED, _GTA_INPUT, "required")
       for name in ("task_arithmetic", "ties", "dare_linear", "dare_ties")},
    **{name: MethodSpec(_GTA_SHARED, {**_GTA_INPUT, "gamma": (float, "non_base", 0.01)}, "required")
       for name in ("breadcrumbs", "breadcrumbs_ties")},
    **{name: MethodSpec(_GTA_SHARED, {**_GTA_INPUT, "epsilon": (float, "non_base", 0.15)}, "required")
       for name in ("della", "della_linear")},
    "slerp": MethodSpec({"t": float}, {}, "required", min_inputs=2, max_inputs=2),
    "multislerp": MethodSpec({"normalize_weights": bool, "eps": float}, {"weight": (float, "non_base", None)},
                             "optional", min_inputs=1),
    PASSTHROUGH: MethodSpec({}, {"scale": (float, "input", None)}, "ignored", max_inputs=1),
}


# ------------------------------------------------------------------------------ mergekit → ours
def from_mergekit(raw: dict[str, Any]) -> dict[str, Any]:
    """A mergekit config as our config dict. ``output`` is left out unless the file has one (the
    CLI supplies it).

    A config that whole-model merging expresses (``models:``, parameters without filters, no
    tokenizer or chat template, computed in float32) becomes a plain config of the same method. One
    with ``slices:``, ``passthrough``, filtered parameters, ``tokenizer_source``/``tokenizer``,
    ``chat_template`` or a float16/bfloat16 ``dtype`` is kept as mergekit's own plan under the key
    ``mergekit`` (model references as indices into [base, *models]) and merged per output tensor
    by :mod:`recall_merge.interop.mergekit_plan`, as mergekit plans it.

    Raises :class:`ConfigError` for any key or value that is not implemented (never ignored).
    """
    if "modules" in raw:
        raise ConfigError("mergekit `modules:` (per-module merges of multi-module models) is not supported",
                          "merge a single-module model with `models:` or `slices:`, or run this config "
                          "with mergekit-yaml")
    unknown = set(raw) - _TOP_KEYS - _OWN_KEYS
    if unknown:
        raise ConfigError(f"unknown mergekit key(s): {', '.join(sorted(map(str, unknown)))} (not read by "
                          "mergekit 0.1.5 or not implemented here)",
                          f"remove them; a mergekit config here may hold: {', '.join(sorted(_TOP_KEYS))}"
                          f" (and our own keys {', '.join(sorted(_OWN_KEYS))})")
    method = raw.get("merge_method")
    if method not in READ_METHODS:
        raise ConfigError(f"mergekit merge_method {excerpt(method)} has no equivalent in recall-merge",
                          f"use one of {', '.join(READ_METHODS)}, or run it with mergekit-yaml")
    has_models, has_slices = raw.get("models") is not None, raw.get("slices") is not None
    if has_models and has_slices:
        raise ConfigError("the mergekit config has both `models:` and `slices:` (mergekit reads exactly one)",
                          "list whole models under `models:`, or layer ranges under `slices:`, not both")
    if not (raw.get("models") or raw.get("slices")):
        key = "slices" if has_slices else "models"
        raise ConfigError(f"the mergekit config has no `{key}:` entries",
                          "list the models to merge under `models:` (or layer ranges under `slices:`)")
    compute_dtype = _dtype_name(raw.get("dtype"), "dtype")
    out_dtype = _dtype_name(raw.get("out_dtype"), "out_dtype")
    tokenizer = _tokenizer_setting(raw)
    chat_template = raw.get("chat_template")
    if chat_template is not None:
        from recall_merge.io.tokenizer_merge import check_chat_template

        check_chat_template(chat_template)
    if (has_slices or method == PASSTHROUGH or tokenizer is not None or chat_template is not None
            or compute_dtype in ("float16", "bfloat16") or _has_filters(raw)):
        return _planned_config(raw, method, compute_dtype, out_dtype, tokenizer)
    model_keys, global_keys = _METHOD_PARAMS.get(method, (set(), set()))

    base_ref = _model_ref(raw["base_model"], None) if raw.get("base_model") else None
    models: list[tuple[str, dict[str, Any]]] = []
    for entry in raw["models"]:
        entry = _model_entry(entry, {"model", "parameters"}, "models")
        params = dict(entry.get("parameters") or {})
        bad = set(params) - _MODEL_PARAMS - model_keys
        if bad:
            raise ConfigError(f"per-model parameter(s) {sorted(bad)} are not supported",
                              f"per-model parameters here: {', '.join(sorted(_MODEL_PARAMS | model_keys))}")
        models.append((_model_ref(entry["model"], base_ref), params))
    shared = dict(raw.get("parameters") or {})
    if method in SPHERICAL_METHODS:
        base_ref, models, parameters = _spherical_parameters(method, base_ref, models, shared)
    else:
        bad = set(shared) - _GLOBAL_PARAMS - global_keys
        if bad:
            raise ConfigError(f"mergekit parameter(s) {sorted(bad)} are not supported for {method}",
                              f"supported: {', '.join(sorted(_GLOBAL_PARAMS | global_keys))}")
        base_ref, models, parameters = _classic_parameters(method, base_ref, models, shared)
    return _top_level(raw, {"method": method}, base_ref, models, parameters)


def convert_method(method: str, base_ref: str | None, models: list[tuple[str, dict[str, Any]]],
                   shared: dict[str, Any]) -> tuple[str, list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """(our base, our experts, our parameters) of one mergekit method over ``models`` (reference,
    per-model parameters) with ``shared`` parameters: the mapping ``from_mergekit`` applies to a
    whole config, applied by the per-tensor plan to the resolved values of one tensor."""
    if method in SPHERICAL_METHODS:
        return _spherical_parameters(method, base_ref, models, shared)
    return _classic_parameters(method, base_ref, models, shared)


def _classic_parameters(
    method: str, base_ref: str | None, models: list[tuple[str, dict[str, Any]]], shared: dict[str, Any]
) -> tuple[str, list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    shared = dict(shared)
    shared.pop("int8_mask", None)  # only the mask's storage type; the result is the same

    def setting(params: dict[str, Any], key: str) -> Any:
        # mergekit precedence: the model's own parameters, then the global ones.
        value = params.get(key, shared.get(key))
        return None if value is None else _plain_setting(value, key)

    parameters: dict[str, Any] = {}
    if method == "linear":
        # mergekit's linear averages the base in when base_model is set (it must then have a weight).
        if base_ref is None:
            base_ref, base_params = models.pop(0)
        else:
            listed = [params for ref, params in models if ref == base_ref]
            base_params = listed[0] if listed else {}
            models = [(ref, params) for ref, params in models if ref != base_ref]
        base_weight = setting(base_params, "weight")
        if base_weight is None:
            raise ConfigError(f"the base {base_ref!r} of a mergekit linear merge has no weight",
                              "give it `parameters: {weight: ...}` (mergekit requires one too)")
        parameters.update(include_base=True, base_weight=base_weight)
    else:
        if base_ref is None:
            raise ConfigError(f"mergekit {method} needs `base_model:`", "add `base_model: PATH`")
        # The base listed among the models is the base, not an expert (as in mergekit).
        models = [(ref, params) for ref, params in models if ref != base_ref]
    if not models:
        raise ConfigError("the mergekit config merges no model besides the base",
                          "list at least one fine-tuned model under `models:`")

    weights = [setting(params, "weight") for _, params in models]
    if method == "linear" and any(w is None for w in weights):
        raise ConfigError("every model of a mergekit linear merge needs a weight",
                          "give each model `parameters: {weight: ...}` or set a global weight")
    if any(w is not None for w in weights):
        parameters["weights"] = [1.0 if w is None else w for w in weights]
    for key in ("density", "gamma", "epsilon"):
        values = [setting(params, key) for _, params in models]
        if all(v is None for v in values):
            continue
        # a model without the setting gets mergekit's default (density 1, gamma 0.01, epsilon 0.15)
        default = SPECS[method].per_input[key][2] if key in SPECS[method].per_input else None
        filled = [default if v is None else v for v in values]
        if all(isinstance(v, (int, float)) and v == filled[0] for v in filled):
            parameters[key] = float(filled[0])
        else:
            if any(v is None for v in filled):
                raise ConfigError(f"{key} is set for some models only", f"give every model a {key}")
            parameters[key] = filled
    for key in ("lambda", "normalize", "rescale"):
        if key in shared:
            value = _plain_setting(shared[key], key)
            if isinstance(value, list):
                raise ConfigError(f"a gradient for {key!r} is not supported", f"give {key} one value")
            parameters[key] = value
    return base_ref, models, parameters


def _model_entry(entry: Any, allowed: set[str], where: str) -> dict[str, Any]:
    """One entry of ``models:`` or of a slice's ``sources:`` as a mapping with ``model``."""
    if isinstance(entry, str) and where == "models":
        entry = {"model": entry}
    if not isinstance(entry, dict) or "model" not in entry:
        raise ConfigError(f"mergekit {where} entry {excerpt(entry)} has no `model:`",
                          "write each entry as `- model: PATH` with optional `parameters:`"
                          + (" and `layer_range: [START, END]`" if where != "models" else ""))
    extra = set(entry) - allowed
    if extra:
        raise ConfigError(f"mergekit {where} entry has unsupported key(s) {sorted(map(str, extra))}",
                          f"keep only {', '.join(f'`{key}:`' for key in sorted(allowed))}")
    return entry


def _dtype_name(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if str(value) not in _DTYPES:
        raise ConfigError(f"mergekit {key} {excerpt(value)} is not supported",
                          f"use one of {', '.join(sorted(set(_DTYPES.values())))}")
    return _DTYPES[str(value)]


def _tokenizer_setting(raw: dict[str, Any]) -> tuple[Any, int | None] | None:
    """(source, pad_to_multiple_of) from ``tokenizer_source`` or ``tokenizer:``, or None."""
    source, pad = raw.get("tokenizer_source"), None
    if raw.get("tokenizer") is not None:
        if source is not None:
            raise ConfigError("the mergekit config sets both `tokenizer_source:` and `tokenizer:`",
                              "keep one (mergekit refuses both too)")
        block = raw["tokenizer"]
        if not isinstance(block, dict):
            raise ConfigError(f"mergekit `tokenizer:` must be a mapping, not {excerpt(block)}",
                              "write `tokenizer: {source: union}` or use `tokenizer_source:`")
        if block.get("tokens"):
            raise ConfigError("mergekit `tokenizer.tokens:` (per-token embedding sources) is not supported",
                              "remove `tokens:` (new tokens then get mergekit's default rows), or run "
                              "this config with mergekit-yaml")
        extra = set(block) - {"source", "tokens", "pad_to_multiple_of"}
        if extra:
            raise ConfigError(f"unknown key(s) {sorted(map(str, extra))} under mergekit `tokenizer:`",
                              "keep `source:` and `pad_to_multiple_of:`")
        source = block.get("source", "union")  # mergekit's default
        pad = block.get("pad_to_multiple_of")
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 1):
            raise ConfigError(f"tokenizer.pad_to_multiple_of {excerpt(pad)} is not a positive whole number",
                              "give a whole number such as 64, or remove it")
    if source is None:
        return None
    if isinstance(source, str) and not source.strip():
        raise ConfigError("mergekit tokenizer_source is empty", "use base, union or a model path")
    return source, pad


def _is_conditional(value: Any) -> bool:
    return isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value))


def _has_filters(raw: dict[str, Any]) -> bool:
    """True when a parameter anywhere holds a conditional value that is not one catch-all (the
    only kind a whole-model merge can express)."""
    blocks = [raw.get("parameters")] + [entry.get("parameters") for entry in raw.get("models") or []
                                        if isinstance(entry, dict)]
    for block in blocks:
        for value in (block or {}).values() if isinstance(block, dict) else ():
            if not _is_conditional(value):
                continue
            entries = value if isinstance(value, list) else [value]
            if len(entries) != 1 or not isinstance(entries[0], dict) or entries[0].get("filter") not in (None, "*"):
                return True
    return False


def _planned_config(raw: dict[str, Any], method: str, compute_dtype: str | None, out_dtype: str | None,
                    tokenizer: tuple[Any, int | None] | None) -> dict[str, Any]:
    """Our config for a mergekit config merged per output tensor: the models as base/models, and
    mergekit's plan, checked here, under ``mergekit`` (see :func:`from_mergekit`)."""
    spec = SPECS[method]
    refs: list[str] = []

    def index(ref: str) -> int:
        if ref not in refs:
            refs.append(ref)
        return refs.index(ref)

    base_ref = _model_ref(raw["base_model"], None) if raw.get("base_model") else None
    base = index(base_ref) if base_ref is not None else None
    check_settings(raw.get("parameters"), method, "parameters", per_input=False)
    slices: list[dict[str, Any]] = []
    if raw.get("models") is not None:
        if not isinstance(raw["models"], list):
            raise ConfigError("mergekit `models:` must be a list", "write `models:` as a list of `- model: PATH`")
        sources = []
        for k, entry in enumerate(raw["models"]):
            entry = _model_entry(entry, {"model", "parameters"}, "models")
            check_settings(entry.get("parameters"), method, f"models[{k}].parameters", per_input=True)
            sources.append({"model": index(_model_ref(entry["model"], base_ref)), "layer_range": None,
                            "parameters": entry.get("parameters")})
        if base is not None and all(source["model"] != base for source in sources):
            # mergekit adds a base missing from `models:` as one more input without parameters
            sources.append({"model": base, "layer_range": None, "parameters": None})
        slices.append({"sources": sources, "base_model": None, "parameters": None})
    else:
        if not isinstance(raw["slices"], list):
            raise ConfigError("mergekit `slices:` must be a list", "write each slice as `- sources: [...]`")
        for s, entry in enumerate(raw["slices"]):
            slices.append(_read_slice(entry, s, method, base_ref, index))
    for s, piece in enumerate(slices):
        _check_contract(method, spec, piece, base, f"slices[{s}]" if raw.get("slices") else "models")

    tokenizer_source: Any = None
    pad_to_multiple_of = None
    if tokenizer is not None:
        source, pad_to_multiple_of = tokenizer
        if source in ("base", "union"):
            tokenizer_source = source
        else:
            ref = _model_ref(source, base_ref)
            tokenizer_source = {"model": refs.index(ref)} if ref in refs else {"path": ref}
    extras = {
        "merge_method": method, "base_model": base, "slices": slices, "parameters": raw.get("parameters"),
        "tokenizer_source": tokenizer_source, "pad_to_multiple_of": pad_to_multiple_of,
        "chat_template": raw.get("chat_template"), "dtype": compute_dtype, "out_dtype": out_dtype,
    }
    out: dict[str, Any] = {
        # passthrough is not one of our methods: linear stands in for the config's schema only
        "method": method if method != PASSTHROUGH else "linear",
        "base": refs[0],
        # our config needs one model; a frankenmerge of one model lists it twice (index 1 unused)
        "models": refs[1:] or [refs[0]],
        "parameters": {},
        "mergekit": extras,
    }
    dtype = out_dtype or compute_dtype
    if dtype is not None:
        out["dtype"] = dtype
    out.update({key: raw[key] for key in _OWN_KEYS if key in raw})
    return out


def _read_slice(entry: Any, s: int, method: str, base_ref: str | None, index: Any) -> dict[str, Any]:
    where = f"slices[{s}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("sources"), list) or not entry["sources"]:
        raise ConfigError(f"mergekit {where} has no `sources:` list",
                          "write each slice as `- sources: [{model: PATH, layer_range: [START, END]}]`")
    extra = set(entry) - {"sources", "base_model", "parameters", "residual_weight"}
    if extra:
        raise ConfigError(f"mergekit {where} has unsupported key(s) {sorted(map(str, extra))}",
                          "keep `sources:`, `base_model:` and `parameters:`")
    if entry.get("residual_weight") is not None:
        raise ConfigError(f"mergekit {where}.residual_weight is not supported (mergekit 0.1.5 accepts it "
                          "but never reads it)", "remove residual_weight")
    check_settings(entry.get("parameters"), method, f"{where}.parameters", per_input=False)
    sources = []
    for k, source in enumerate(entry["sources"]):
        source = _model_entry(source, {"model", "layer_range", "parameters"}, f"{where}.sources")
        layer_range = source.get("layer_range")
        if (not isinstance(layer_range, list | tuple) or len(layer_range) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in layer_range)
                or not 0 <= layer_range[0] < layer_range[1]):
            raise ConfigError(f"mergekit {where}.sources[{k}].layer_range {excerpt(layer_range)} is not "
                              "[START, END] with 0 <= START < END",
                              "give the half-open block range to take, e.g. layer_range: [0, 16]")
        check_settings(source.get("parameters"), method, f"{where}.sources[{k}].parameters", per_input=True)
        sources.append({"model": index(_model_ref(source["model"], base_ref)),
                        "layer_range": [int(v) for v in layer_range], "parameters": source.get("parameters")})
    lengths = {source["layer_range"][1] - source["layer_range"][0] for source in sources}
    if len(lengths) != 1:
        raise ConfigError(f"the sources of mergekit {where} span different numbers of blocks "
                          f"({sorted(lengths)})", "give every source of a slice a layer range of the same length")
    slice_base = _model_ref(entry["base_model"], base_ref) if entry.get("base_model") else None
    return {"sources": sources, "base_model": index(slice_base) if slice_base is not None else None,
            "parameters": entry.get("parameters")}


def _check_contract(method: str, spec: MethodSpec, piece: dict[str, Any], base: int | None, where: str) -> None:
    """mergekit's InputContract for the inputs of one slice (checked before any weight is read)."""
    inputs = [source["model"] for source in piece["sources"]]
    if len(set(inputs)) != len(inputs):
        raise ConfigError(f"a model is listed twice among the sources of {where} (mergekit refuses "
                          "duplicate inputs)", "list each model once per slice")
    slice_base = piece["base_model"] if piece["base_model"] is not None else base
    if spec.base == "ignored":
        slice_base = None
    has_base = slice_base is not None and slice_base in inputs
    if slice_base is not None and not has_base:
        raise ConfigError(f"the base model of {where} is not among its sources ({method} reads it there)",
                          "add the base model to the slice's sources with the same layer_range")
    if spec.base == "required" and not has_base:
        raise ConfigError(f"mergekit {method} needs `base_model:` among the inputs of {where}",
                          "add `base_model: PATH` (and list it among the sources of each slice)")
    if len(inputs) < spec.min_inputs or (spec.max_inputs is not None and len(inputs) > spec.max_inputs):
        wanted = (f"exactly {spec.max_inputs}" if spec.max_inputs == spec.min_inputs
                  else f"at most {spec.max_inputs}" if spec.max_inputs is not None else f"at least {spec.min_inputs}")
        raise ConfigError(f"mergekit {method} takes {wanted} input(s) per tensor; {where} has {len(inputs)}",
                          "passthrough takes one source per slice (stack slices for a frankenmerge)"
                          if method == PASSTHROUGH else f"give {where} {wanted} source(s)")
    if method == "multislerp" and len(inputs) - int(has_base) < 1:
        raise ConfigError(f"mergekit multislerp needs a model besides the base in {where}",
                          "list at least one more model")


def check_settings(block: Any, method: str, where: str, *, per_input: bool) -> None:
    """Refuse a parameter the method does not read, and a value that is not a number, a bool (for
    the switches), a gradient list, or conditional entries ``{filter: TEXT, value: ...}``."""
    if block is None:
        return
    if not isinstance(block, dict):
        raise ConfigError(f"mergekit {where} must be a mapping of parameter names to values, not "
                          f"{excerpt(block)}", "write it as `weight: 0.5` lines")
    spec = SPECS[method]
    allowed = dict(spec.per_input.items()) if per_input else {**spec.per_input, **spec.shared}
    for key, value in block.items():
        if key not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(f"mergekit parameter {excerpt(key)} in {where} is not read by {method}",
                              f"parameters {method} reads {'per model' if per_input else 'here'}: {names}"
                              + (" (t is one value for both models, under the top-level `parameters:`)"
                                 if method == "slerp" and key == "t" else ""))
        kind = allowed[key][0] if isinstance(allowed[key], tuple) else allowed[key]
        _check_setting(value, kind, f"{where}.{key}")


def _check_setting(value: Any, kind: type, where: str) -> None:
    def check_value(item: Any) -> None:
        if isinstance(item, list):
            if not item or not all(_scalar_ok(v, kind) for v in item):
                raise ConfigError(f"mergekit {where}: gradient {excerpt(item)} is not a non-empty list of "
                                  f"{'numbers' if kind is float else 'true/false values'}",
                                  "write it like [0.0, 0.5, 1.0]")
        elif not _scalar_ok(item, kind):
            raise ConfigError(f"mergekit {where} is {excerpt(item)}, not "
                              f"{'a number' if kind is float else 'true or false'}",
                              "give a number, a list of numbers (a gradient) or filtered entries"
                              if kind is float else "give true or false")

    if not _is_conditional(value):
        check_value(value)
        return
    entries = value if isinstance(value, list) else [value]
    for entry in entries:
        if not isinstance(entry, dict) or "value" not in entry or set(entry) - {"filter", "value"}:
            raise ConfigError(f"mergekit {where}: entry {excerpt(entry)} is not `{{filter: TEXT, value: ...}}`",
                              "write conditional values as a list of {filter: NAME_PART, value: V}, the "
                              "last one without filter as the default")
        if entry.get("filter") is not None and not isinstance(entry["filter"], str):
            raise ConfigError(f"mergekit {where}: filter {excerpt(entry['filter'])} is not text",
                              "a filter is a substring of tensor names, e.g. self_attn or mlp")
        check_value(entry["value"])


def _scalar_ok(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, str):
        # YAML reads 1e-8 (no dot) as text; mergekit's pydantic reads it as a number
        try:
            return math.isfinite(float(value))
        except ValueError:
            return False
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def evaluate_setting(tensor_name: str, setting: Any, t: float, kind: type) -> Any:
    """mergekit 0.1.5's ``evaluate_setting``: the first conditional entry whose filter is absent,
    ``*`` or a substring of ``tensor_name`` (None when none matches), a gradient read at ``t``
    (numbers interpolated between neighbours, switches stepped), or the value itself."""
    def validate(value: Any) -> Any:
        return value if kind is bool else float(value)

    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, bool | int | float | str):
        return validate(setting)
    if not setting:
        return None
    if all(not isinstance(entry, dict) for entry in setting):
        values = [validate(entry) for entry in setting]
        if kind is bool:
            return values[int(t * (len(values) - 1))]
        scaled = t * (len(values) - 1)
        i0 = int(scaled)
        i1 = min(len(values) - 1, i0 + 1)
        frac = scaled - i0
        return validate((1 - frac) * values[i0] + frac * values[i1])
    for entry in setting:
        pattern = entry.get("filter")
        if pattern is None or pattern == "*" or (tensor_name and pattern in tensor_name):
            return evaluate_setting(tensor_name, entry["value"], t, kind)
    return None


def _top_level(raw: dict[str, Any], out: dict[str, Any], base_ref: str | None,
               models: list[tuple[str, dict[str, Any]]], parameters: dict[str, Any]) -> dict[str, Any]:
    """``out`` completed with the base, the models, the parameters and the top-level keys."""
    out["base"] = base_ref
    out["models"] = [ref for ref, _ in models]
    dtype = _dtype_name(raw.get("out_dtype"), "out_dtype") or _dtype_name(raw.get("dtype"), "dtype")
    if dtype is not None:
        out["dtype"] = dtype
    out["parameters"] = parameters
    out.update({key: raw[key] for key in _OWN_KEYS if key in raw})
    return out


def _spherical_parameters(
    method: str, base_ref: str | None, models: list[tuple[str, dict[str, Any]]], shared: dict[str, Any]
) -> tuple[str, list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """(base, models, our parameters) of a mergekit slerp or multislerp config."""
    # mergekit's slerp takes one shared t; multislerp a weight per model and two shared options.
    allowed_models, allowed_global = (set(), {"t"}) if method == "slerp" else \
        ({"weight"}, {"weight", "normalize_weights", "eps"})
    bad = set(shared) - allowed_global
    if bad:
        raise ConfigError(f"mergekit parameter(s) {sorted(bad)} are not read by {method}",
                          f"{method} takes: {', '.join(sorted(allowed_global))}")
    for ref, params in models:
        bad = set(params) - allowed_models
        if bad:
            raise ConfigError(f"per-model parameter(s) {sorted(bad)} of {ref!r} are not read by {method}",
                              f"per-model parameters of {method}: {', '.join(sorted(allowed_models)) or 'none'}"
                              + (" (t is one value for both models, under the top-level `parameters:`)"
                                 if method == "slerp" else ""))
    parameters: dict[str, Any] = {}
    if method == "slerp":
        if base_ref is None:
            raise ConfigError("mergekit slerp needs `base_model:` (t = 0 is the base)", "add `base_model: PATH`")
        others = [(ref, params) for ref, params in models if ref != base_ref]
        if len(others) != 1:
            raise ConfigError(f"mergekit slerp interpolates the base and one other model; this config "
                              f"lists {len(others)} besides the base",
                              "list base_model and exactly one other model under `models:`")
        if "t" not in shared:
            raise ConfigError("mergekit slerp needs `parameters: {t: ...}` (mergekit has no default)",
                              "add t between 0 (the base) and 1 (the other model), e.g. t: 0.5")
        parameters["t"] = _plain_setting(shared["t"], "t")
        return base_ref, others, parameters

    def weight_of(params: dict[str, Any]) -> Any:
        value = params.get("weight", shared.get("weight"))
        return None if value is None else _plain_setting(value, "weight")

    if base_ref is None:
        # No origin in mergekit: every model is interpolated around 0. Here the first model is
        # the base (architecture, tokenizer) and is interpolated as one more model.
        if not models:
            raise ConfigError("the mergekit config has no `models:`", "list the models to merge under `models:`")
        (base_ref, base_params), *others = models
        base_weight = weight_of(base_params)
        parameters.update(include_base=True, base_weight=1.0 if base_weight is None else base_weight)
    else:
        others = [(ref, params) for ref, params in models if ref != base_ref]
    if not others:
        raise ConfigError("the mergekit config merges no model besides the base",
                          "list at least one more model under `models:`")
    weights = [weight_of(params) for _, params in others]
    if any(w is not None for w in weights):
        parameters["weights"] = [1.0 if w is None else w for w in weights]
    for key in ("normalize_weights", "eps"):
        if key in shared:
            value = _plain_setting(shared[key], key)
            if isinstance(value, list):
                raise ConfigError(f"a gradient for {key!r} is not supported", f"give {key} one value")
            parameters[key] = value
    return base_ref, others, parameters


def _model_ref(ref: Any, base_ref: str | None) -> str:
    """A mergekit model reference as a path. ``BASE+ADAPTER`` (a LoRA on the base) → the adapter
    folder, which the pool reads as a LoRA expert of our base."""
    if isinstance(ref, dict):
        if ref.get("lora"):
            return _model_ref(f"{ref['model']}+{ref['lora']}", base_ref)
        ref = ref.get("model")
    text = str(ref)
    if "+" in text:
        model, adapter = text.split("+", 1)
        if base_ref is None or model != base_ref:
            raise ConfigError(f"LoRA reference {text!r} is not on the base model",
                              "write it as BASE+ADAPTER with BASE equal to base_model")
        return adapter
    return text


def _plain_setting(value: Any, key: str) -> Any:
    """A number, bool or gradient list; a conditional value only as one catch-all entry (configs
    with real filters are merged per tensor and never reach this)."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        catch_all = [v for v in value if v.get("filter") in (None, "*")]
        if len(value) > 1 or not catch_all:
            raise ConfigError(f"filtered values for {key!r} are not supported",
                              "give one value (or gradient) for all tensors")
        return _plain_setting(catch_all[0]["value"], key)
    if isinstance(value, list):
        if not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"gradient for {key!r} must be a non-empty list of numbers (got {value!r})",
                              "write it like [0.0, 0.5, 1.0]")
        return [float(v) for v in value]
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return value if isinstance(value, bool) else float(value)
    if isinstance(value, str) and _scalar_ok(value, float):
        return float(value)  # YAML reads 1e-8 (no dot) as text; mergekit reads it as a number
    raise ConfigError(f"mergekit parameter {key!r} has an unsupported value {value!r}",
                      "give a number or a list of numbers")


# ------------------------------------------------------------------------------ ours → mergekit
def recall_alpha_to_mergekit(
    alpha_per_layer: Sequence[Sequence[float]],
    base: str,
    models: Sequence[str],
    *,
    include_base: bool = True,
    outside_blocks: dict[str, Sequence[float]] | None = None,
    variant: str = "paper",
    scale: float = 1.0,
    dtype: str = "float32",
) -> dict[str, Any]:
    """A mergekit config that reproduces θ_j = Σ_k α_j^(k) θ_j^(k) (``variant="paper"``).

    ``alpha_per_layer`` (L, N+1): α over M_0 (base), M_1..M_N for each block. ``models`` are the
    mergekit references of M_1..M_N (a LoRA expert as ``BASE+ADAPTER``). ``outside_blocks`` maps
    the exact name of each tensor outside the blocks to its α (N+1); without it those tensors get
    block 0's α (mergekit's t = 0). ``variant="task_vector"`` writes
    θ = θ_base + λ·N·Σ_k ᾱ^(k) τ^(k), ᾱ = α over the experts renormalised, as task_arithmetic.
    """
    alphas = [[float(a) for a in row] for row in alpha_per_layer]
    outside = {name: [float(a) for a in row] for name, row in (outside_blocks or {}).items()}
    num_models = len(models) + 1
    if any(len(row) != num_models for row in [*alphas, *outside.values()]):
        raise ValueError(f"every α row needs {num_models} entries (base and {len(models)} models)")

    if variant == "task_vector":
        def transform(row: list[float]) -> list[float]:
            total = sum(row[1:])
            return [0.0] + [scale * len(models) * a / total for a in row[1:]]
        alphas = [transform(row) for row in alphas]
        outside = {name: transform(row) for name, row in outside.items()}
        included = list(range(1, num_models))
    elif variant == "paper":
        included = list(range(num_models)) if include_base else list(range(1, num_models))
    else:
        raise ConfigError(f"unknown RECALL variant {variant!r}", "use paper or task_vector")

    refs = [base, *models]
    entries = []
    for k in included:
        conditional: list[dict[str, Any]] = [
            {"filter": name, "value": row[k]} for name, row in sorted(outside.items())
        ]
        gradient = [row[k] for row in alphas]
        conditional.append({"value": gradient if len(gradient) > 1 else gradient[0]})
        entries.append({"model": refs[k], "parameters": {"weight": conditional}})

    document: dict[str, Any] = {"models": entries}
    if variant == "task_vector":
        document.update(merge_method="task_arithmetic", base_model=base,
                        parameters={"normalize": False, "lambda": 1.0})
    else:
        # α already sums to 1 per block: no renormalisation, so mergekit computes Σ α θ exactly.
        document.update(merge_method="linear", parameters={"normalize": False})
    document["dtype"] = "float32"
    if dtype != "float32":
        document["out_dtype"] = dtype
    return document


def spherical_to_mergekit(
    method: str, parameters: dict[str, Any], base: str, models: Sequence[str], dtype: str = "float32"
) -> dict[str, Any]:
    """The mergekit config of a slerp or multislerp merge (``parameters`` as in our config)."""
    document: dict[str, Any] = {"merge_method": method}
    if method == "slerp":
        document.update(base_model=base, models=[{"model": base}, {"model": models[0]}],
                        parameters={"t": parameters["t"]})
    else:
        weights = parameters.get("weights") or [1.0] * len(models)
        entries = [{"model": ref, "parameters": {"weight": w}} for ref, w in zip(models, weights, strict=True)]
        if parameters.get("include_base"):
            # mergekit without base_model interpolates every listed model around 0.
            entries.insert(0, {"model": base, "parameters": {"weight": parameters.get("base_weight", 1.0)}})
        else:
            document["base_model"] = base
        document["models"] = entries
        document["parameters"] = {"normalize_weights": parameters.get("normalize_weights", True),
                                  "eps": parameters.get("eps", 1e-8)}
    document["dtype"] = "float32"
    if dtype != "float32":
        document["out_dtype"] = dtype
    return document


def classic_to_mergekit(
    method: str, parameters: dict[str, Any], base: str, models: Sequence[str], dtype: str = "float32"
) -> dict[str, Any]:
    """The mergekit config of a classic merge (``parameters`` as in our config, aliases used)."""
    if method not in SHARED_METHODS:
        raise ConfigError(f"method {excerpt(method)} has no mergekit equivalent",
                          f"--emit-mergekit works for recall and {', '.join(SHARED_METHODS)}")
    if parameters.get("majority_sign_method", "sum") != "sum" or parameters.get("rescale_norm", "l1") != "l1":
        raise ConfigError("majority_sign_method count / rescale_norm other than l1 are not in mergekit",
                          "use the defaults to emit a mergekit config")
    if parameters.get("lines") is not None:
        # mergekit's lambda is one number, and folding the ramp into the weights is not exact:
        # where the merge divides by the weight sum (TIES, normalize) a common factor cancels.
        raise ConfigError(
            f"parameters.lines (LiNeS' per-block scale) has no mergekit equivalent for {method}",
            "leave out --emit-mergekit, or merge with a single parameters.lambda instead of lines")
    n = len(models)

    def per_model(key: str, default: Any) -> list[Any]:
        value = parameters.get(key)
        if value is None:
            return [default] * n
        return list(value) if isinstance(value, list) else [value] * n

    weights = per_model("weights", 1.0)
    densities = per_model("density", None)
    gammas = per_model("gamma", None)
    epsilons = per_model("epsilon", None)
    entries: list[dict[str, Any]] = []
    if method == "linear" and parameters.get("include_base"):
        entries.append({"model": base, "parameters": {"weight": parameters.get("base_weight", 1.0)}})
    for k, ref in enumerate(models):
        params: dict[str, Any] = {"weight": weights[k]}
        if method not in ("linear", "task_arithmetic") and densities[k] is not None:
            params["density"] = densities[k]
        if method.startswith("breadcrumbs") and gammas[k] is not None:
            params["gamma"] = gammas[k]
        if method.startswith("della") and epsilons[k] is not None:
            params["epsilon"] = epsilons[k]
        entries.append({"model": ref, "parameters": params})
    shared: dict[str, Any] = {}
    for key in ("normalize", "rescale"):
        if parameters.get(key) is not None:
            shared[key] = parameters[key]
    if method != "linear":
        shared["lambda"] = parameters.get("lambda", 1.0)
    document: dict[str, Any] = {"merge_method": method, "models": entries}
    if method != "linear":
        # (linear gets no base_model: mergekit would average the base in; include_base lists it)
        document["base_model"] = base
    if shared:
        document["parameters"] = shared
    document["dtype"] = "float32"
    if dtype != "float32":
        document["out_dtype"] = dtype
    return document


def to_mergekit(method: MergeMethod, config: MergeConfig, pool: ModelPool) -> dict[str, Any]:
    """The mergekit config that reproduces the merge just made (``recall merge --emit-mergekit``)."""
    from recall_merge.io.pool import tensor_position
    from recall_merge.methods.base import TensorPosition

    base = str(pool.base.folder)
    models = [f"{base}+{expert.folder}" if expert.is_lora else str(expert.folder) for expert in pool.experts]
    if method.name in SPHERICAL_METHODS:
        params = config.method_parameters().model_dump(by_alias=True)
        return spherical_to_mergekit(method.name, params, base, models, config.dtype)
    if method.name != "recall":
        params = config.method_parameters().model_dump(by_alias=True)
        return classic_to_mergekit(method.name, params, base, models, config.dtype)

    alpha_per_layer = getattr(method, "alpha_per_layer", None)
    if alpha_per_layer is None:
        raise ConfigError("RECALL has no weights to emit", "emit the mergekit config after the planning pass")
    outside: dict[str, list[float]] = {}
    for name in pool.tensor_names:
        position = tensor_position(name, pool.num_layers)
        if position.kind != "block":
            alpha = method.alpha_for(TensorPosition(position.kind, None, position.depth))
            outside[name] = [float(a) for a in alpha]
    params = method.parameters
    if params.variant == "ties" or params.strength != "none":
        raise ConfigError(
            f"RECALL's {params.variant} variant with strength {params.strength!r} has no mergekit "
            "equivalent (per-layer TIES weights and per-layer λ cannot be expressed there)",
            "emit mergekit configs for variant paper or task_vector with strength none")
    return recall_alpha_to_mergekit(
        alpha_per_layer.tolist(), base, models, include_base=params.include_base, outside_blocks=outside,
        variant=params.variant, scale=params.scale, dtype=config.dtype,
    )


def write_mergekit_yaml(document: dict[str, Any], path: str | Path) -> Path:
    """Write ``document`` as YAML (floats in full precision, so weights round-trip exactly)."""
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path
