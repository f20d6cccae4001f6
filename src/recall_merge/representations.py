"""Per-layer, mean-pooled hidden states of a model on a list of texts.

For LoRA experts the base model is loaded once; each adapter's dense deltas are added to the
affected weights for its pass and the original weights restored after, so memory never grows by
a model copy per expert.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoints.reader import check_finite
from .pool import ModelPool


@functools.lru_cache(maxsize=4)
def load_tokenizer(folder: Path, trust_remote_code: bool = False):
    """The folder's tokenizer, right-padded (cached: a 49k-vocab fast tokenizer takes ~2 s)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(folder: Path, trust_remote_code: bool = False, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
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


@torch.no_grad()
def pooled_hidden_states(model, tokenizer, texts: list[str], *, max_length: int, batch_size: int,
                         desc: str = "hidden states", quiet: bool = True) -> torch.Tensor:
    """Mean-pooled hidden states of every layer, padding excluded.

    Returns (num_hidden_states, len(texts), hidden) float32, where index 0 is the embedding output
    and index j + 1 the output of block j (HF ``hidden_states``).
    """
    device = next(model.parameters()).device
    chunks: list[torch.Tensor] = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=quiet, leave=False):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                          truncation=True, max_length=max_length, add_special_tokens=False)
        batch = {key: value.to(device) for key, value in batch.items()}
        outputs = model(**batch, output_hidden_states=True, use_cache=False)
        mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)  # (b, t, 1)
        stacked = torch.stack(outputs.hidden_states, dim=0).to(torch.float32)  # (L+1, b, t, d)
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
                          ) -> dict[int, torch.Tensor]:
    """Pooled states of models M_k (k = 0 base, 1..N experts) on ``texts``, (L+1, n, d) each.

    The base model is built once; LoRA experts and full checkpoints are swapped into it in turn,
    so memory holds one model whatever the number of experts.
    """
    indices = model_indices if model_indices is not None else list(range(len(pool.experts) + 1))
    tokenizer = load_tokenizer(pool.base.folder, trust_remote_code)
    texts = texts_for if isinstance(texts_for, list) else None
    states: dict[int, torch.Tensor] = {}
    saved_base_weights: dict[str, torch.Tensor] = {}

    def run(model, k: int) -> torch.Tensor:
        chosen = texts if texts is not None else texts_for[k]
        framed = format_texts(tokenizer, chosen, use_chat_template)
        return pooled_hidden_states(model, tokenizer, framed, max_length=max_length,
                                    batch_size=batch_size, desc=f"hidden states M_{k}", quiet=quiet)

    # One model object serves every pass: the base, then each LoRA expert (ΔW added in place and
    # removed after), then each full expert (its weights copied in from safetensors, far cheaper
    # than building a new model per expert). The order of passes does not change any result.
    def pass_order(k: int) -> int:
        return 0 if k == 0 else (1 if pool.experts[k - 1].is_lora else 2)

    model = load_model(pool.base.folder, trust_remote_code, device)
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
            other = load_model(expert.folder, trust_remote_code, device)
            states[k] = run(other, k)
            del other
    del model
    return states


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
