"""PEFT LoRA adapters as dense per-tensor deltas on a base checkpoint.

A LoRA expert's weight is W + ΔW with ΔW = B·A·(lora_alpha / r) (or / √r with rsLoRA). The merge
needs ΔW per tensor, never A and B separately: averaging A and B on their own is not a merge of
the experts (it introduces cross terms B_i·A_j).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from recall_merge.errors import CheckpointError
from recall_merge.io.reader import (
    Checkpoint,
    check_same_dtype_class,
    excerpt,
    load_pickle_state,
    read_json_object,
    read_safetensors_header,
    read_tensor,
    weight_file_inside,
)

ADAPTER_CONFIG = "adapter_config.json"


def is_lora_folder(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).exists()


# float64 bytes of B·A made at once (row blocks of the product). A block this size stays in the
# core's cache while it is rounded, added to the base and cast, instead of making each step's
# full-size temporary in memory (64 MB blocks before): with the output check below, a Qwen2-7B
# merge of three rank-16 experts' factors went from 161 s to 103–107 s of merge stage, the same
# bytes (benchmarks/merge_speed/merge_stages.py; docs/speed.md, footnote 6).
DELTA_CHUNK_BYTES = 4 << 20

class LoraAdapter:
    """Dense deltas of one adapter, keyed by the base tensor name they modify."""

    def __init__(self, folder: Path, base: Checkpoint, *, allow_pickle: bool = False) -> None:
        self.folder = Path(folder)
        self.config = read_json_object(self.folder / ADAPTER_CONFIG, "adapter config",
                                       "re-save the adapter with peft's save_pretrained")
        peft_type = self.config.get("peft_type", "LORA")
        if peft_type != "LORA":
            raise CheckpointError(f"{self.folder} is a {excerpt(peft_type)} adapter; only LoRA is supported",
                                  "merge the adapter into its base with peft first and pass the folder")
        self._read_settings()
        merged_first = "merge it into the base with peft (merge_and_unload) and pass that folder"
        if self.config.get("use_dora"):
            raise CheckpointError(f"{self.folder} is a DoRA adapter, whose update is not a plain delta",
                                  merged_first)
        if self.config.get("lora_bias"):
            raise CheckpointError(f"{self.folder} trains a bias in lora_B (lora_bias), which has no "
                                  "place in the base's bias-free weights", merged_first)
        weights = self.folder / "adapter_model.safetensors"
        if not (weights.exists() or weights.is_symlink()):
            if (self.folder / "adapter_model.bin").exists():
                if not allow_pickle:
                    raise CheckpointError(
                        f"{self.folder} holds a pickle adapter (adapter_model.bin), refused by default",
                        "re-save it with safetensors, or set `allow_pickle: true`")
                self._tensors = load_pickle_state(
                    weight_file_inside(self.folder, self.folder / "adapter_model.bin"), mmap=False)
                self._reader = None
            else:
                raise CheckpointError(f"{self.folder} has no adapter_model.safetensors",
                                      "point to a folder written by peft's save_pretrained")
        else:
            self._reader = _SafetensorsFile(weight_file_inside(self.folder, weights))
            self._tensors = None
        self.modules: dict[str, tuple[str, str]] = {}  # base tensor name -> (A key, B key)
        self.replacements: dict[str, str] = {}  # base tensor name -> adapter key (modules_to_save)
        self._index_keys(base)

    def _read_settings(self) -> None:
        """The adapter_config fields the delta depends on, each type-checked: ``bool("false")`` is
        True and ``float("x")`` a traceback, so a wrong type must be refused, not coerced."""
        config, path = self.config, self.folder / ADAPTER_CONFIG

        def refuse(key: str, expected: str) -> CheckpointError:
            return CheckpointError(f"{path}: {key} is {excerpt(config[key])}, not {expected}",
                                   "re-save the adapter with peft's save_pretrained")

        def number(value: object) -> bool:
            return (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value))

        rank = config.get("r", 8)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise refuse("r", "a positive whole number")
        alpha = config.get("lora_alpha", rank)
        if not number(alpha):
            raise refuse("lora_alpha", "a finite number")
        for key in ("use_rslora", "fan_in_fan_out", "use_dora", "lora_bias"):
            if config.get(key) is not None and not isinstance(config[key], bool):
                raise refuse(key, "true or false")
        for key, expected in (("rank_pattern", "a positive whole number"), ("alpha_pattern", "a finite number")):
            value = config.get(key) or {}
            ok = (lambda v: number(v) and v > 0 and float(v).is_integer()) if key == "rank_pattern" else number
            if not isinstance(value, dict) or not all(ok(item) for item in value.values()):
                raise refuse(key, f"a mapping of module patterns to {expected}s")
        self.rank = rank
        self.alpha = float(alpha)
        self.rslora = bool(config.get("use_rslora", False))
        self.fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
        self.rank_pattern: dict = config.get("rank_pattern") or {}
        self.alpha_pattern: dict = config.get("alpha_pattern") or {}

    def _keys(self) -> list[str]:
        return list(self._reader.names) if self._reader is not None else list(self._tensors)

    def _index_keys(self, base: Checkpoint) -> None:
        keys = self._keys()
        present = set(keys)
        merged_first = "merge the adapter into the base with peft (merge_and_unload) and pass that folder"
        for key in keys:
            stripped = key.removeprefix("base_model.model.")
            if "lora_embedding" in stripped:
                raise CheckpointError(f"{self.folder}: LoRA on embedding layers is not supported", merged_first)
            if "lora_magnitude" in stripped or "trainable_tokens" in stripped:
                # DoRA magnitudes or PEFT trainable tokens: neither is a plain ΔW or a whole tensor
                kind = "DoRA magnitude vectors" if "lora_magnitude" in stripped else "trainable token rows"
                raise CheckpointError(f"{self.folder} holds {kind} ({excerpt(key, 200)}), which this "
                                      "tool cannot merge as a delta", merged_first)
            if ".lora_A." in stripped or ".lora_B." in stripped:
                a_key, b_key = key.replace(".lora_B.", ".lora_A."), key.replace(".lora_A.", ".lora_B.")
                module = stripped.split(".lora_A.")[0].split(".lora_B.")[0]
                if not a_key.endswith(".weight") or not b_key.endswith(".weight"):
                    raise CheckpointError(f"{self.folder}: {excerpt(key, 200)} is not a LoRA weight (a LoRA "
                                          "bias or an unknown layout)", merged_first)
                if a_key not in present or b_key not in present:
                    # one half alone is no delta: dropping it would merge the base weight silently
                    have, lack = ("lora_A", "lora_B") if a_key in present else ("lora_B", "lora_A")
                    raise CheckpointError(f"{self.folder}: module {excerpt(module, 200)} has {have} but no "
                                          f"{lack} ({excerpt(b_key if have == 'lora_A' else a_key, 200)} is "
                                          "missing)", "re-save the adapter (it is incomplete)")
                if key != a_key:
                    continue  # the pair is indexed from its lora_A key
                name = self._base_name(module + ".weight", base)
                if name in self.modules:
                    raise CheckpointError(f"{self.folder} has two LoRA pairs for {excerpt(name, 200)} "
                                          f"({excerpt(self.modules[name][0], 200)} and {excerpt(key, 200)})",
                                          "re-save the adapter with one adapter name (peft save_pretrained)")
                self.modules[name] = (a_key, b_key)
            else:
                name = self._base_name(stripped.replace(".modules_to_save.default", ""), base)
                if name in self.replacements:
                    raise CheckpointError(f"{self.folder} replaces {excerpt(name, 200)} twice "
                                          f"({excerpt(self.replacements[name], 200)} and {excerpt(key, 200)})",
                                          "re-save the adapter with one adapter name (peft save_pretrained)")
                self.replacements[name] = key
        if not self.modules and not self.replacements:
            raise CheckpointError(f"{self.folder} holds no LoRA tensors", "check that it is a LoRA adapter")
        both = next((name for name in self.modules if name in self.replacements), None)
        if both is not None:
            raise CheckpointError(f"{self.folder} both adapts {excerpt(both, 200)} with LoRA and replaces it "
                                  "(modules_to_save): which one to merge is ambiguous",
                                  "re-save the adapter with the module in only one of the two")
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
            f"adapter {self.folder} targets {excerpt(name, 200)}, which the base model does not have: the "
            "adapter was made for another base model", "merge it with the base model it was trained on")

    def _check_shapes(self, base: Checkpoint) -> None:
        fix = "merge it with the base model it was trained on"
        for name, (a_key, b_key) in self.modules.items():
            base_shape = base.tensors[name].shape
            label = excerpt(name, 200)
            if len(base_shape) != 2 or not base.tensors[name].dtype.is_floating_point:
                raise CheckpointError(
                    f"adapter {self.folder} puts LoRA on {label}, a {len(base_shape)}-D "
                    f"{str(base.tensors[name].dtype).removeprefix('torch.')} tensor of the base: LoRA "
                    "adapts 2-D floating-point weight matrices (linear layers) only",
                    "re-train or re-save the adapter with target_modules naming linear layers only")
            for key in (a_key, b_key):
                if not self._dtype(key).is_floating_point:
                    raise CheckpointError(
                        f"adapter {self.folder}: {excerpt(key, 200)} is "
                        f"{str(self._dtype(key)).removeprefix('torch.')}, not floating point",
                        "re-save the adapter (its header is wrong)")
            a_shape, b_shape = self._shape(a_key), self._shape(b_key)
            if len(a_shape) != 2 or len(b_shape) != 2:
                raise CheckpointError(
                    f"adapter {self.folder} at {label}: lora_A {list(a_shape)} and lora_B {list(b_shape)} "
                    "must both be matrices (2-D)", "re-save the adapter")
            if a_shape[0] != b_shape[1]:
                raise CheckpointError(
                    f"adapter {self.folder} at {label}: lora_A has rank {a_shape[0]} ({list(a_shape)}) but "
                    f"lora_B has rank {b_shape[1]} ({list(b_shape)}): a rank or target mismatch inside the adapter",
                    "re-save the adapter (A and B of one module must have the same rank)")
            if a_shape[0] < 1 or (not self.rank_pattern and a_shape[0] != self.rank) or (
                    self.rank_pattern and a_shape[0] not in {self.rank, *self.rank_pattern.values()}):
                raise CheckpointError(
                    f"adapter {self.folder} at {label}: lora_A/lora_B have rank {a_shape[0]}, but "
                    f"{ADAPTER_CONFIG} says r = {self.rank}"
                    + (" (or a rank_pattern value)" if self.rank_pattern else ""),
                    "re-save the adapter (its weights and adapter_config.json disagree)")
            out_features, in_features = base_shape
            if self.fan_in_fan_out:
                out_features, in_features = in_features, out_features
            if a_shape[1] != in_features or b_shape[0] != out_features:
                raise CheckpointError(
                    f"adapter {self.folder} does not fit the base at {label}: lora_A {list(a_shape)}, "
                    f"lora_B {list(b_shape)} vs base weight {list(base_shape)} (rank or "
                    "target mismatch: the adapter was made for another base)", fix)
        for name, key in self.replacements.items():
            base_info = base.tensors[name]
            if tuple(self._shape(key)) != tuple(base_info.shape):
                raise CheckpointError(
                    f"adapter {self.folder} replaces {excerpt(name, 200)} (modules_to_save) with a tensor of "
                    f"shape {list(self._shape(key))}, but the base's has shape {list(base_info.shape)}", fix)
            check_same_dtype_class(name, self._dtype(key), base_info.dtype, self.folder, base.folder)

    def _shape(self, key: str) -> tuple[int, ...]:
        if self._reader is not None:
            return self._reader.header[key].shape
        return tuple(self._tensors[key].shape)

    def _dtype(self, key: str) -> torch.dtype:
        if self._reader is not None:
            return self._reader.header[key].dtype
        return self._tensors[key].dtype

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
        return float64_product(lora_b.double(), lora_a.double(), scale)

    def factors(self, name: str, dtype: torch.dtype = torch.float32,
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The low-rank form of :meth:`delta`: (B', A') in ``dtype`` with ΔW = B'·A' in the base
        weight's orientation (the scale folded into B', a fan_in_fan_out adapter turned around),
        or None when the adapter does not adapt this tensor with LoRA."""
        if name not in self.modules:
            return None
        a_key, b_key = self.modules[name]
        lora_a = self._get(a_key).to(dtype)
        lora_b = self._get(b_key).to(dtype)
        scale = self._scale(name, lora_a.shape[0])
        if self.fan_in_fan_out:  # ΔW = (B·A)ᵀ = Aᵀ·Bᵀ
            return lora_a.T.contiguous() * scale, lora_b.T.contiguous()
        return lora_b * scale, lora_a

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
        if delta is None:
            return base_tensor.to(torch.float32)
        return delta.add_(base_tensor)  # in place (float32 += the base): no third full tensor


class _SafetensorsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.header = read_safetensors_header(path)
        self.names = list(self.header)

    def get(self, key: str) -> torch.Tensor:
        return read_tensor(self.header[key], key)


def _chunk_rows(cols: int) -> int:
    """Rows of a (rows, cols) float64 product that fit DELTA_CHUNK_BYTES."""
    return max(1, DELTA_CHUNK_BYTES // (8 * max(cols, 1)))


def float64_product(left: torch.Tensor, right: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``(left @ right) · scale`` (float64 factors) as float32, made in float64 and rounded once.

    A float32 matmul's kernel (and so its last bit) depends on the number of rows, and a row block
    must give the whole tensor's bytes; float64 then one rounding does. Made DELTA_CHUNK_BYTES of
    float64 at a time (row blocks, the same bytes): a whole float64 product of Qwen2-7B's
    18944 × 3584 MLP matrix would be a 543 MB temporary. ``left`` (rows, k), ``right`` (k, cols)
    → (rows, cols)."""
    product = torch.empty(left.shape[0], right.shape[1], dtype=torch.float32)
    step = _chunk_rows(right.shape[1])
    for start in range(0, left.shape[0], step):
        block = left[start:start + step] @ right
        product[start:start + step] = block * scale if scale != 1.0 else block
    return product


def low_rank_combination(base: torch.Tensor, base_coefficient: float,
                         terms: list[tuple[float, torch.Tensor, torch.Tensor]],
                         out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``base_coefficient · base + Σ_k c_k · B_k·A_k``: a merge that is a fixed linear combination
    of the models (Σ_i c_i θ_i, base first) made from LoRA experts' factors, since
    Σ_i c_i θ_i = (Σ_i c_i) θ_base + Σ_k c_k ΔW_k. The N products become one, of inner size
    Σ_k r_k ([c_1 B_1 … c_N B_N] · [A_1; …; A_N]), and no expert's full tensor is made.

    ``terms``: (c_k, B_k, A_k) in float64, B (rows, r_k), A (r_k, cols), the adapter's scale in B;
    ``base`` (rows, cols) in its file's dtype → (rows, cols) in ``out_dtype``. Per element: the
    float64 product rounded once to float32, plus the float32 base times its coefficient, then
    the cast; made DELTA_CHUNK_BYTES of rows at a time, each row block through every step while it
    is in cache (the same bytes in any row blocks)."""
    if not terms:
        return (base.to(torch.float32) * base_coefficient).to(out_dtype)
    out = torch.empty(base.shape, dtype=out_dtype)
    left = torch.cat([coefficient * lora_b for coefficient, lora_b, _ in terms], dim=1)
    right = torch.cat([lora_a for _, _, lora_a in terms], dim=0)
    step = _chunk_rows(right.shape[1])
    for start in range(0, left.shape[0], step):
        rows = slice(start, start + step)
        block = (left[rows] @ right).to(torch.float32)  # (step, cols), rounded once
        out[rows] = block.add_(base[rows].to(torch.float32), alpha=base_coefficient)
    return out
