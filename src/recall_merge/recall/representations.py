"""Per-layer, mean-pooled hidden states of a model on a list of texts.

Llama-family models (Llama, Mistral, Qwen2) run on a pure-torch forward (fast_forward.py) whose
weights are a ``name -> tensor`` dict: a full expert is the dict of its own safetensors, a LoRA
expert the base dict with its adapted tensors replaced, so no model object is built and no
weights are copied into one; the tokenizer comes from tokenizer.json (fast_tokenizer.py). Both
give transformers' results; anything they do not cover runs on transformers as before: the base
model is loaded once, each LoRA adapter's dense deltas are added in place for its pass and removed
after, and full experts are copied into it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from recall_merge.io.pool import ModelPool
from recall_merge.io.reader import Checkpoint, check_finite
from recall_merge.recall.fast_forward import (
    DecoderSpec,
    UnsupportedModel,
    check_weights,
    hidden_states,
    spec_from_config,
)
from recall_merge.recall.fast_tokenizer import (
    FastTokenizer,
    load_auto_tokenizer,
    load_fast_tokenizer,
)
from recall_merge.recall.streamed import (
    DEFAULT_ACTIVATION_BUDGET,
    DEFAULT_RESIDENT_BUDGET,
    StreamedDecoder,
    UnsupportedForStreaming,
    waves,
)

BACKENDS = ("streamed", "fast", "transformers")


@dataclass
class FastDecoder:
    """A Llama-family decoder for the pure-torch forward: its spec and its weights by tensor name."""

    spec: DecoderSpec
    weights: dict[str, torch.Tensor]
    device: torch.device


@functools.lru_cache(maxsize=4)
def load_tokenizer(folder: Path, trust_remote_code: bool = False):
    """The folder's tokenizer, right-padded (cached: a 49k-vocab fast tokenizer takes ~2 s)."""
    tokenizer = load_auto_tokenizer(folder, trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


@functools.lru_cache(maxsize=4)
def _fast_tokenizer(folder: Path) -> FastTokenizer | None:
    return load_fast_tokenizer(folder)


def representation_tokenizer(folder: Path, trust_remote_code: bool = False, *, fast: bool = True):
    """The tokenizer of the representation pass: tokenizer.json read directly where that gives
    AutoTokenizer's ids (no transformers import), AutoTokenizer otherwise."""
    tokenizer = _fast_tokenizer(Path(folder)) if fast else None
    return tokenizer if tokenizer is not None else load_tokenizer(folder, trust_remote_code)


def load_model(folder: Path, trust_remote_code: bool = False, device: str = "cpu",
               dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype,
                                                 trust_remote_code=trust_remote_code)
    _check_finite_parameters(model, folder)
    return model.to(device).eval()


def _check_finite_parameters(model, folder: Path) -> None:
    # The weights are in memory anyway: checking here reports a broken checkpoint by tensor name
    # before its NaNs reach clustering or the similarity maths.
    for name, parameter in model.named_parameters():
        check_finite(parameter.detach(), name, folder)


def format_texts(tokenizer, texts: list[str], use_chat_template: bool) -> list[str]:
    """Frame each sample as the models saw it in fine-tuning: a user turn of the chat template."""
    if not use_chat_template or not getattr(tokenizer, "chat_template", None):
        return texts
    return [tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                          add_generation_prompt=True) for text in texts]


def encode(tokenizer, texts: list[str], *, max_length: int,
           truncation_side: str = "right") -> dict[str, torch.Tensor]:
    """Right-padded input_ids and attention_mask of ``texts``, each cut to ``max_length`` tokens:
    its end dropped (``truncation_side`` "right") or its start ("left")."""
    saved = getattr(tokenizer, "truncation_side", "right")
    tokenizer.truncation_side = truncation_side
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                         max_length=max_length, add_special_tokens=False)
    finally:
        tokenizer.truncation_side = saved


def distinct_inputs(tokenizer, texts: list[str], *, max_length: int, use_chat_template: bool,
                    truncation_side: str = "right") -> int:
    """How many of ``texts`` still differ once framed and cut as the representation pass sees them.
    Fewer than ``len(texts)`` means some samples are the same input (e.g. a shared instruction
    longer than ``max_length``), so their hidden states are the same and say nothing more."""
    batch = encode(tokenizer, format_texts(tokenizer, texts, use_chat_template),
                   max_length=max_length, truncation_side=truncation_side)
    return len({tuple(ids[mask.bool()].tolist())
                for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)})


@torch.no_grad()
def pooled_hidden_states(model, tokenizer, texts: list[str], *, max_length: int, batch_size: int,
                         desc: str = "hidden states", quiet: bool = True,
                         truncation_side: str = "right") -> torch.Tensor:
    """Mean-pooled hidden states of every layer, padding excluded.

    Returns (num_hidden_states, len(texts), hidden) float32, where index 0 is the embedding output
    and index j + 1 the output of block j (HF ``hidden_states``).
    """
    fast = isinstance(model, FastDecoder)
    device = model.device if fast else next(model.parameters()).device
    chunks: list[torch.Tensor] = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=quiet, leave=False):
        batch = encode(tokenizer, texts[start:start + batch_size], max_length=max_length,
                       truncation_side=truncation_side)
        batch = {key: value.to(device) for key, value in batch.items()}
        if fast:
            states = hidden_states(model.weights, model.spec, batch["input_ids"], batch["attention_mask"])
        else:
            states = model(**batch, output_hidden_states=True, use_cache=False).hidden_states
        mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)  # (b, t, 1)
        stacked = torch.stack(states, dim=0).to(torch.float32)  # (L+1, b, t, d)
        summed = (stacked * mask.unsqueeze(0)).sum(dim=2)
        counts = mask.sum(dim=1).clamp(min=1.0).unsqueeze(0)  # (1, b, 1)
        chunks.append((summed / counts).cpu())
    return torch.cat(chunks, dim=1)


@contextlib.contextmanager
def _lora_applied(model, adapter, base_tensors: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily set the model's weights to base + ΔW of one adapter."""
    parameters = dict(model.named_parameters())
    touched: list[str] = []
    try:
        with torch.no_grad():
            for name in list(adapter.modules) + list(adapter.replacements):
                target = parameters.get(name)
                if target is None:
                    continue
                base_tensors.setdefault(name, target.detach().clone())
                weight = adapter.apply(name, base_tensors[name])
                check_finite(weight, name, f"adapter {adapter.folder}")
                target.copy_(weight.to(target.dtype))
                touched.append(name)
        yield
    finally:
        with torch.no_grad():
            for name in touched:
                parameters[name].copy_(base_tensors[name])


def states_for_all_models(pool: ModelPool, texts_for: dict[int, list[str]] | list[str], *,
                          max_length: int, batch_size: int, use_chat_template: bool,
                          trust_remote_code: bool = False, device: str = "cpu",
                          quiet: bool = True, model_indices: list[int] | None = None,
                          backend: str = "streamed", truncation_side: str = "right",
                          activation_budget: int = DEFAULT_ACTIVATION_BUDGET,
                          resident_budget: int = DEFAULT_RESIDENT_BUDGET,
                          compute_dtype: torch.dtype = torch.float32) -> dict[int, torch.Tensor]:
    """Pooled states of models M_k (k = 0 base, 1..N experts) on ``texts``, (L+1, n, d) each,
    float32; the forward runs on ``device`` in ``compute_dtype`` (weights cast to it as read).

    ``backend``: "streamed" (default) runs transformers' own decoder one block's weights at a time
    (streamed.py), so memory holds one block, not one model; "fast" the pure-torch Llama-family
    forward over whole memory-mapped models (fast_forward.py); "transformers" one whole model
    object. A model the chosen backend cannot run falls back to the next one in that order.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    indices = model_indices if model_indices is not None else list(range(len(pool.experts) + 1))
    tokenizer = representation_tokenizer(pool.base.folder, trust_remote_code,
                                         fast=backend != "transformers")
    texts = texts_for if isinstance(texts_for, list) else None
    states: dict[int, torch.Tensor] = {}

    if backend == "streamed":
        decoder = _streamed_decoder(pool, torch.device(device), trust_remote_code, compute_dtype)
        if decoder is not None:
            for k in indices:
                chosen = texts if texts is not None else texts_for[k]
                wave = decoder.pass_wave(len(chosen), max_length, batch_size,
                                         resident_budget=resident_budget,
                                         activation_budget=activation_budget)
                framed = format_texts(tokenizer, chosen, use_chat_template)
                # Waves of similar lengths pad little; the states go back to the input order.
                lengths = encode(tokenizer, framed, max_length=max_length,
                                 truncation_side=truncation_side)["attention_mask"].sum(dim=1)
                order = sorted(range(len(framed)), key=lambda i: int(lengths[i]))
                batches = [encode(tokenizer, [framed[i] for i in order[start:stop]],
                                  max_length=max_length, truncation_side=truncation_side)
                           for start, stop in waves(len(framed), wave)]
                pooled = decoder.pooled_states(_tensor_reader(pool, k), batches,
                                               source=str(pool.folders()[k]),
                                               resident_budget=resident_budget)
                states[k] = torch.empty_like(pooled)
                states[k][:, order] = pooled
            return states

    def run(model, k: int) -> torch.Tensor:
        chosen = texts if texts is not None else texts_for[k]
        framed = format_texts(tokenizer, chosen, use_chat_template)
        return pooled_hidden_states(model, tokenizer, framed, max_length=max_length,
                                    batch_size=batch_size, desc=f"hidden states M_{k}", quiet=quiet,
                                    truncation_side=truncation_side)

    spec = fast_decoder_spec(pool, max_length) if backend != "transformers" else None
    if spec is not None:
        for k, decoder in _fast_decoders(pool, spec, indices, torch.device(device), compute_dtype):
            states[k] = run(decoder, k)
            del decoder  # before the next expert's weights are read: one expert in memory at a time
        return states

    saved_base_weights: dict[str, torch.Tensor] = {}

    # One model object serves every pass: the base, then each LoRA expert (ΔW added in place and
    # removed after), then each full expert (its weights copied in from safetensors, far cheaper
    # than building a new model per expert). The order of passes does not change any result.
    def pass_order(k: int) -> int:
        return 0 if k == 0 else (1 if pool.experts[k - 1].is_lora else 2)

    model = load_model(pool.base.folder, trust_remote_code, device, compute_dtype)
    for k in sorted(indices, key=pass_order):
        if k == 0:
            states[k] = run(model, k)
            continue
        expert = pool.experts[k - 1]
        if expert.is_lora:
            with _lora_applied(model, expert.adapter, saved_base_weights):
                states[k] = run(model, k)
        elif _copy_weights_into(model, expert.checkpoint):
            states[k] = run(model, k)
        else:  # the checkpoint's names differ from the module's: build the model on its own
            other = load_model(expert.folder, trust_remote_code, device, compute_dtype)
            states[k] = run(other, k)
            del other
    del model
    return states


def _streamed_decoder(pool: ModelPool, device: torch.device, trust_remote_code: bool,
                      dtype: torch.dtype = torch.float32) -> StreamedDecoder | None:
    try:
        return StreamedDecoder(pool.base.folder, set(pool.base.tensors), device=device,
                               trust_remote_code=trust_remote_code, dtype=dtype)
    except (UnsupportedForStreaming, ValueError, KeyError, OSError):
        return None  # an architecture transformers cannot build from config alone: next backend


def _tensor_reader(pool: ModelPool, k: int):
    """name -> M_k's tensor: the base's, a full expert's own, or base + one adapter's ΔW."""
    if k == 0:
        return pool.base.get
    expert = pool.experts[k - 1]
    if not expert.is_lora:
        return expert.checkpoint.get
    adapter = expert.adapter
    adapted = set(adapter.modules) | set(adapter.replacements)

    def read(name: str) -> torch.Tensor:
        base = pool.base.get(name)
        return adapter.apply(name, base) if name in adapted else base
    return read


@torch.no_grad()
def _copy_weights_into(model, checkpoint) -> bool:
    """Load a full checkpoint of the same architecture into ``model`` in place (False when its
    tensor names do not cover the model's parameters)."""
    parameters = dict(model.named_parameters())  # tied weights appear once
    if any(name not in checkpoint.tensors for name in parameters):
        return False
    for name, parameter in parameters.items():
        tensor = checkpoint.get(name)
        check_finite(tensor, name, checkpoint.folder)
        parameter.copy_(tensor.to(parameter.dtype))
    return True


def fast_decoder_spec(pool: ModelPool, max_length: int) -> DecoderSpec | None:
    """The base's spec when every model can run on the pure-torch forward, else None.

    Experts are checked against the base when the pool opens (same tensor names and shapes), and
    the transformers path runs every expert with the base's config too, so the base decides.
    """
    try:
        spec = spec_from_config(pool.base.config)
        check_weights(spec, pool.base.tensors)
    except (UnsupportedModel, KeyError, TypeError, ValueError):
        return None
    if spec.sliding_window is not None and max_length > spec.sliding_window:
        return None  # the window would cut attention; transformers builds that mask
    return spec


def _model_tensor_names(spec: DecoderSpec, checkpoint: Checkpoint) -> list[str]:
    """The forward's tensors, plus an untied LM head: the transformers path loads (and so checks)
    every parameter of the model, and a broken head should be refused here as it was there."""
    names = spec.tensor_names()
    tied = checkpoint.config.get("tie_word_embeddings", False)
    if not tied and "lm_head.weight" in checkpoint.tensors:
        names.append("lm_head.weight")
    return names


def _read_weights(checkpoint: Checkpoint, names: list[str], device: torch.device,
                  dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The named tensors in ``dtype`` on ``device``; ones already so on the CPU are views of the
    memory-mapped file (nothing copied), all are checked for NaN/Inf."""
    weights: dict[str, torch.Tensor] = {}
    for name, tensor in checkpoint.get_mapped(names).items():
        check_finite(tensor, name, checkpoint.folder)
        weights[name] = tensor.to(device=device, dtype=dtype)
    return weights


def _fast_decoders(pool: ModelPool, spec: DecoderSpec, indices: list[int], device: torch.device,
                   dtype: torch.dtype = torch.float32) -> Iterator[tuple[int, FastDecoder]]:
    """(k, decoder) for each requested model: the base and LoRA experts first (they share the base
    weights, read once), then each full expert from its own file (the base weights freed by then).
    The order of passes does not change any result."""
    names = _model_tensor_names(spec, pool.base)
    on_base = [k for k in indices if k == 0 or pool.experts[k - 1].is_lora]
    full = [k for k in indices if k not in on_base]
    if on_base:
        base_weights = _read_weights(pool.base, names, device, dtype)
        for k in sorted(on_base):
            if k == 0:
                yield k, FastDecoder(spec, base_weights, device)
                continue
            adapter = pool.experts[k - 1].adapter
            weights = dict(base_weights)  # shares the untouched tensors
            for name in list(adapter.modules) + list(adapter.replacements):
                if name in weights:
                    weight = adapter.apply(name, base_weights[name])
                    check_finite(weight, name, f"adapter {adapter.folder}")
                    weights[name] = weight.to(device=device, dtype=dtype)
            yield k, FastDecoder(spec, weights, device)
            del weights
        del base_weights
    for k in sorted(full):
        checkpoint = pool.experts[k - 1].checkpoint
        yield k, FastDecoder(spec, _read_weights(checkpoint, _model_tensor_names(spec, checkpoint),
                                                 device, dtype), device)
