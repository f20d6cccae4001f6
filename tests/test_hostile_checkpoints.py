"""Hostile checkpoint files: headers, indexes, configs, tokenizers and adapters that lie, point
elsewhere, hang or hold the wrong types. Each must be refused when the pool is opened (configs and
headers only; no weight is read), as a RecallError with a fix, exit 2 from the CLI, no traceback,
and nothing at the output path. Every file here is built from the tiny synthetic fixtures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from recall_merge import merge
from recall_merge.cli import main as cli_main
from recall_merge.config import load_config
from recall_merge.errors import CheckpointError, RecallError
from recall_merge.io.pool import is_code_file

UP = "model.layers.0.mlp.up_proj.weight"  # F32 [128, 64] in the tiny models
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"  # F32 [64, 64]
O_PROJ = "model.layers.0.self_attn.o_proj.weight"  # F32 [64, 64]
LORA_Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
LORA_Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")


class _Hung(Exception):  # noqa: N818 - not an OSError: the CLI must not turn it into exit 2
    pass


@pytest.fixture(autouse=True)
def _no_hang():
    """A hostile input must never block the merge (a named pipe opened for reading blocks until a
    writer comes): the alarm turns a hang into a failure instead of a stuck test run."""
    def expire(signum, frame):
        raise _Hung("the merge blocked on a hostile input")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def no_weight_reads(monkeypatch):
    """Fail the test if any tensor data is read: every refusal here must come from headers."""
    from recall_merge.io import lora, reader

    def forbidden(*args, **kwargs):
        raise AssertionError("tensor data was read before the hostile input was refused")

    monkeypatch.setattr(reader.Checkpoint, "get", forbidden)
    monkeypatch.setattr(reader.Checkpoint, "get_mapped", forbidden)
    monkeypatch.setattr(lora._SafetensorsFile, "get", forbidden)


# ----------------------------------------------------------------------------- file helpers
def read_header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def write_header(path: Path, header: dict | str, data: bytes) -> None:
    encoded = (header if isinstance(header, str) else json.dumps(header)).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def edit_header(path: Path, mutate: Callable[[dict], None]) -> None:
    header, data = read_header(path)
    mutate(header)
    write_header(path, header, data)


def copy_of(tiny, tmp: Path, key: str = "e1", name: str = "hostile") -> Path:
    target = tmp / name
    shutil.copytree(tiny[key], target)
    return target


def config_with(tiny, tmp: Path, *, base: Path | None = None, expert: Path | None = None,
                method: str = "task_arithmetic", **extra) -> dict:
    config = {"method": method, "base": str(base or tiny["base"]),
              "models": [str(tiny["e2"]), str(expert or tiny["e1"])], "output": str(tmp / "out"),
              "seed": 0, **extra}
    if method == "recall":
        config.update(samples=str(tiny["samples"]), parameters={"num_typical": 3})
    return config


def edit_json(path: Path, mutate: Callable[[dict], object]) -> None:
    document = json.loads(path.read_text())
    result = mutate(document)
    path.write_text(json.dumps(document if result is None else result))


def sharded_copy(tiny, tmp: Path, name: str = "sharded") -> Path:
    """e1 split into two safetensors shards plus model.safetensors.index.json."""
    folder = copy_of(tiny, tmp, name=name)
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, members in halves.items():
        save_file({n: tensors[n] for n in members}, folder / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(members, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def _retarget_second_shard(folder: Path, target: str) -> None:
    def mutate(index):
        for name, shard in index["weight_map"].items():
            if shard == "model-00002-of-00002.safetensors":
                index["weight_map"][name] = target
    edit_json(folder / "model.safetensors.index.json", mutate)


def lora_copy(tiny_loras, tmp: Path, name: str = "hostile_lora") -> Path:
    target = tmp / name
    shutil.copytree(tiny_loras["l1"], target)
    return target


def edit_adapter_weights(folder: Path, mutate: Callable[[dict], None]) -> None:
    tensors = load_file(folder / "adapter_model.safetensors")
    mutate(tensors)
    save_file(tensors, folder / "adapter_model.safetensors")


# ----------------------------------------------------------------------------- 1. dtype lies
def dtype_lie_in_expert(tiny, loras, tmp):
    folder = copy_of(tiny, tmp)
    edit_header(folder / "model.safetensors", lambda h: h[UP].update(dtype="I32"))  # same 4 bytes/item
    return config_with(tiny, tmp, expert=folder)


def dtype_lie_in_base(tiny, loras, tmp):
    base = copy_of(tiny, tmp, "base", name="hostile_base")
    edit_header(base / "model.safetensors", lambda h: h[UP].update(dtype="I32"))
    return config_with(tiny, tmp, base=base)


def lora_integer_dtype(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)
    edit_header(adapter / "adapter_model.safetensors", lambda h: h[LORA_Q_A].update(dtype="I32"))
    return config_with(tiny, tmp, expert=adapter)


# ----------------------------------------------------------------------------- 2. byte ranges
def overlapping_ranges(tiny, loras, tmp):
    folder = copy_of(tiny, tmp)
    edit_header(folder / "model.safetensors",
                lambda h: h[O_PROJ].update(data_offsets=list(h[Q_PROJ]["data_offsets"])))
    return config_with(tiny, tmp, expert=folder)


def offsets_do_not_match_size(tiny, loras, tmp):
    folder = copy_of(tiny, tmp)

    def mutate(header):
        begin, end = header[UP]["data_offsets"]
        header[UP]["data_offsets"] = [begin, end - 4]

    edit_header(folder / "model.safetensors", mutate)
    return config_with(tiny, tmp, expert=folder)


def offsets_beyond_data(tiny, loras, tmp):
    folder = copy_of(tiny, tmp)
    header, data = read_header(folder / "model.safetensors")
    begin, end = header[UP]["data_offsets"]
    header[UP]["data_offsets"] = [len(data) + begin, len(data) + end]
    write_header(folder / "model.safetensors", header, data)
    return config_with(tiny, tmp, expert=folder)


def bytes_claimed_by_no_tensor(tiny, loras, tmp):
    folder = copy_of(tiny, tmp)
    header, data = read_header(folder / "model.safetensors")
    write_header(folder / "model.safetensors", header, data + b"\0" * 64)
    return config_with(tiny, tmp, expert=folder)


def duplicate_tensor_entry(tiny, loras, tmp):
    folder = copy_of(tiny, tmp)
    header, data = read_header(folder / "model.safetensors")
    text = json.dumps(header)
    entry = json.dumps({UP: header[UP]})[1:-1]
    write_header(folder / "model.safetensors", text[:-1] + ", " + entry + "}", data)  # UP listed twice
    return config_with(tiny, tmp, expert=folder)


def metadata_not_strings(tiny, loras, tmp):
    folder = copy_of(tiny, tmp)
    edit_header(folder / "model.safetensors", lambda h: h.update(__metadata__={"format": 1}))
    return config_with(tiny, tmp, expert=folder)


# ----------------------------------------------------------------------------- 3. wrong types
def _entry_case(name: str, change: Callable[[dict], object]) -> Callable:
    """A builder that rewrites the header entry of UP (``change`` edits it, or returns a new one)."""
    def build(tiny, loras, tmp):
        folder = copy_of(tiny, tmp)

        def mutate(header):
            result = change(header[UP])
            if result is not None:
                header[UP] = result

        edit_header(folder / "model.safetensors", mutate)
        return config_with(tiny, tmp, expert=folder)

    build.__name__ = name
    return build


float_offsets = _entry_case("float_offsets", lambda e: e.update(data_offsets=[float(o) for o in e["data_offsets"]]))
string_shape = _entry_case("string_shape", lambda e: e.update(shape=[str(d) for d in e["shape"]]))
negative_dims = _entry_case("negative_dims", lambda e: e.update(shape=[-d for d in e["shape"]]))  # same product
shape_not_a_list = _entry_case("shape_not_a_list", lambda e: e.update(shape=128 * 64))
boolean_dims = _entry_case("boolean_dims", lambda e: e.update(shape=[True, 128 * 64]))
dtype_not_a_string = _entry_case("dtype_not_a_string", lambda e: e.update(dtype=["F32"]))
three_offsets = _entry_case("three_offsets", lambda e: e.update(data_offsets=[*e["data_offsets"], 0]))
entry_not_a_mapping = _entry_case("entry_not_a_mapping", lambda e: [e["dtype"], e["shape"], e["data_offsets"]])
entry_without_shape = _entry_case("entry_without_shape", lambda e: e.pop("shape") and None)


# ----------------------------------------------------------------------------- 4. sharded indexes
def index_points_outside(tiny, loras, tmp):
    folder = sharded_copy(tiny, tmp)
    (tmp / "elsewhere").mkdir()
    shutil.copy(folder / "model-00002-of-00002.safetensors", tmp / "elsewhere" / "x.safetensors")
    _retarget_second_shard(folder, "../elsewhere/x.safetensors")
    return config_with(tiny, tmp, expert=folder)


def index_points_to_absolute_path(tiny, loras, tmp):
    folder = sharded_copy(tiny, tmp)
    (tmp / "elsewhere").mkdir()
    outside = tmp / "elsewhere" / "x.safetensors"
    shutil.copy(folder / "model-00002-of-00002.safetensors", outside)
    _retarget_second_shard(folder, str(outside.resolve()))
    return config_with(tiny, tmp, expert=folder)


def shard_links_outside(tiny, loras, tmp):
    folder = sharded_copy(tiny, tmp)
    (tmp / "elsewhere").mkdir()
    shard = folder / "model-00002-of-00002.safetensors"
    shutil.move(shard, tmp / "elsewhere" / shard.name)
    shard.symlink_to(tmp / "elsewhere" / shard.name)
    return config_with(tiny, tmp, expert=folder)


def shard_is_a_fifo(tiny, loras, tmp):
    folder = sharded_copy(tiny, tmp)
    shard = folder / "model-00002-of-00002.safetensors"
    shard.unlink()
    os.mkfifo(shard)
    return config_with(tiny, tmp, expert=folder)


def weights_file_is_a_fifo(tiny, loras, tmp):
    folder = copy_of(tiny, tmp)
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    return config_with(tiny, tmp, expert=folder)


def index_is_a_fifo(tiny, loras, tmp):
    folder = sharded_copy(tiny, tmp)
    (folder / "model.safetensors.index.json").unlink()
    os.mkfifo(folder / "model.safetensors.index.json")
    return config_with(tiny, tmp, expert=folder)


def index_is_a_list(tiny, loras, tmp):
    folder = sharded_copy(tiny, tmp)
    edit_json(folder / "model.safetensors.index.json", lambda index: [index])
    return config_with(tiny, tmp, expert=folder)


def weight_map_is_a_list(tiny, loras, tmp):
    folder = sharded_copy(tiny, tmp)
    edit_json(folder / "model.safetensors.index.json",
              lambda index: index.update(weight_map=sorted(set(index["weight_map"].values()))))
    return config_with(tiny, tmp, expert=folder)


def weight_map_values_not_strings(tiny, loras, tmp):
    folder = sharded_copy(tiny, tmp)
    edit_json(folder / "model.safetensors.index.json", lambda index: index["weight_map"].update({UP: 2}))
    return config_with(tiny, tmp, expert=folder)


# ----------------------------------------------------------------------------- 5. config.json
def _config_case(name: str, content: bytes | None, *, in_base: bool = False) -> Callable:
    """A builder whose config.json holds ``content`` (None: a named pipe)."""
    def build(tiny, loras, tmp):
        folder = copy_of(tiny, tmp, "base" if in_base else "e1", name="hostile_base" if in_base else "hostile")
        path = folder / "config.json"
        path.unlink()
        if content is None:
            os.mkfifo(path)
        else:
            path.write_bytes(content)
        return config_with(tiny, tmp, base=folder) if in_base else config_with(tiny, tmp, expert=folder)

    build.__name__ = name
    return build


config_is_a_list = _config_case("config_is_a_list", b'[{"model_type": "llama"}]')
config_is_a_string = _config_case("config_is_a_string", b'"llama"')
config_not_json = _config_case("config_not_json", b'{"model_type": "llama",')
config_not_utf8 = _config_case("config_not_utf8", b'{"model_type": "ll\xe9ma"}')
config_is_a_fifo = _config_case("config_is_a_fifo", None)
base_config_is_a_list = _config_case("base_config_is_a_list", b"[]", in_base=True)


def layer_count_not_a_number(tiny, loras, tmp):
    base = copy_of(tiny, tmp, "base", name="hostile_base")
    expert = copy_of(tiny, tmp, "e1")
    other = copy_of(tiny, tmp, "e2", name="hostile_e2")
    for folder in (base, expert, other):
        edit_json(folder / "config.json", lambda c: c.update(num_hidden_layers="two"))
    config = config_with(tiny, tmp, base=base, expert=expert)
    config["models"] = [str(other), str(expert)]
    return config


# ----------------------------------------------------------------------------- 6. tokenizer files
def _base_with(tiny, tmp, name: str, content: bytes | None) -> Path:
    base = copy_of(tiny, tmp, "base", name="hostile_base")
    path = base / name
    path.unlink(missing_ok=True)
    if content is None:
        os.mkfifo(path)
    else:
        path.write_bytes(content)
    return base


def tokenizer_json_not_json(tiny, loras, tmp):
    base = _base_with(tiny, tmp, "tokenizer.json", b'{"version": "1.0", "model": {')
    return config_with(tiny, tmp, base=base, method="recall")


def tokenizer_config_is_a_list(tiny, loras, tmp):
    base = _base_with(tiny, tmp, "tokenizer_config.json", b'["PreTrainedTokenizerFast"]')
    return config_with(tiny, tmp, base=base, method="recall")


def tokenizer_json_without_model(tiny, loras, tmp):
    base = _base_with(tiny, tmp, "tokenizer.json", b'{"version": "1.0", "added_tokens": []}')
    return config_with(tiny, tmp, base=base, method="recall")


def tokenizer_json_unloadable(tiny, loras, tmp):
    # JSON of the right outline that the tokenizers library cannot build: found when RECALL loads it
    base = _base_with(tiny, tmp, "tokenizer.json", b'{"version": "1.0", "model": {"type": "Nonsense"}}')
    return config_with(tiny, tmp, base=base, method="recall")


def tokenizer_json_is_a_fifo(tiny, loras, tmp):
    base = _base_with(tiny, tmp, "tokenizer.json", None)
    return config_with(tiny, tmp, base=base, method="recall")


def chat_template_not_utf8(tiny, loras, tmp):
    base = _base_with(tiny, tmp, "chat_template.jinja", b"{{ messages }}\xff")
    return config_with(tiny, tmp, base=base, method="recall")


def special_token_wrong_type(tiny, loras, tmp):
    base = copy_of(tiny, tmp, "base", name="hostile_base")
    edit_json(base / "tokenizer_config.json", lambda c: c.update(eos_token=["<|im_end|>"]))
    return config_with(tiny, tmp, base=base, method="recall")


def tokenizer_missing(tiny, loras, tmp):
    base = copy_of(tiny, tmp, "base", name="hostile_base")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (base / name).unlink()
    return config_with(tiny, tmp, base=base, method="recall")


# ----------------------------------------------------------------------------- 7. tokenizer code
def _with_tokenizer_auto_map(folder: Path) -> None:
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(
        auto_map={"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}))
    (folder / "tokenization_evil.py").write_text("raise SystemExit('custom tokenizer code ran')\n")


def tokenizer_auto_map_in_base(tiny, loras, tmp):
    base = copy_of(tiny, tmp, "base", name="hostile_base")
    _with_tokenizer_auto_map(base)
    return config_with(tiny, tmp, base=base)


def tokenizer_auto_map_in_expert(tiny, loras, tmp):
    folder = copy_of(tiny, tmp)
    _with_tokenizer_auto_map(folder)
    return config_with(tiny, tmp, expert=folder)


def support_file_links_outside(tiny, loras, tmp):
    # the merge copies the base's support files: a link to a private file must not be followed
    base = copy_of(tiny, tmp, "base", name="hostile_base")
    (tmp / "secret.txt").write_text("api-key: 12345\n")
    (base / "notes.txt").symlink_to(tmp / "secret.txt")
    return config_with(tiny, tmp, base=base)


# ----------------------------------------------------------------------------- 8. LoRA adapters
def adapter_config_is_a_list(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)
    edit_json(adapter / "adapter_config.json", lambda c: [c])
    return config_with(tiny, tmp, expert=adapter)


def lora_on_a_norm(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)

    def mutate(tensors):
        for key in (LORA_Q_A, LORA_Q_B):
            tensors[key.replace("self_attn.q_proj", "input_layernorm")] = tensors.pop(key)

    edit_adapter_weights(adapter, mutate)
    return config_with(tiny, tmp, expert=adapter)


def modules_to_save_wrong_shape(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)
    edit_adapter_weights(adapter, lambda t: t.update(
        {"base_model.model.model.norm.modules_to_save.default.weight": torch.ones(32)}))
    return config_with(tiny, tmp, expert=adapter)


def lora_b_without_a(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)
    edit_adapter_weights(adapter, lambda t: t.pop(LORA_Q_A))
    return config_with(tiny, tmp, expert=adapter)


def lora_a_without_b(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)
    edit_adapter_weights(adapter, lambda t: t.pop(LORA_Q_B))
    return config_with(tiny, tmp, expert=adapter)


def lora_ranks_differ(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)
    edit_adapter_weights(adapter, lambda t: t.update({LORA_Q_A: torch.zeros(6, 64)}))  # B stays rank 4
    return config_with(tiny, tmp, expert=adapter)


def lora_rank_not_in_config(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)
    edit_adapter_weights(adapter, lambda t: t.update({LORA_Q_A: torch.zeros(6, 64),
                                                      LORA_Q_B: torch.zeros(64, 6)}))  # r is 4
    return config_with(tiny, tmp, expert=adapter)


def lora_alpha_not_a_number(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)
    edit_json(adapter / "adapter_config.json", lambda c: c.update(lora_alpha="sixteen"))
    return config_with(tiny, tmp, expert=adapter)


def lora_rslora_a_string(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)
    edit_json(adapter / "adapter_config.json", lambda c: c.update(use_rslora="false"))  # truthy
    return config_with(tiny, tmp, expert=adapter)


def lora_b_bias_tensor(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)
    edit_adapter_weights(adapter, lambda t: t.update({LORA_Q_B.replace(".weight", ".bias"): torch.zeros(64)}))
    return config_with(tiny, tmp, expert=adapter)


def dora_vectors_without_use_dora(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    edit_adapter_weights(adapter, lambda t: t.update({key: torch.ones(64)}))
    return config_with(tiny, tmp, expert=adapter)


def two_pairs_for_one_weight(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)  # the same module saved with and without the "model." prefix
    edit_adapter_weights(adapter, lambda t: t.update(
        {key.replace("base_model.model.model.", "base_model.model."): t[key].clone() for key in (LORA_Q_A, LORA_Q_B)}))
    return config_with(tiny, tmp, expert=adapter)


def use_dora_a_string(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)
    edit_json(adapter / "adapter_config.json", lambda c: c.update(use_dora="no"))
    return config_with(tiny, tmp, expert=adapter)


def adapter_weights_link_outside(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)
    (tmp / "elsewhere").mkdir()
    shutil.move(adapter / "adapter_model.safetensors", tmp / "elsewhere" / "adapter_model.safetensors")
    (adapter / "adapter_model.safetensors").symlink_to(tmp / "elsewhere" / "adapter_model.safetensors")
    return config_with(tiny, tmp, expert=adapter)


def pickled_adapter_corrupt(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(b"PK\x03\x04 this is not a torch archive")
    return config_with(tiny, tmp, expert=adapter, allow_pickle=True)


def pickled_adapter_not_a_state_dict(tiny, loras, tmp):
    adapter = lora_copy(loras, tmp)
    (adapter / "adapter_model.safetensors").unlink()
    torch.save([torch.zeros(4, 64)], adapter / "adapter_model.bin")
    return config_with(tiny, tmp, expert=adapter, allow_pickle=True)


def pickled_checkpoint_not_a_state_dict(tiny, loras, tmp):
    folder = copy_of(tiny, tmp)
    (folder / "model.safetensors").unlink()
    torch.save({"state_dict": load_file(tiny["e1"] / "model.safetensors")}, folder / "pytorch_model.bin")
    return config_with(tiny, tmp, expert=folder, allow_pickle=True)


FIFO = {"shard_is_a_fifo", "weights_file_is_a_fifo", "index_is_a_fifo", "config_is_a_fifo",
        "tokenizer_json_is_a_fifo"}
# (builder, message fragments that must all be on stderr)
CASES: list[tuple[Callable, tuple[str, ...]]] = [
    (dtype_lie_in_expert, (UP, "I32 (integer)", "F32 (floating point)", "hostile")),
    (dtype_lie_in_base, (UP, "I32 (integer)", "F32 (floating point)")),
    (lora_integer_dtype, (LORA_Q_A, "not floating point")),
    (overlapping_ranges, ("overlap", Q_PROJ, O_PROJ)),
    (offsets_do_not_match_size, ("header lies", UP)),
    (offsets_beyond_data, ("ends at byte", UP)),
    (bytes_claimed_by_no_tensor, ("belong to no tensor",)),
    (duplicate_tensor_entry, ("twice", UP)),
    (metadata_not_strings, ("__metadata__",)),
    (float_offsets, ("malformed", UP, "data_offsets")),
    (string_shape, ("malformed", UP, "shape")),
    (negative_dims, ("malformed", UP, "non-negative")),
    (shape_not_a_list, ("malformed", UP, "shape")),
    (boolean_dims, ("malformed", UP, "shape")),
    (dtype_not_a_string, ("malformed", UP, "dtype")),
    (three_offsets, ("malformed", UP, "data_offsets")),
    (entry_not_a_mapping, ("malformed", UP, "not a mapping")),
    (entry_without_shape, ("malformed", UP, "shape")),
    (index_points_outside, ("outside the model folder", "../elsewhere/x.safetensors")),
    (index_points_to_absolute_path, ("outside the model folder",)),
    (shard_links_outside, ("leads outside the model folder", "model-00002-of-00002.safetensors")),
    (shard_is_a_fifo, ("named pipe", "not a regular file", "model-00002-of-00002.safetensors")),
    (weights_file_is_a_fifo, ("named pipe", "model.safetensors")),
    (index_is_a_fifo, ("named pipe", "model.safetensors.index.json")),
    (index_is_a_list, ("model.safetensors.index.json", "JSON list")),
    (weight_map_is_a_list, ("weight_map",)),
    (weight_map_values_not_strings, ("weight_map", UP, "not a shard file name")),
    (config_is_a_list, ("config.json", "JSON list")),
    (config_is_a_string, ("config.json", "JSON string")),
    (config_not_json, ("config.json", "not valid JSON")),
    (config_not_utf8, ("config.json", "not UTF-8")),
    (config_is_a_fifo, ("config.json", "named pipe")),
    (base_config_is_a_list, ("hostile_base", "config.json", "JSON list")),
    (layer_count_not_a_number, ("num_hidden_layers", "positive whole number")),
    (tokenizer_json_not_json, ("tokenizer.json", "not valid JSON")),
    (tokenizer_config_is_a_list, ("tokenizer_config.json", "JSON list")),
    (tokenizer_json_without_model, ("tokenizer.json", "not a tokenizer")),
    (tokenizer_json_unloadable, ("tokenizer.json", "not a tokenizer the tokenizers library can load")),
    (tokenizer_json_is_a_fifo, ("tokenizer.json", "named pipe")),
    (chat_template_not_utf8, ("chat_template.jinja", "not UTF-8")),
    (special_token_wrong_type, ("tokenizer_config.json", "eos_token")),
    (tokenizer_missing, ("hostile_base", "has no tokenizer")),
    (tokenizer_auto_map_in_base, ("tokenizer_config.json", "auto_map", "trust_remote_code")),
    (tokenizer_auto_map_in_expert, ("tokenizer_config.json", "auto_map", "trust_remote_code")),
    (support_file_links_outside, ("notes.txt", "outside", "secret.txt")),
    (adapter_config_is_a_list, ("adapter_config.json", "JSON list")),
    (lora_on_a_norm, ("model.layers.0.input_layernorm.weight", "1-D", "target_modules")),
    (modules_to_save_wrong_shape, ("model.norm.weight", "[32]", "[64]")),
    (lora_b_without_a, ("model.layers.0.self_attn.q_proj", "lora_B but no lora_A")),
    (lora_a_without_b, ("model.layers.0.self_attn.q_proj", "lora_A but no lora_B")),
    (lora_ranks_differ, ("lora_A has rank 6", "lora_B has rank 4")),
    (lora_rank_not_in_config, ("rank 6", "r = 4")),
    (lora_alpha_not_a_number, ("lora_alpha", "finite number")),
    (lora_rslora_a_string, ("use_rslora", "true or false")),
    (lora_b_bias_tensor, ("lora_B.bias", "not a LoRA weight")),
    (dora_vectors_without_use_dora, ("DoRA magnitude vectors", "merge_and_unload")),
    (two_pairs_for_one_weight, ("two LoRA pairs", Q_PROJ)),
    (use_dora_a_string, ("use_dora", "true or false")),
    (adapter_weights_link_outside, ("adapter_model.safetensors", "leads outside the model folder")),
    (pickled_adapter_corrupt, ("adapter_model.bin", "cannot load")),
    (pickled_adapter_not_a_state_dict, ("adapter_model.bin", "not a flat mapping")),
    (pickled_checkpoint_not_a_state_dict, ("pytorch_model.bin", "not a flat mapping")),
]


@pytest.mark.parametrize(("builder", "fragments"), [
    pytest.param(*case, id=case[0].__name__, marks=[needs_fifo] if case[0].__name__ in FIFO else [])
    for case in CASES])
def test_hostile_checkpoint_is_refused_before_any_weight_is_read(builder, fragments, tiny_models, tiny_loras,
                                                                 tmp_path, capsys, no_weight_reads):
    config = builder(tiny_models, tiny_loras, tmp_path)
    config_path = tmp_path / "merge.yaml"
    config_path.write_text(yaml.safe_dump(config))

    assert cli_main(["merge", str(config_path), "--quiet"]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in stderr, f"{fragment!r} not in: {stderr}"
    assert "fix:" in stderr
    assert max(len(line) for line in stderr.splitlines()) < 1200, "no user value quoted at length"
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no temporary folder left"

    with pytest.raises(RecallError) as caught:  # the library raises what the CLI reported
        merge(load_config(config_path), quiet=True)
    assert isinstance(caught.value, CheckpointError)
    assert caught.value.fix


# ----------------------------------------------------------------------------- what stays allowed
def test_sharded_checkpoint_and_hugging_face_cache_links_still_merge(tiny_models, tmp_path):
    """The checks refuse links out of a model folder, but not the Hugging Face cache's own layout
    (snapshots/<rev>/ files linking to ../../blobs/), nor an honest sharded checkpoint."""
    sharded = sharded_copy(tiny_models, tmp_path)
    snapshot = tmp_path / "models--org--e2" / "snapshots" / "0123abc"
    blobs = tmp_path / "models--org--e2" / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for path in sorted(Path(tiny_models["e2"]).iterdir()):
        shutil.copy(path, blobs / f"blob-{path.name}")
        (snapshot / path.name).symlink_to(Path("..") / ".." / "blobs" / f"blob-{path.name}")
    config = config_with(tiny_models, tmp_path, expert=sharded)
    config["models"] = [str(snapshot), str(sharded)]
    result = merge(config, quiet=True)
    merged = load_file(result.output / "model.safetensors")
    expected = load_file(tiny_models["e1"] / "model.safetensors")
    assert set(merged) == set(expected)
    assert all(torch.isfinite(tensor).all() for tensor in merged.values())


def test_tokenizer_auto_map_is_accepted_with_trust_remote_code(tiny_models, tmp_path):
    base = copy_of(tiny_models, tmp_path, "base", name="custom_tokenizer_base")
    _with_tokenizer_auto_map(base)
    result = merge(config_with(tiny_models, tmp_path, base=base, trust_remote_code=True), quiet=True)
    assert (result.output / "model.safetensors").exists()


@pytest.mark.parametrize(("name", "code"), [
    ("modeling_evil.py", True), ("tokenization_evil.py", True), ("Helper.PY", True),
    ("helper.cpython-311.pyc", True), ("kernel.so", True), ("setup.sh", True),
    ("tokenizer.json", False), ("chat_template.jinja", False), ("config.json", False),
    ("merges.txt", False), ("README.md", False), ("python", False)])
def test_is_code_file(name, code):
    assert is_code_file(Path("/models/x") / name) is code


def test_auto_tokenizer_failure_is_a_checkpoint_error(tiny_models, tmp_path):
    """The AutoTokenizer fallback of the representation pass: a tokenizer transformers cannot
    build is reported as a CheckpointError naming the folder, not as transformers' traceback."""
    from recall_merge.recall.fast_tokenizer import load_auto_tokenizer

    assert load_auto_tokenizer(tiny_models["base"]).eos_token == "<|im_end|>"
    base = copy_of(tiny_models, tmp_path, "base", name="odd_tokenizer")
    (base / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    with pytest.raises(CheckpointError, match="odd_tokenizer") as caught:
        load_auto_tokenizer(base)
    assert caught.value.fix
