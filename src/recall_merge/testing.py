"""Tiny random checkpoints for tests and examples (synthetic: for unit tests only).

The models are real ``LlamaForCausalLM`` folders with a real (tiny, trained-on-the-fly) BPE
tokenizer, so every code path that touches transformers runs as it would on a real model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

_CORPUS = [
    "the cat sat on the mat", "a dog ran in the park", "stocks fell sharply on monday",
    "the team won the final match", "new phone released with better camera",
    "parliament passed the budget bill", "rain is expected over the weekend",
    "she scored twice in the second half", "the film opens in cinemas next week",
    "how do i reset my password", "book a table for two tonight", "play some jazz music",
]


def make_tiny_tokenizer(folder: Path) -> None:
    """Train a byte-level BPE of ~300 tokens and save it as a fast HF tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
    )
    fast.chat_template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast.save_pretrained(folder)


def tiny_llama_config(vocab_size: int, num_layers: int = 2, hidden: int = 64) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size,
        "hidden_size": hidden, "intermediate_size": hidden * 2, "num_hidden_layers": num_layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": 0, "torch_dtype": "float32",
    }


def make_tiny_llama(
    folder: Path,
    seed: int = 0,
    num_layers: int = 2,
    hidden: int = 64,
    tokenizer_from: Path | None = None,
    perturb_from: Path | None = None,
    perturb_scale: float = 0.02,
    max_shard_size: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random tiny Llama folder. With ``perturb_from`` the weights are that model's plus
    seeded Gaussian noise, which stands in for a fine-tuned expert of one base."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer_from is None:
        make_tiny_tokenizer(folder)
    else:
        AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    vocab = len(AutoTokenizer.from_pretrained(folder))
    torch.manual_seed(seed)
    if perturb_from is not None:
        model = LlamaForCausalLM.from_pretrained(perturb_from, dtype=torch.float32)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * perturb_scale)
    else:
        model = LlamaForCausalLM(LlamaConfig(**tiny_llama_config(vocab, num_layers, hidden)))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(dtype).save_pretrained(folder, **kwargs)
    return folder


def make_tiny_lora(folder: Path, base: Path, seed: int = 0, rank: int = 4, scale: float = 0.05,
                   target_modules: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """A PEFT LoRA adapter on ``base`` with seeded random A and B (B non-zero, so it has an effect)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank,
                                                  target_modules=list(target_modules)))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    peft_model.save_pretrained(folder)
    return Path(folder)


def write_samples(path: Path, texts: list[str] | None = None) -> Path:
    texts = texts or _CORPUS
    with open(path, "w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}) + "\n")
    return path


def make_expert_family(root: Path, count: int, num_layers: int, hidden: int = 32,
                       seed: int = 100) -> dict[str, Path]:
    """A tiny base (seed 0) and ``count`` experts e1..eN, each the base plus seeded noise (seeds
    ``seed + k``), sharing its tokenizer: ``{"root", "base", "e1", ...}`` (SYNTHETIC weights)."""
    base = make_tiny_llama(root / "base", seed=0, num_layers=num_layers, hidden=hidden)
    models = {"root": root, "base": base}
    for k in range(1, count + 1):
        models[f"e{k}"] = make_tiny_llama(root / f"e{k}", seed=seed + k, num_layers=num_layers,
                                          hidden=hidden, tokenizer_from=base, perturb_from=base)
    return models
