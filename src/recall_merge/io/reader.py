"""Lazy, validated access to the tensors of a Hugging Face model folder.

Headers are parsed and checked (sizes, offsets, shard list) when the checkpoint is opened, so
a corrupt or truncated file is reported before any tensor data is read.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from recall_merge.errors import CheckpointError

SAFETENSORS_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4),
    "I16": (torch.int16, 2), "I8": (torch.int8, 1), "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}
TORCH_TO_SAFETENSORS = {torch_dtype: name for name, (torch_dtype, _) in SAFETENSORS_DTYPES.items()}

MAX_HEADER_BYTES = 100 * 2**20  # the safetensors format's own limit


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape and byte range inside the data section."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header. Raises CheckpointError naming the file and fault."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path} is truncated: {size} bytes, not even a header",
                                      "re-download or re-save this file")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise CheckpointError(
                    f"{path} is corrupted or truncated: header claims {header_len} bytes in a "
                    f"{size}-byte file", "re-download or re-save this file")
            raw = handle.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}", "check the path and permissions") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not JSON)",
                              "re-download or re-save this file") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a malformed safetensors header", "re-save this file")
    data_start = 8 + header_len
    data_size = size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: header entry for {name!r} is malformed", "re-save this file") from None
        if dtype_name not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name}",
                                  "convert the checkpoint to float32, float16 or bfloat16")
        dtype, itemsize = SAFETENSORS_DTYPES[dtype_name]
        expected = math.prod(shape) * itemsize
        if not (0 <= begin <= end) or end - begin != expected:
            raise CheckpointError(
                f"{path}: header lies about tensor {name!r}: shape {list(shape)} × {dtype_name} needs "
                f"{expected} bytes but offsets give {end - begin}", "re-download or re-save this file")
        if end > data_size:
            raise CheckpointError(
                f"{path} is truncated: tensor {name!r} ends at byte {end} of a {data_size}-byte data "
                "section", "re-download this file (the copy is incomplete)")
        tensors[name] = TensorInfo(path, dtype, shape, data_start + begin, data_start + end)
    return tensors


class Checkpoint:
    """A model folder: config plus a name → TensorInfo map over one or more safetensors shards."""

    def __init__(self, folder: Path, *, allow_pickle: bool = False) -> None:
        self.folder = Path(folder)
        if not self.folder.exists():
            raise CheckpointError(f"model folder {str(self.folder)!r} does not exist",
                                  "check the path, or use a packaged name such as 'smollm2'")
        if not self.folder.is_dir():
            raise CheckpointError(f"{str(self.folder)!r} is a file, not a model folder",
                                  "point to the folder holding config.json and the weights")
        self.config = _read_config(self.folder)
        self.tensors: dict[str, TensorInfo] = {}
        self._pickle_state: dict[str, torch.Tensor] | None = None
        self._handles: dict[Path, object] = {}
        index = self.folder / "model.safetensors.index.json"
        single = self.folder / "model.safetensors"
        if index.exists():
            self._open_sharded(index)
        elif single.exists():
            self.tensors = read_safetensors_header(single)
        else:
            others = sorted(self.folder.glob("*.safetensors"))
            if others:
                for shard in others:
                    self.tensors.update(read_safetensors_header(shard))
            else:
                self._open_pickle(allow_pickle)

    def _open_sharded(self, index: Path) -> None:
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            raise CheckpointError(f"{index} is not a valid safetensors index (no weight_map)",
                                  "re-download the index file") from None
        for shard_name in sorted(set(weight_map.values())):
            shard = self.folder / shard_name
            if not shard.exists():
                raise CheckpointError(f"shard {shard_name!r} listed in {index.name} is missing from {self.folder}",
                                      "re-download the missing shard (the checkpoint is incomplete)")
            header = read_safetensors_header(shard)
            for name, info in header.items():
                if weight_map.get(name) == shard_name:
                    self.tensors[name] = info
        missing = [name for name in weight_map if name not in self.tensors]
        if missing:
            raise CheckpointError(f"{index.name} lists {len(missing)} tensors not found in their shards "
                                  f"(first: {missing[0]!r})", "re-download the checkpoint")

    def _open_pickle(self, allow_pickle: bool) -> None:
        candidates = sorted(self.folder.glob("*.bin")) + sorted(self.folder.glob("*.pt"))
        if not candidates:
            raise CheckpointError(f"no weights found in {self.folder} (no *.safetensors, no *.bin)",
                                  "point to a folder with model.safetensors or a sharded index")
        if not allow_pickle:
            raise CheckpointError(
                f"{self.folder} holds only pickle checkpoints ({candidates[0].name}); loading pickle "
                "can run arbitrary code, so it is refused by default",
                "convert it to safetensors, or set `allow_pickle: true` (loads with weights_only=True)")
        state: dict[str, torch.Tensor] = {}
        for file in candidates:
            try:
                loaded = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # torch raises many types for bad pickles
                raise CheckpointError(f"cannot load {file} safely: {exc}", "convert it to safetensors") from None
            state.update(loaded)
        self._pickle_state = state
        for name, tensor in state.items():
            self.tensors[name] = TensorInfo(Path("<pickle>"), tensor.dtype, tuple(tensor.shape), 0,
                                            tensor.numel() * tensor.element_size())

    @property
    def num_layers(self) -> int:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if key in self.config:
                return int(self.config[key])
        raise CheckpointError(f"{self.folder}/config.json has no num_hidden_layers",
                              "use a standard transformers config.json")

    def get(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Read one tensor, or rows [start, stop) of it (a fresh CPU tensor; nothing else of the
        file stays in memory)."""
        if self._pickle_state is not None:
            tensor = self._pickle_state[name]
            return tensor if rows is None else tensor[rows[0]:rows[1]]
        return read_tensor(self.tensors[name], name, rows)

    def get_mapped(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors as views of their memory-mapped shards: no copy, pages shared with
        the OS cache and read only when touched (faster than ``get`` for whole-model passes).
        Each shard is mapped once and stays mapped while any of its views lives, so dropping the
        dict releases the memory. Treat the views as read-only: the mapping is private
        (copy-on-write), so a write never reaches the file, but other views of the same call would
        see it. Pickle checkpoints, and tensors whose offset does not fit their dtype's alignment,
        are read as ``get`` does."""
        shards: dict[Path, torch.Tensor] = {}
        tensors: dict[str, torch.Tensor] = {}
        for name in names:
            info = self.tensors[name]
            if self._pickle_state is not None or info.start % info.dtype.itemsize:
                tensors[name] = self.get(name)
                continue
            whole = shards.get(info.file)
            if whole is None:
                with open(info.file, "rb") as handle:
                    mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
                whole = shards[info.file] = torch.frombuffer(mapping, dtype=torch.uint8)
            tensors[name] = whole[info.start:info.end].view(info.dtype).reshape(info.shape)
        return tensors


def read_tensor(info: TensorInfo, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Read one tensor (or rows [start, stop) of its first dimension) straight into a fresh,
    uninitialised CPU buffer: no zero-fill, no mmap page faults, nothing kept mapped after."""
    shape, start, nbytes = info.shape, info.start, info.nbytes
    if rows is not None:
        row_bytes = info.nbytes // max(info.shape[0], 1)
        shape = (rows[1] - rows[0], *info.shape[1:])
        start, nbytes = info.start + rows[0] * row_bytes, (rows[1] - rows[0]) * row_bytes
    buffer = torch.empty(nbytes, dtype=torch.uint8)
    if nbytes:
        view = memoryview(buffer.numpy())
        with open(info.file, "rb", buffering=0) as handle:
            handle.seek(start)
            read = 0
            while read < nbytes:  # readinto may return short counts on large reads
                count = handle.readinto(view[read:])
                if not count:
                    raise CheckpointError(f"{info.file} ended while reading {name!r}", "re-download the file")
                read += count
    return buffer.view(info.dtype).reshape(shape)


def check_finite(tensor: torch.Tensor, name: str, source: Path | str) -> None:
    """Refuse a tensor with NaN or Inf entries, naming it and its model.

    A sum is ~20× cheaper than isfinite().all() and is NaN/Inf whenever an entry is; only a
    suspicious sum (or an overflow of it) pays for the exact elementwise check.
    """
    if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
        raise CheckpointError(f"tensor {name!r} of {source} contains NaN or Inf values",
                              "this checkpoint is broken (diverged training?); use a healthy one")


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise CheckpointError(f"{folder} has no config.json, so it is not a Hugging Face model folder",
                              "point to the folder that holds config.json (or a LoRA adapter folder)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}", "repair or re-download config.json") from None
