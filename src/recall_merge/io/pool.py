"""The model pool: handles to M_0 (base) … M_N, full checkpoints or LoRA adapters on the base.

Opening the pool reads only configs and safetensors headers, and checks that every model fits
the base (architecture, depth, hidden size, vocabulary, tensor names and shapes) before any
weight is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from recall_merge.errors import CheckpointError
from recall_merge.io.lora import LoraAdapter, is_lora_folder
from recall_merge.io.reader import Checkpoint
from recall_merge.methods.base import TensorPosition

_BLOCK_PATTERN = re.compile(r"\.(?:layers|h|blocks|block|layer)\.(\d+)\.")
_SHAPE_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "intermediate_size",
               "num_attention_heads", "num_key_value_heads")


def resolve_ref(ref: str | Path) -> Path:
    """A packaged model name ('smollm2') becomes its cached folder; anything else is a path."""
    from recall_merge.io.packaged import is_packaged_name, resolve_model_ref

    text = str(ref)
    return resolve_model_ref(text) if is_packaged_name(text) else Path(text)


@dataclass
class Expert:
    """One fine-tuned model: either a full checkpoint or a LoRA adapter on the base."""

    folder: Path
    checkpoint: Checkpoint | None = None
    adapter: LoraAdapter | None = None

    @property
    def is_lora(self) -> bool:
        return self.adapter is not None


class ModelPool:
    def __init__(self, base: Checkpoint, experts: list[Expert]) -> None:
        self.base = base
        self.experts = experts
        self.num_layers = base.num_layers
        # Read in file/offset order: sequential I/O, and shards are finished one at a time.
        self.tensor_names = sorted(base.tensors, key=lambda n: (str(base.tensors[n].file),
                                                                base.tensors[n].start))

    @classmethod
    def open(cls, base_ref: str | Path, expert_refs: list[str | Path], *,
             allow_pickle: bool = False, trust_remote_code: bool = False) -> ModelPool:
        base_folder = resolve_ref(base_ref)
        if base_folder.exists() and is_lora_folder(base_folder):
            raise CheckpointError(f"base {base_folder} is a LoRA adapter, not a full model",
                                  "set `base` to the full model the adapters were trained on")
        base = Checkpoint(base_folder, allow_pickle=allow_pickle)
        _check_remote_code(base, trust_remote_code)
        experts: list[Expert] = []
        for ref in expert_refs:
            folder = resolve_ref(ref)
            if not folder.exists():
                raise CheckpointError(f"model folder {str(folder)!r} does not exist", "check the path in `models`")
            if is_lora_folder(folder):
                experts.append(Expert(folder, adapter=LoraAdapter(folder, base, allow_pickle=allow_pickle)))
            else:
                checkpoint = Checkpoint(folder, allow_pickle=allow_pickle)
                _check_remote_code(checkpoint, trust_remote_code)
                _check_compatible(base, checkpoint)
                experts.append(Expert(folder, checkpoint=checkpoint))
        return cls(base, experts)

    @property
    def all_lora(self) -> bool:
        return all(expert.is_lora for expert in self.experts)

    def position(self, name: str) -> TensorPosition:
        return tensor_position(name, self.num_layers)

    def base_tensor(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        return self.base.get(name, rows)

    def expert_tensor(self, index: int, name: str, base_tensor: torch.Tensor,
                      rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Expert ``index``'s (0-based among M_1..M_N) tensor as float32 (or rows of it, with
        ``base_tensor`` the same rows of the base)."""
        expert = self.experts[index]
        if expert.adapter is not None:
            return expert.adapter.apply(name, base_tensor, rows)
        return expert.checkpoint.get(name, rows).to(torch.float32)

    def folders(self) -> list[Path]:
        return [self.base.folder] + [expert.folder for expert in self.experts]


def tensor_position(name: str, num_layers: int) -> TensorPosition:
    match = _BLOCK_PATTERN.search(name)
    if match:
        layer = int(match.group(1))
        return TensorPosition("block", layer, layer / max(num_layers - 1, 1))
    if "embed" in name or name.endswith("wte.weight") or name.endswith("wpe.weight"):
        return TensorPosition("embedding", None, 0.0)
    if "lm_head" in name:
        return TensorPosition("head", None, 1.0)
    if "norm" in name or name.endswith("ln_f.weight") or name.endswith("ln_f.bias"):
        return TensorPosition("norm", None, 1.0)
    return TensorPosition("other", None, 0.0)


def _check_remote_code(checkpoint: Checkpoint, trust_remote_code: bool) -> None:
    # A config with auto_map makes transformers import Python files shipped with the model.
    if checkpoint.config.get("auto_map") and not trust_remote_code:
        raise CheckpointError(
            f"{checkpoint.folder} asks to run its own Python code (auto_map in config.json), "
            "which is refused by default", "review that code, then set `trust_remote_code: true`")


def _check_compatible(base: Checkpoint, other: Checkpoint) -> None:
    for key in _SHAPE_KEYS:
        if key in base.config and base.config.get(key) != other.config.get(key):
            raise CheckpointError(
                f"{other.folder} does not match the base: {key} is {other.config.get(key)!r}, the base "
                f"has {base.config.get(key)!r} (models of different architecture or size cannot be merged)",
                "merge only models fine-tuned from the same base")
    missing = [name for name in base.tensors if name not in other.tensors]
    if missing:
        raise CheckpointError(f"{other.folder} lacks tensor {missing[0]!r} of the base "
                              f"({len(missing)} missing)", "merge only models fine-tuned from the same base")
    for name, info in base.tensors.items():
        if other.tensors[name].shape != info.shape:
            raise CheckpointError(
                f"{other.folder}: tensor {name!r} has shape {list(other.tensors[name].shape)}, the base "
                f"has {list(info.shape)}", "merge only models fine-tuned from the same base")
