"""Streaming, sharded safetensors writer.

Output tensor shapes and dtypes are known before the merge starts, so each shard's header is
written first and tensors are appended one at a time as the engine produces them. Peak memory is
the tensors in flight, not a whole shard (safetensors' own `save_file` needs the shard in memory).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from recall_merge.io.reader import TORCH_TO_SAFETENSORS

REPORT_NAME = "recall_report.json"  # what every merge output carries beside its weights

INDEX_NAME = "model.safetensors.index.json"


@dataclass
class _Shard:
    file_name: str
    names: list[str] = field(default_factory=list)
    nbytes: int = 0


class StreamingShardWriter:
    """Writes tensors in a fixed order into planned shards.

    ``plan`` is the ordered list of (name, dtype, shape) of every output tensor. ``write`` must be
    called once per tensor in exactly that order.
    """

    def __init__(self, folder: Path, plan: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 max_shard_bytes: int, metadata: dict[str, str] | None = None) -> None:
        self.folder = Path(folder)
        self.plan = plan
        self.metadata = {"format": "pt", **(metadata or {})}
        self.specs = {name: (dtype, shape) for name, dtype, shape in plan}
        self.shards = self._assign_shards(max_shard_bytes)
        self._order = [name for shard in self.shards for name in shard.names]
        self._position = 0
        self._shard_index = -1
        self._handle = None
        self._remaining_in_shard = 0
        self._written = 0  # elements of the current tensor written so far

    def _assign_shards(self, max_shard_bytes: int) -> list[_Shard]:
        shards: list[_Shard] = [_Shard("")]
        for name, dtype, shape in self.plan:
            size = _nbytes(dtype, shape)
            if shards[-1].names and shards[-1].nbytes + size > max_shard_bytes:
                shards.append(_Shard(""))
            shards[-1].names.append(name)
            shards[-1].nbytes += size
        total = len(shards)
        for number, shard in enumerate(shards, start=1):
            shard.file_name = ("model.safetensors" if total == 1
                               else f"model-{number:05d}-of-{total:05d}.safetensors")
        return shards

    def _open_next_shard(self) -> None:
        self._shard_index += 1
        shard = self.shards[self._shard_index]
        header: dict[str, object] = {"__metadata__": self.metadata}
        offset = 0
        for name in shard.names:
            dtype, shape = self.specs[name]
            size = _nbytes(dtype, shape)
            header[name] = {"dtype": TORCH_TO_SAFETENSORS[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)  # the format aligns the data section to 8 bytes
        self._handle = open(self.folder / shard.file_name, "wb")  # noqa: SIM115 - closed in _close
        self._handle.write(struct.pack("<Q", len(encoded)))
        self._handle.write(encoded)
        self._remaining_in_shard = len(shard.names)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append a whole tensor."""
        self.write_part(name, tensor, last=True)

    def write_part(self, name: str, part: torch.Tensor, last: bool) -> None:
        """Append a block of rows of tensor ``name``; ``last`` closes the tensor. Row blocks of a
        C-contiguous tensor are consecutive in the file, so they are simply appended."""
        expected = self._order[self._position]
        if name != expected:
            raise RuntimeError(f"writer expected tensor {expected!r}, got {name!r}")
        dtype, shape = self.specs[name]
        total = math.prod(shape)
        if part.dtype != dtype or (len(shape) > 0 and tuple(part.shape[1:]) != tuple(shape[1:])):
            raise RuntimeError(f"{name}: planned {dtype} {list(shape)}, got {part.dtype} {list(part.shape)}")
        if self._written == 0 and self._remaining_in_shard == 0:
            self._open_next_shard()
        data = part.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._handle.write(memoryview(data))
        self._written += part.numel()
        if not last:
            return
        if self._written != total:
            raise RuntimeError(f"{name}: wrote {self._written} of {total} elements")
        self._written = 0
        self._position += 1
        self._remaining_in_shard -= 1
        if self._remaining_in_shard == 0:
            self._close()

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            self._handle.close()
            self._handle = None

    def finish(self) -> list[str]:
        """Check every tensor arrived, write the index for a sharded output; return file names."""
        if self._position != len(self._order):
            raise RuntimeError(f"writer got {self._position} of {len(self._order)} tensors")
        self._close()
        if len(self.shards) > 1:
            weight_map = {name: shard.file_name for shard in self.shards for name in shard.names}
            total = sum(shard.nbytes for shard in self.shards)
            (self.folder / INDEX_NAME).write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        return [shard.file_name for shard in self.shards]

    def abort(self) -> None:
        self._close()


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()
