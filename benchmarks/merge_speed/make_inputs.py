"""Inputs of the speed benchmark, made in their own process (see run.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def make_experts(base: Path, root: Path, count: int) -> list[Path]:
    """N copies of the base with seeded Gaussian noise: same shapes and size as real experts."""
    tensors = load_file(base / "model.safetensors")
    folders = []
    for k in range(count):
        folder = root / f"expert{k}"
        if not folder.exists():
            folder.mkdir(parents=True)
            generator = torch.Generator().manual_seed(k)
            noisy = {name: t + 1e-3 * torch.randn(t.shape, generator=generator) for name, t in tensors.items()}
            save_file(noisy, folder / "model.safetensors", metadata={"format": "pt"})
            for extra in base.iterdir():
                if extra.suffix != ".safetensors":
                    shutil.copy(extra, folder / extra.name)
        folders.append(folder)
    return folders


def make_big_checkpoint(root: Path, name: str, seed: int, template: Path | None = None) -> Path:
    """A synthetic Llama of ~2.1 GB fp32 (hidden 1536, 20 layers, vocab 32k), written in shards."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = root / name
    if folder.exists():
        return folder
    config = LlamaConfig(hidden_size=1536, intermediate_size=4096, num_hidden_layers=20, num_attention_heads=12,
                         num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if template is not None:  # an "expert" of the first: same weights plus noise
        state = load_state(template)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(state[n] + 1e-3 * torch.randn_like(p))
    model.save_pretrained(folder, max_shard_size="1GB")
    return folder


def truncate(folder: Path, source: Path, blocks: int) -> Path:
    """``source`` cut to its first ``blocks`` blocks (every tensor outside the blocks kept), for
    methods too slow to measure on the whole model: their cost per block is projected from it."""
    import json
    import re

    if folder.exists():
        return folder
    config = json.loads((source / "config.json").read_text())
    layers = config["num_hidden_layers"]
    if not 0 < blocks <= layers:
        raise SystemExit(f"--blocks must be in 1..{layers} for {source}")
    block = re.compile(r"^model\.layers\.(\d+)\.")
    kept = {name: t for name, t in load_state(source).items()
            if not (match := block.match(name)) or int(match.group(1)) < blocks}
    temporary = folder.with_name(folder.name + ".partial")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    save_file(kept, temporary / "model.safetensors", metadata={"format": "pt"})
    for extra in source.iterdir():
        if extra.suffix != ".safetensors" and extra.name != "config.json":
            shutil.copy(extra, temporary / extra.name)
    # per-layer lists (layer_types in some configs) are cut with the blocks
    config = {key: value[:blocks] if isinstance(value, list) and len(value) == layers else value
              for key, value in config.items()}
    config["num_hidden_layers"] = blocks
    (temporary / "config.json").write_text(json.dumps(config, indent=2))
    temporary.rename(folder)
    return folder


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    return state


if __name__ == "__main__":
    kind, root = sys.argv[1], Path(sys.argv[2])
    if kind == "experts":
        make_experts(Path(sys.argv[3]), root, int(sys.argv[4]))
    elif kind == "truncate":
        truncate(root, Path(sys.argv[3]), int(sys.argv[4]))
    else:
        base = make_big_checkpoint(root, "big_base", 0)
        make_big_checkpoint(root, "big_expert", 1, template=base)
