"""Lazy, validated access to the tensors of a Hugging Face model folder.

Headers are parsed and checked (sizes, offsets, shard list) when the checkpoint is opened, so
a corrupt or truncated file is reported before any tensor data is read.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

import torch

from recall_merge.errors import CheckpointError, excerpt

# A model folder's tokenizer files (checked by the pool, copied into merge outputs, fetched from
# the hub with the weights).
TOKENIZER_JSON_FILES = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json",
                        "added_tokens.json", "chat_template.json", "vocab.json")
TOKENIZER_OTHER_FILES = ("merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
                         "sentencepiece.bpe.model", "chat_template.jinja")

SAFETENSORS_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4),
    "I16": (torch.int16, 2), "I8": (torch.int8, 1), "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}
TORCH_TO_SAFETENSORS = {torch_dtype: name for name, (torch_dtype, _) in SAFETENSORS_DTYPES.items()}

MAX_HEADER_BYTES = 100 * 2**20  # the safetensors format's own limit
MAX_JSON_BYTES = 512 * 2**20  # config, index and tokenizer files; far above any real one
INDEX_NAME = "model.safetensors.index.json"


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
    """Parse and validate a safetensors header. Raises CheckpointError naming the file and fault.

    Checked as the reference implementation (safetensors-rs) checks before it reads anything:
    every entry is ``{"dtype": str, "shape": [int >= 0, ...], "data_offsets": [int, int]}``, the
    offsets match dtype × shape, and the tensors tile the data section exactly (no overlap, no
    hole, nothing after the last one). Without this a header could alias two tensors, reinterpret
    bytes, or make a read land outside the file.
    """
    with open_regular_file(path, "safetensors file") as handle:
        try:
            size = os.fstat(handle.fileno()).st_size
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
            raise CheckpointError(f"cannot read {path}: {exc.strerror}",
                                  "check the path and permissions") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKeyError as exc:
        raise CheckpointError(f"{path}: the safetensors header lists {_quote(exc.key)} twice",
                              "re-save this file (the header is corrupted)") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not JSON)",
                              "re-download or re-save this file") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a malformed safetensors header (a JSON {_json_type(header)}, "
                              "not a mapping of tensor names)", "re-save this file")
    data_start = 8 + header_len
    data_size = size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            _check_metadata(path, entry)
            continue
        dtype_name, shape, begin, end = _header_entry(path, name, entry)
        dtype, itemsize = SAFETENSORS_DTYPES[dtype_name]
        expected = math.prod(shape) * itemsize
        if end - begin != expected:
            raise CheckpointError(
                f"{path}: header lies about tensor {_quote(name)}: shape {excerpt(shape)} × {dtype_name} "
                f"needs {expected} bytes but offsets give {end - begin}", "re-download or re-save this file")
        if end > data_size:
            raise CheckpointError(
                f"{path} is truncated or its header lies: tensor {_quote(name)} ends at byte {end} of a "
                f"{data_size}-byte data section", "re-download this file (the copy is incomplete)")
        tensors[name] = TensorInfo(path, dtype, tuple(shape), data_start + begin, data_start + end)
    _check_layout(path, tensors, data_start, data_size)
    return tensors


def _header_entry(path: Path, name: str, entry: object) -> tuple[str, list[int], int, int]:
    """(dtype name, shape, begin, end) of one header entry, every field type-checked: a float
    offset would become a float seek, a string or negative dimension a wrong byte count."""
    def refuse(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: header entry for tensor {_quote(name)} is malformed: {what}",
                               "re-save this file with the safetensors library")

    if not isinstance(entry, dict):
        raise refuse(f"a JSON {_json_type(entry)}, not a mapping with dtype, shape and data_offsets")
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in entry]
    if missing:
        raise refuse(f"no {missing[0]!r}")
    dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype_name, str):
        raise refuse(f"dtype is {excerpt(dtype_name)}, not a name such as \"F32\"")
    if dtype_name not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{path}: tensor {_quote(name)} has unsupported dtype {excerpt(dtype_name)}",
                              "convert the checkpoint to float32, float16 or bfloat16")
    if not isinstance(shape, list) or not all(_is_int(dim) and dim >= 0 for dim in shape):
        raise refuse(f"shape is {excerpt(shape)}, not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise refuse(f"data_offsets is {excerpt(offsets)}, not two integers [begin, end] with "
                     "0 <= begin <= end")
    return dtype_name, shape, offsets[0], offsets[1]


def _check_metadata(path: Path, metadata: object) -> None:
    # The format allows only string -> string here; other readers refuse anything else.
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise CheckpointError(f"{path}: the header's __metadata__ is {excerpt(metadata)}, not a mapping "
                              "of strings to strings", "re-save this file with the safetensors library")


def _check_layout(path: Path, tensors: dict[str, TensorInfo], data_start: int, data_size: int) -> None:
    """Tensors must tile the data section: overlapping ranges would alias two tensors' bytes, and
    a hole or a tail means the header does not describe the data (safetensors-rs refuses both)."""
    ordered = sorted(tensors.items(), key=lambda item: (item[1].start, item[1].end))
    for (first, before), (second, after) in zip(ordered, ordered[1:], strict=False):
        if after.start < before.end:
            raise CheckpointError(
                f"{path}: the header's byte ranges overlap: tensor {_quote(second)} starts at byte "
                f"{after.start - data_start}, inside tensor {_quote(first)} (bytes "
                f"{before.start - data_start}-{before.end - data_start})",
                "re-download or re-save this file (its header is corrupted or forged)")
    cursor = 0
    for name, info in ordered:
        if info.start - data_start > cursor:
            raise CheckpointError(
                f"{path}: bytes {cursor}-{info.start - data_start} of the data section belong to no "
                f"tensor (a hole before {_quote(name)})", "re-download or re-save this file")
        cursor = info.end - data_start
    if cursor != data_size:
        raise CheckpointError(
            f"{path}: {data_size - cursor} bytes after the last tensor belong to no tensor",
            "re-download or re-save this file (it is not one intact safetensors file)")


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
        index = self.folder / INDEX_NAME
        single = self.folder / "model.safetensors"
        if _present(index):
            self._open_sharded(index)
        elif _present(single):
            self._add_shard(weight_file_inside(self.folder, single))
        else:
            others = sorted(self.folder.glob("*.safetensors"))
            if others:
                for shard in others:
                    self._add_shard(weight_file_inside(self.folder, shard))
            else:
                self._open_pickle(allow_pickle)
        if not self.tensors:
            raise CheckpointError(f"{self.folder} holds no tensors (its weight files are empty)",
                                  "re-download or re-save the checkpoint")

    def _add_shard(self, shard: Path, keep: Callable[[str], bool] | None = None) -> None:
        for name, info in read_safetensors_header(shard).items():
            if keep is not None and not keep(name):
                continue
            if name in self.tensors:
                raise CheckpointError(
                    f"{self.folder}: tensor {_quote(name)} is in both {self.tensors[name].file.name} and "
                    f"{shard.name}", "remove the stray file (the folder mixes two checkpoints?)")
            self.tensors[name] = info

    def _open_sharded(self, index: Path) -> None:
        document = read_json_object(index, "safetensors index", "re-download the index file")
        weight_map = document.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} is not a valid safetensors index (its weight_map is "
                                  f"{excerpt(weight_map)}, not a mapping of tensor names to shard files)",
                                  "re-download the index file")
        for name, shard_name in weight_map.items():
            if not isinstance(shard_name, str) or not shard_name:
                raise CheckpointError(f"{index}: weight_map maps tensor {_quote(name)} to "
                                      f"{excerpt(shard_name)}, not a shard file name", "re-download the index file")
        for shard_name in sorted(set(weight_map.values())):
            shard = _shard_path(self.folder, shard_name, index.name)
            if not _present(shard):
                raise CheckpointError(f"shard {_quote(shard_name)} listed in {index.name} is missing from "
                                      f"{self.folder}", "re-download the missing shard (the checkpoint is incomplete)")
            self._add_shard(weight_file_inside(self.folder, shard),
                            keep=lambda name, listed=shard_name: weight_map.get(name) == listed)
        missing = [name for name in weight_map if name not in self.tensors]
        if missing:
            raise CheckpointError(f"{index.name} lists {len(missing)} tensors not found in their shards "
                                  f"(first: {_quote(missing[0])})", "re-download the checkpoint")

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
            for name, tensor in load_pickle_state(weight_file_inside(self.folder, file)).items():
                if name in state:
                    raise CheckpointError(f"{self.folder}: tensor {_quote(name)} is in two pickle files "
                                          f"(the second: {file.name})", "remove the stray file")
                state[name] = tensor
        self._pickle_state = state
        for name, tensor in state.items():
            self.tensors[name] = TensorInfo(Path("<pickle>"), tensor.dtype, tuple(tensor.shape), 0,
                                            tensor.numel() * tensor.element_size())

    @property
    def num_layers(self) -> int:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if key in self.config:
                value = self.config[key]
                if not _is_int(value) or value < 1:
                    raise CheckpointError(f"{self.folder}/config.json: {key} is {excerpt(value)}, not a "
                                          "positive whole number", "repair or re-download config.json")
                return value
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


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every entry is finite. A sum is ~20× cheaper than isfinite().all() and is NaN/Inf
    whenever an entry is; only a suspicious sum (or an overflow of it) pays for the exact
    elementwise check. Every finite check of inputs and outputs goes through here."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def check_finite(tensor: torch.Tensor, name: str, source: Path | str) -> None:
    """Refuse a tensor with NaN or Inf entries, naming it and its model."""
    if not all_finite(tensor):
        raise CheckpointError(f"tensor {name!r} of {source} contains NaN or Inf values",
                              "this checkpoint is broken (diverged training?); use a healthy one")


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"{folder} has no config.json, so it is not a Hugging Face model folder",
                              "point to the folder that holds config.json (or a LoRA adapter folder)")
    return read_json_object(path, "model config", "repair or re-download config.json")


def read_json_object(path: Path, what: str, fix: str, *, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """A JSON file that must hold an object (mapping): a regular, UTF-8, parseable, bounded file,
    or a CheckpointError saying which of these it is not (``what`` names the file's role)."""
    with open_regular_file(path, what) as handle:
        try:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise CheckpointError(f"{path} ({what}) is {size / 2**20:.0f} MiB, far larger than such a "
                                      "file can be", fix)
            raw = handle.read(max_bytes + 1)
        except OSError as exc:
            raise CheckpointError(f"cannot read {path}: {exc.strerror}", "check the path and permissions") from None
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} ({what}) is not UTF-8 text, so it is not valid JSON", fix) from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} ({what}) is not valid JSON: {exc.msg} at line {exc.lineno}, "
                              f"column {exc.colno}", fix) from None
    except RecursionError:
        raise CheckpointError(f"{path} ({what}) is not valid JSON: nested too deeply", fix) from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} ({what}) holds a JSON {_json_type(value)}, not an object "
                              "(a mapping of keys to values)", fix)
    return value


def open_regular_file(path: Path, what: str) -> BinaryIO:
    """Open ``path`` for binary reading only if it is a regular file (symlinks followed).

    A named pipe would block the open (or the read) forever and a device can be endless, so
    anything else is refused from its ``stat`` before it is opened; the opened descriptor is
    checked again (non-blocking open, then ``fstat``) in case the path was swapped in between.
    """
    check_regular_file(path, what)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({what}): {exc.strerror}",
                              "check the path and permissions") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise CheckpointError(f"{path} ({what}) changed into a non-regular file while being opened",
                              "replace it with the real file")
    return os.fdopen(descriptor, "rb")


def check_regular_file(path: Path, what: str) -> None:
    """Refuse ``path`` unless it is a regular file, without opening it."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "invalid path"
        raise CheckpointError(f"cannot read {path} ({what}): {reason}", "check the path and permissions") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path} ({what}) is {_file_kind(mode)}, not a regular file",
                              "replace it with the real file (not a pipe, device, socket or folder)")


def load_pickle_state(path: Path, *, mmap: bool = True) -> dict[str, torch.Tensor]:
    """A pickle checkpoint's ``name -> tensor`` dict, loaded with ``weights_only=True`` (the caller
    has checked that pickle is allowed). Any failure, or anything but a flat dict of tensors, is a
    CheckpointError: torch raises a dozen exception types for a bad pickle."""
    check_regular_file(path, "pickle checkpoint")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ValueError, ...
        raise CheckpointError(f"cannot load {path} safely: {excerpt(str(exc), 200)}",
                              "convert it to safetensors (or re-download it)") from None
    if not isinstance(loaded, dict) or not all(isinstance(key, str) and isinstance(value, torch.Tensor)
                                               for key, value in loaded.items()):
        raise CheckpointError(f"{path} is not a flat mapping of tensor names to tensors (a state dict)",
                              "re-save it with safetensors (save_pretrained / safetensors.torch.save_file)")
    return loaded


def _present(path: Path) -> bool:
    # A dangling link or a pipe still counts as there: refused by name later, never skipped.
    return path.exists() or path.is_symlink()


def _shard_path(folder: Path, name: str, index_name: str) -> Path:
    """The shard an index entry names, refused when the name itself leaves the folder (absolute,
    ``..``): an index must not make the merge read arbitrary files."""
    if ("\x00" in name or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute()
            or PureWindowsPath(name).drive or ".." in PurePosixPath(name).parts
            or ".." in PureWindowsPath(name).parts):
        raise CheckpointError(f"{index_name} in {folder} points shard {_quote(name)} outside the model folder",
                              "every shard must be a file inside the model folder: re-download the index")
    return folder / name


def resolves_inside(folder: Path, path: Path) -> bool:
    """Whether ``path`` resolves (links followed) inside ``folder``. The Hugging Face cache's own
    layout (``snapshots/<rev>/`` files linking to ``../../blobs/``) counts as inside."""
    root, target = Path(folder).resolve(), Path(path).resolve()
    if root in target.parents:
        return True
    return root.parent.name == "snapshots" and root.parent.parent / "blobs" in target.parents


def weight_file_inside(folder: Path, path: Path) -> Path:
    """``path``, refused when it is a link out of the model folder: the folder's own files, not
    whatever a link (or a downloaded repository's symlink) points at, are the model."""
    if resolves_inside(folder, path):
        return path
    raise CheckpointError(f"weight file {path.name} of {folder} leads outside the model folder "
                          f"(to {excerpt(str(Path(path).resolve()))})",
                          "copy the real file into the model folder instead of linking to it")


def check_same_dtype_class(name: str, dtype: torch.dtype, base_dtype: torch.dtype, source: Path,
                           base_folder: Path) -> None:
    """Refuse a tensor whose dtype class (floating point vs integer/bool) differs from the base's.

    Floating tensors are merged, integer ones passed through from the base: a header that calls
    float bytes I32 would merge reinterpreted bits (values ~1e9), or put an integer tensor where
    the model expects floats."""
    if dtype.is_floating_point == base_dtype.is_floating_point:
        return

    def kind(value: torch.dtype) -> str:
        label = TORCH_TO_SAFETENSORS.get(value, str(value).removeprefix("torch."))
        return f"{label} ({'floating point' if value.is_floating_point else 'integer'})"

    raise CheckpointError(
        f"{source}: tensor {excerpt(name, 200)} is {kind(dtype)}, but {kind(base_dtype)} in the base "
        f"{base_folder}: one of the two headers is wrong, or the model is not a fine-tune of this base",
        "re-download or re-save the checkpoint whose header is wrong; merge only models fine-tuned "
        "from the same base")


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: object) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _quote(name: object) -> str:
    """A tensor or file name from a file, quoted and cut to a readable length."""
    return excerpt(name, 200)


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    # json keeps the last of two equal keys; in a header that silently hides a tensor entry.
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result
