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
from recall_merge.io.reader import (
    TOKENIZER_JSON_FILES,
    TOKENIZER_OTHER_FILES,
    Checkpoint,
    check_regular_file,
    check_same_dtype_class,
    excerpt,
    read_json_object,
    resolves_inside,
)
from recall_merge.methods.base import TensorPosition

_BLOCK_PATTERN = re.compile(r"\.(?:layers|h|blocks|block|layer)\.(\d+)\.")
_SHAPE_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "intermediate_size",
               "num_attention_heads", "num_key_value_heads")


def resolve_ref(ref: str | Path, *, trust_remote_code: bool = False) -> Path:
    """A packaged model name ('smollm2') becomes its cached folder, a hub id (``org/name[@rev]``
    that is no local path) its snapshot in the Hugging Face cache; anything else is a path."""
    from recall_merge.io import hub
    from recall_merge.io.packaged import is_packaged_name, resolve_model_ref

    text = str(ref)
    if is_packaged_name(text):
        return resolve_model_ref(text)
    if isinstance(ref, str):
        # what the config load resolved wins: the merge opens the very snapshot it checked
        snapshot = hub.resolved_snapshot(text)
        if snapshot is not None and not Path(text).exists():
            return snapshot.folder
        if hub.is_hub_ref(text):
            return hub.resolve(text, trust_remote_code=trust_remote_code).folder
    return Path(text)


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
        base_folder = resolve_ref(base_ref, trust_remote_code=trust_remote_code)
        if base_folder.exists() and is_lora_folder(base_folder):
            raise CheckpointError(f"base {base_folder} is a LoRA adapter, not a full model",
                                  "set `base` to the full model the adapters were trained on")
        base = Checkpoint(base_folder, allow_pickle=allow_pickle)
        _check_remote_code(base, trust_remote_code)
        check_tokenizer_files(base.folder)
        check_support_files(base.folder)
        experts: list[Expert] = []
        for ref in expert_refs:
            folder = resolve_ref(ref, trust_remote_code=trust_remote_code)
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

    def lora_factors(self, name: str, rows: tuple[int, int] | None = None,
                     ) -> list[tuple[torch.Tensor, torch.Tensor] | None] | None:
        """Every expert's ΔW of ``name`` (or of its rows) as float64 factors (B', A'), None for an
        expert that leaves the tensor unchanged; None for the whole list unless every expert is a
        LoRA adapter that adapts the tensor with LoRA or not at all (no trained replacement)."""
        factors = []
        for expert in self.experts:
            adapter = expert.adapter
            if adapter is None or name in adapter.replacements:
                return None
            pair = adapter.factors(name, torch.float64)
            if pair is not None and rows is not None:
                pair = (pair[0][rows[0]:rows[1]], pair[1])
            factors.append(pair)
        return factors

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


# Files of a model folder that hold code (Python sources and bytecode, native libraries, scripts).
CODE_SUFFIXES = frozenset({".py", ".pyc", ".pyo", ".pyw", ".pyx", ".pyd", ".so", ".dylib", ".dll",
                           ".sh", ".bash"})
_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                       "mask_token")


def is_code_file(path: Path) -> bool:
    """True for a file that holds code (``modeling_x.py``, bytecode, a native library, a script):
    such a file from an input is copied into a merge output only with ``trust_remote_code``."""
    return Path(path).suffix.lower() in CODE_SUFFIXES


def check_support_files(folder: Path) -> None:
    """Refuse a file of the base folder that links out of it. The merge copies the base's support
    files (tokenizer, generation config, ...) into its output, following links: a link to a
    private file elsewhere (a downloaded repository can hold one) would be published with the
    merged model."""
    folder = Path(folder)
    for path in sorted(folder.iterdir()):
        if path.is_symlink() and path.is_file() and not resolves_inside(folder, path):
            raise CheckpointError(
                f"{path.name} in the base folder {folder} is a link to a file outside it "
                f"({excerpt(str(path.resolve()))}); the merge would copy that file into its output",
                "replace the link with a copy of the file, or remove it")


def _check_remote_code(checkpoint: Checkpoint, trust_remote_code: bool) -> None:
    # auto_map in config.json makes transformers import Python files shipped with the model; in
    # tokenizer_config.json it does the same for the tokenizer (AutoTokenizer).
    if trust_remote_code:
        return
    if checkpoint.config.get("auto_map"):
        raise CheckpointError(
            f"{checkpoint.folder} asks to run its own Python code (auto_map in config.json), "
            "which is refused by default", "review that code, then set `trust_remote_code: true`")
    tokenizer_config = _tokenizer_config(checkpoint.folder)
    if tokenizer_config is not None and tokenizer_config.get("auto_map"):
        raise CheckpointError(
            f"{checkpoint.folder} asks to run its own tokenizer code (auto_map in "
            "tokenizer_config.json), which is refused by default",
            "review that code, then set `trust_remote_code: true`")


def _tokenizer_config(folder: Path) -> dict | None:
    path = folder / "tokenizer_config.json"
    if not (path.exists() or path.is_symlink()):
        return None
    return read_json_object(path, "tokenizer file",
                            "repair or re-download tokenizer_config.json (the model's tokenizer)")


def check_tokenizer_files(folder: Path) -> None:
    """Refuse a model folder's tokenizer files that are present but unusable, before any weight is
    read: not a regular file (a pipe would hang the tokenizer's loader), not UTF-8 JSON objects, or
    with fields of the wrong type that make tokenizers/transformers fail deep inside. Absent files
    are not an error here: only methods that run the model need a tokenizer. The merge also
    copies these files into its output, so a broken one would be passed on."""
    folder = Path(folder)
    documents: dict[str, dict] = {}
    for name in TOKENIZER_JSON_FILES:
        path = folder / name
        if path.exists() or path.is_symlink():
            documents[name] = read_json_object(
                path, "tokenizer file", f"repair or re-download {name} (the base model's tokenizer)")
    for name in TOKENIZER_OTHER_FILES:
        path = folder / name
        if path.exists() or path.is_symlink():
            check_regular_file(path, "tokenizer file")
    template = folder / "chat_template.jinja"
    if template.exists():
        try:
            template.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{template} is not UTF-8 text",
                                  "re-save chat_template.jinja as UTF-8 (or re-download it)") from None
    if "tokenizer.json" in documents:
        _check_tokenizer_json(folder / "tokenizer.json", documents["tokenizer.json"])
    if "tokenizer_config.json" in documents:
        _check_tokenizer_config(folder / "tokenizer_config.json", documents["tokenizer_config.json"])


def _check_tokenizer_json(path: Path, document: dict) -> None:
    fix = "re-download tokenizer.json (or re-save the tokenizer with save_pretrained)"
    if not isinstance(document.get("model"), dict):
        raise CheckpointError(f"{path} is not a tokenizer: it has no \"model\" mapping", fix)
    added = document.get("added_tokens")
    if added is not None and not (isinstance(added, list) and all(
            isinstance(token, dict) and isinstance(token.get("content"), str)
            and isinstance(token.get("id"), int) for token in added)):
        raise CheckpointError(f"{path}: \"added_tokens\" is not a list of {{\"id\", \"content\"}} entries", fix)


def _check_tokenizer_config(path: Path, config: dict) -> None:
    fix = "repair or re-download tokenizer_config.json"

    def refuse(key: str, expected: str) -> CheckpointError:
        return CheckpointError(f"{path}: {key} is {excerpt(config[key])}, not {expected}", fix)

    if config.get("tokenizer_class") is not None and not isinstance(config["tokenizer_class"], str):
        raise refuse("tokenizer_class", "a class name")
    for key in _SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        if value is not None and not isinstance(value, str) and not (
                isinstance(value, dict) and isinstance(value.get("content"), str)):
            raise refuse(key, "a token (a string)")
    template = config.get("chat_template")
    if template is not None and not isinstance(template, str) and not (
            isinstance(template, list) and all(isinstance(entry, dict) and isinstance(entry.get("name"), str)
                                               and isinstance(entry.get("template"), str)
                                               for entry in template)):
        raise refuse("chat_template", "a template string (or a list of named templates)")
    decoder = config.get("added_tokens_decoder")
    if decoder is not None and not (isinstance(decoder, dict) and all(
            key.isdigit() and isinstance(token, dict) and isinstance(token.get("content"), str)
            for key, token in decoder.items())):
        raise refuse("added_tokens_decoder", "a mapping of token ids to tokens")



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
                f"{other.folder}: tensor {excerpt(name, 200)} has shape {list(other.tensors[name].shape)}, "
                f"the base has {list(info.shape)}", "merge only models fine-tuned from the same base")
        check_same_dtype_class(name, other.tensors[name].dtype, info.dtype, other.folder, base.folder)

