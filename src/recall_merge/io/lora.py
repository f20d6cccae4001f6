"""PEFT LoRA adapters as dense per-tensor deltas on a base checkpoint.

A LoRA expert's weight is W + ΔW with ΔW = B·A·(lora_alpha / r) (or / √r with rsLoRA). The merge
needs ΔW per tensor, never A and B separately: averaging A and B on their own is not a merge of
the experts (it introduces cross terms B_i·A_j).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from recall_merge.errors import CheckpointError
from recall_merge.io.reader import Checkpoint, read_safetensors_header, read_tensor

ADAPTER_CONFIG = "adapter_config.json"


def is_lora_folder(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).exists()


class LoraAdapter:
    """Dense deltas of one adapter, keyed by the base tensor name they modify."""

    def __init__(self, folder: Path, base: Checkpoint, *, allow_pickle: bool = False) -> None:
        self.folder = Path(folder)
        config_path = self.folder / ADAPTER_CONFIG
        try:
            self.config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{config_path} is not valid JSON: {exc}", "re-save the adapter") from None
        peft_type = self.config.get("peft_type", "LORA")
        if peft_type != "LORA":
            raise CheckpointError(f"{self.folder} is a {peft_type} adapter; only LoRA is supported",
                                  "merge the adapter into its base with peft first and pass the folder")
        if self.config.get("use_dora"):
            raise CheckpointError(f"{self.folder} is a DoRA adapter, whose update is not a plain delta",
                                  "merge it into the base with peft (merge_and_unload) and pass that folder")
        weights = self.folder / "adapter_model.safetensors"
        if not weights.exists():
            if (self.folder / "adapter_model.bin").exists():
                if not allow_pickle:
                    raise CheckpointError(
                        f"{self.folder} holds a pickle adapter (adapter_model.bin), refused by default",
                        "re-save it with safetensors, or set `allow_pickle: true`")
                self._tensors = torch.load(self.folder / "adapter_model.bin", map_location="cpu",
                                           weights_only=True)
                self._reader = None
            else:
                raise CheckpointError(f"{self.folder} has no adapter_model.safetensors",
                                      "point to a folder written by peft's save_pretrained")
        else:
            self._reader = _SafetensorsFile(weights)
            self._tensors = None
        self.rank = int(self.config.get("r", 8))
        self.alpha = float(self.config.get("lora_alpha", self.rank))
        self.rslora = bool(self.config.get("use_rslora", False))
        self.fan_in_fan_out = bool(self.config.get("fan_in_fan_out", False))
        self.rank_pattern: dict = self.config.get("rank_pattern") or {}
        self.alpha_pattern: dict = self.config.get("alpha_pattern") or {}
        self.modules: dict[str, tuple[str, str]] = {}  # base tensor name -> (A key, B key)
        self.replacements: dict[str, str] = {}  # base tensor name -> adapter key (modules_to_save)
        self._index_keys(base)

    def _keys(self) -> list[str]:
        return list(self._reader.names) if self._reader is not None else list(self._tensors)

    def _index_keys(self, base: Checkpoint) -> None:
        keys = self._keys()
        for key in keys:
            stripped = key.removeprefix("base_model.model.")
            if ".lora_A." in stripped:
                module = stripped.split(".lora_A.")[0]
                b_key = key.replace(".lora_A.", ".lora_B.")
                if b_key not in keys:
                    raise CheckpointError(f"{self.folder}: {key} has no matching lora_B tensor",
                                          "re-save the adapter")
                self.modules[self._base_name(module + ".weight", base)] = (key, b_key)
            elif ".lora_B." in stripped or "lora_magnitude" in stripped or ".lora_embedding_" in stripped:
                if "lora_embedding" in stripped:
                    raise CheckpointError(f"{self.folder}: LoRA on embedding layers is not supported",
                                          "merge the adapter into the base with peft first")
                continue
            else:
                self.replacements[self._base_name(stripped.replace(".modules_to_save.default", ""), base)] = key
        if not self.modules and not self.replacements:
            raise CheckpointError(f"{self.folder} holds no LoRA tensors", "check that it is a LoRA adapter")
        self._check_shapes(base)

    def _base_name(self, name: str, base: Checkpoint) -> str:
        # PEFT wraps targeted layers; their own weights are saved under "<module>.base_layer.".
        name = name.replace(".base_layer.", ".")
        if name in base.tensors:
            return name
        # Some PEFT versions save keys without the model's own "model." prefix or with it twice.
        for candidate in (f"model.{name}", name.removeprefix("model.")):
            if candidate in base.tensors:
                return candidate
        raise CheckpointError(
            f"adapter {self.folder} targets {name!r}, which the base model does not have: the adapter "
            "was made for another base model", "merge it with the base model it was trained on")

    def _check_shapes(self, base: Checkpoint) -> None:
        for name, (a_key, b_key) in self.modules.items():
            a_shape, b_shape = self._shape(a_key), self._shape(b_key)
            out_features, in_features = base.tensors[name].shape[:2]
            if self.fan_in_fan_out:
                out_features, in_features = in_features, out_features
            if a_shape[0] != b_shape[1] or a_shape[1] != in_features or b_shape[0] != out_features:
                raise CheckpointError(
                    f"adapter {self.folder} does not fit the base at {name!r}: lora_A {list(a_shape)}, "
                    f"lora_B {list(b_shape)} vs base weight {list(base.tensors[name].shape)} (rank or "
                    "target mismatch: the adapter was made for another base)",
                    "merge it with the base model it was trained on")

    def _shape(self, key: str) -> tuple[int, ...]:
        if self._reader is not None:
            return self._reader.header[key].shape
        return tuple(self._tensors[key].shape)

    def _get(self, key: str) -> torch.Tensor:
        if self._reader is not None:
            return self._reader.get(key)
        return self._tensors[key]

    def _scale(self, name: str, rank: int) -> float:
        module = name.removesuffix(".weight")
        alpha = self.alpha
        for pattern, value in self.alpha_pattern.items():
            if module.endswith(pattern):
                alpha = float(value)
        return alpha / math.sqrt(rank) if self.rslora else alpha / rank

    def touches(self, name: str) -> bool:
        return name in self.modules or name in self.replacements

    def delta(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor | None:
        """ΔW for a base tensor (float32), or rows [start, stop) of it; None when the adapter
        leaves the tensor unchanged."""
        if name not in self.modules:
            return None
        a_key, b_key = self.modules[name]
        lora_a = self._get(a_key).to(torch.float32)
        lora_b = self._get(b_key).to(torch.float32)
        scale = self._scale(name, lora_a.shape[0])
        if self.fan_in_fan_out:  # ΔW = (B·A)ᵀ: rows of ΔW are columns of B·A
            delta = ((lora_b @ lora_a) * scale).T
            return delta if rows is None else delta[rows[0]:rows[1]].contiguous()
        if rows is not None:  # rows of B·A need only those rows of B
            lora_b = lora_b[rows[0]:rows[1]]
        # float64 product, rounded once to float32: a float32 matmul's kernel (and so its last
        # bit) depends on the number of rows, and a row block must give the whole tensor's bytes
        return ((lora_b.double() @ lora_a.double()) * scale).to(torch.float32)

    def replacement(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor | None:
        """A full tensor the adapter trained directly (PEFT modules_to_save), else None."""
        key = self.replacements.get(name)
        if key is None:
            return None
        tensor = self._get(key).to(torch.float32)
        return tensor if rows is None else tensor[rows[0]:rows[1]]

    def apply(self, name: str, base_tensor: torch.Tensor, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """The expert's tensor: base + ΔW, or the trained replacement (float32). With ``rows``,
        ``base_tensor`` holds those rows of the base and the result is those rows."""
        replaced = self.replacement(name, rows)
        if replaced is not None:
            return replaced
        delta = self.delta(name, rows)
        base32 = base_tensor.to(torch.float32)
        return base32 if delta is None else base32 + delta


class _SafetensorsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.header = read_safetensors_header(path)
        self.names = list(self.header)

    def get(self, key: str) -> torch.Tensor:
        return read_tensor(self.header[key], key)
