"""Reading and writing mergekit (0.1.5) configurations.

``from_mergekit`` turns a mergekit YAML for one of the shared methods into our config dict, with
the same meaning (defaults, base handling and per-model parameters as mergekit resolves them).
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

from collections.abc import Sequence
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
_TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype",
             "tokenizer_source", "name"}
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


# ------------------------------------------------------------------------------ mergekit → ours
def from_mergekit(raw: dict[str, Any]) -> dict[str, Any]:
    """A mergekit config (``merge_method``, ``base_model``, ``models``, ``parameters``, ``dtype``)
    as our config dict. ``output`` is left out unless the file has one (the CLI supplies it).

    Raises :class:`ConfigError` for what has no equivalent here (slices, filters, other methods).
    """
    for key in ("slices", "modules"):
        if key in raw:
            raise ConfigError(f"mergekit `{key}:` is not supported (recall-merge merges whole models)",
                              "list whole models under `models:`, or run this config with mergekit-yaml")
    for key in ("tokenizer", "chat_template"):
        if key in raw:
            raise ConfigError(f"mergekit `{key}:` is not supported",
                              "remove it: the base model's tokenizer and chat template are copied")
    unknown = set(raw) - _TOP_KEYS - _OWN_KEYS
    if unknown:
        raise ConfigError(f"unknown mergekit key(s): {', '.join(sorted(unknown))}",
                          f"a mergekit config here may hold: {', '.join(sorted(_TOP_KEYS))}")
    method = raw.get("merge_method")
    if method not in SHARED_METHODS + SPHERICAL_METHODS:
        raise ConfigError(f"mergekit merge_method {excerpt(method)} has no equivalent in recall-merge",
                          f"use one of {', '.join(SHARED_METHODS + SPHERICAL_METHODS)}, or run it "
                          "with mergekit-yaml")
    model_keys, global_keys = _METHOD_PARAMS.get(method, (set(), set()))

    base_ref = _model_ref(raw["base_model"], None) if raw.get("base_model") else None
    entries = raw.get("models") or []
    if not entries:
        raise ConfigError("the mergekit config has no `models:`", "list the models to merge under `models:`")
    models: list[tuple[str, dict[str, Any]]] = []
    for entry in entries:
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or "model" not in entry:
            raise ConfigError(f"mergekit model entry {excerpt(entry)} has no `model:`",
                              "write each entry as `- model: PATH` with optional `parameters:`")
        extra = set(entry) - {"model", "parameters"}
        if extra:
            raise ConfigError(f"mergekit model entry has unsupported key(s) {sorted(extra)}",
                              "keep only `model:` and `parameters:`")
        params = dict(entry.get("parameters") or {})
        bad = set(params) - _MODEL_PARAMS - model_keys
        if bad:
            raise ConfigError(f"per-model parameter(s) {sorted(bad)} are not supported",
                              f"per-model parameters here: {', '.join(sorted(_MODEL_PARAMS | model_keys))}")
        models.append((_model_ref(entry["model"], base_ref), params))

    shared = dict(raw.get("parameters") or {})
    if method in SPHERICAL_METHODS:
        base_ref, models, spherical = _spherical_parameters(method, base_ref, models, shared)
        return _top_level(raw, {"method": method}, base_ref, models, spherical)
    bad = set(shared) - _GLOBAL_PARAMS - global_keys
    if bad:
        raise ConfigError(f"mergekit parameter(s) {sorted(bad)} are not supported for {method}",
                          f"supported: {', '.join(sorted(_GLOBAL_PARAMS))}")
    shared.pop("int8_mask", None)  # only the mask's storage type; the result is the same

    def setting(params: dict[str, Any], key: str) -> Any:
        # mergekit precedence: the model's own parameters, then the global ones.
        value = params.get(key, shared.get(key))
        return None if value is None else _plain_setting(value, key)

    out: dict[str, Any] = {"method": method}
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
    for key, default in (("density", None), ("gamma", None), ("epsilon", None)):
        values = [setting(params, key) for _, params in models]
        if all(v is None for v in values):
            continue
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

    return _top_level(raw, out, base_ref, models, parameters)


def _top_level(raw: dict[str, Any], out: dict[str, Any], base_ref: str | None,
               models: list[tuple[str, dict[str, Any]]], parameters: dict[str, Any]) -> dict[str, Any]:
    """``out`` completed with the base, the models, the parameters and the top-level keys."""
    out["base"] = base_ref
    out["models"] = [ref for ref, _ in models]
    dtype = raw.get("out_dtype") or raw.get("dtype")
    if dtype is not None:
        if str(dtype) not in _DTYPES:
            raise ConfigError(f"mergekit dtype {dtype!r} is not supported",
                              f"use one of {', '.join(sorted(set(_DTYPES.values())))}")
        out["dtype"] = _DTYPES[str(dtype)]
    source = raw.get("tokenizer_source")
    if source not in (None, "base") and _model_ref(source, base_ref) != base_ref:
        raise ConfigError(f"tokenizer_source {source!r} is not supported",
                          "remove it: the base model's tokenizer is copied")
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
    """A number, bool or gradient list; a filter (conditional parameter) is refused unless it
    applies to every tensor."""
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
