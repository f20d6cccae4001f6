"""Data-free probes for RECALL's older tasks: texts each old expert writes itself.

RECALL reads its weights from the newest task's samples only. With ``probes: generated`` every
older expert M_k also answers a few neutral prompts (:data:`NEUTRAL_PROMPTS`) by seeded sampling,
and what it writes stands in for its task's inputs, which are no longer stored. The prompts are
framed as the representation pass frames a sample (a user turn of the chat template, the
generation prompt added; the bare text for a model without a template).

The experts are the models the representation pass runs: the base model is loaded once with
transformers, a LoRA expert is the base with its adapter's ΔW added for its turn and removed after,
a full expert's weights are copied into the same model object. Memory: one whole model in the
compute dtype on the device (a 7B model: ~28 GB in float32, ~14 GB in bfloat16), plus the key/value
cache of one prompt's samples.

Sampling is transformers' ``generate`` with an explicit configuration (temperature, nucleus top-p,
no top-k, no repetition penalty), so it reads no model's generation_config; each prompt's draws
are seeded from the merge's seed and the prompt's index inside a fork of torch's random state, so
the caller's random state is left alone and the texts are the same for the same seed whatever the
order the experts are visited in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from recall_merge.io.pool import ModelPool
from recall_merge.methods.classic import dare_seed
from recall_merge.recall.representations import (
    _copy_weights_into,
    _lora_applied,
    format_texts,
    load_model,
    load_tokenizer,
)

# Neutral requests that any fine-tuned assistant answers with something of its own task: none
# names a topic, so what comes back says what the model was trained to produce.
NEUTRAL_PROMPTS: tuple[str, ...] = (
    "Give an example of a question you can answer.",
    "Write a typical request and your answer.",
    "Show one input of the kind you are trained to handle, then respond to it.",
    "What might a user ask you? Write the message, then your reply.",
    "Write a short example of the work you do.",
    "Give a sample task and complete it.",
    "Write an example instruction and follow it.",
    "Describe a typical question you get, then answer it.",
)
TEMPERATURE = 1.0
TOP_P = 0.95


def prompt_plan(count: int, prompts: tuple[str, ...] = NEUTRAL_PROMPTS) -> list[tuple[int, int]]:
    """(prompt index, samples drawn from it) for ``count`` samples: sample i answers prompt
    i mod len(prompts), so the prompts are used in turn and evenly."""
    plan = [(index, count // len(prompts) + (index < count % len(prompts)))
            for index in range(len(prompts))]
    return [(index, repeats) for index, repeats in plan if repeats > 0]


def _stop_ids(model, tokenizer) -> list[int]:
    """Every id that ends a reply: the tokenizer's EOS and the model config's (one or a list)."""
    found: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None),
                   getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            found.add(source)
        elif isinstance(source, list | tuple):
            found.update(int(item) for item in source)
    return sorted(found)


@torch.no_grad()
def sample_replies(model, tokenizer, prompt: str, repeats: int, new_tokens: int,
                   seed: int) -> list[str]:
    """``repeats`` sampled replies of ``model`` to one framed prompt (transformers' ``generate``:
    temperature, nucleus top-p, no top-k, no repetition penalty — an explicit GenerationConfig,
    so no model's own generation_config applies), each at most ``new_tokens`` tokens and cut at
    the first stop token, decoded without special tokens. The draws come from torch's random
    state set to ``seed`` inside a fork, so the caller's random state is left as it was."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    stops = _stop_ids(model, tokenizer)
    config = GenerationConfig(
        do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=0, repetition_penalty=1.0,
        max_new_tokens=new_tokens, num_return_sequences=repeats, eos_token_id=stops or None,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
        else (stops[0] if stops else 0))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                generation_config=config)
    return [tokenizer.decode([int(t) for t in row if int(t) not in stops],
                             skip_special_tokens=True).strip()
            for row in output[:, ids.shape[1]:].cpu()]


@contextlib.contextmanager
def _as_model(pool: ModelPool, model, k: int, saved_base: dict[str, torch.Tensor], *,
              trust_remote_code: bool, device: str, dtype: torch.dtype) -> Iterator[object]:
    """``model`` holding M_k's weights for the block: the base, base + one adapter's ΔW (removed
    after), or a full expert's weights copied in (a model of its own when the names differ)."""
    if k == 0:
        yield model
        return
    expert = pool.experts[k - 1]
    if expert.is_lora:
        with _lora_applied(model, expert.adapter, saved_base):
            yield model
    elif _copy_weights_into(model, expert.checkpoint):
        yield model
    else:
        other = load_model(expert.folder, trust_remote_code, device, dtype)
        yield other
        del other


def generate_probes(pool: ModelPool, model_indices: list[int], *, count: int, new_tokens: int,
                    seed: int, trust_remote_code: bool = False, device: str = "cpu",
                    dtype: torch.dtype = torch.float32,
                    prompts: tuple[str, ...] = NEUTRAL_PROMPTS) -> dict[int, list[str]]:
    """``count`` texts written by each model M_k of ``model_indices`` (0 the base, 1..N the
    experts), sample i answering prompt i mod len(prompts); a reply that comes back empty (a stop
    token first) is replaced by its prompt, so every probe is an input. The same seed gives the same
    texts; two identical models give the same texts (each prompt's draws depend on the seed
    and the prompt only)."""
    tokenizer = load_tokenizer(pool.base.folder, trust_remote_code)
    framed = format_texts(tokenizer, list(prompts), use_chat_template=True)
    plan = prompt_plan(count, prompts)
    model = load_model(pool.base.folder, trust_remote_code, device, dtype)
    saved_base: dict[str, torch.Tensor] = {}
    texts: dict[int, list[str]] = {}

    # the base and LoRA experts first: they run on the base weights, which a full expert's
    # weights overwrite (the same order as the representation pass; it changes no result)
    def visit_order(k: int) -> int:
        return 0 if k == 0 else (1 if pool.experts[k - 1].is_lora else 2)

    for k in sorted(model_indices, key=visit_order):
        with _as_model(pool, model, k, saved_base, trust_remote_code=trust_remote_code,
                       device=device, dtype=dtype) as current:
            by_prompt: dict[int, list[str]] = {}
            for index, repeats in plan:
                replies = sample_replies(current, tokenizer, framed[index], repeats, new_tokens,
                                         dare_seed(seed, f"recall-probe-{index}"))
                by_prompt[index] = [reply or prompts[index] for reply in replies]
        # back to sample order: sample i is the (i // P)-th reply to prompt i mod P
        texts[k] = [by_prompt[i % len(prompts)][i // len(prompts)] for i in range(count)]
    del model
    return texts
