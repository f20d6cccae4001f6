"""The representation pass's tokenizer, straight from tokenizer.json, without transformers.

Importing transformers and building an ``AutoTokenizer`` costs seconds; for the plain fast
tokenizers most chat models ship (``tokenizer_class`` TokenizersBackend / PreTrainedTokenizerFast,
every special token already an added token of tokenizer.json) the ``tokenizers`` library alone
gives the same ids, and jinja2 renders the chat template as transformers does. Folders with
anything else (legacy special-token files, extra templates, unknown tokenizer_config options)
return None from :func:`load_fast_tokenizer` and the caller uses AutoTokenizer.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from recall_merge.errors import CheckpointError, excerpt
from recall_merge.io.reader import check_regular_file, read_json_object

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                      "mask_token")
_GENERIC_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}
# tokenizer_config.json keys known not to change ids or the rendered template for our use (no
# special tokens added, right padding and truncation chosen by the caller). Any other key sends the
# folder to AutoTokenizer, which knows what it means.
_HARMLESS_KEYS = {"backend", "tokenizer_class", "is_local", "local_files_only", "model_max_length",
                  "clean_up_tokenization_spaces", "padding_side", "model_input_names", "name_or_path",
                  "add_bos_token", "add_eos_token", "chat_template", "errors", "split_special_tokens",
                  "truncation_side", "added_tokens_decoder", "extra_special_tokens",
                  "additional_special_tokens", *SPECIAL_TOKEN_KEYS}
# Files that make transformers change the special tokens or offer other templates.
_LEGACY_FILES = ("special_tokens_map.json", "added_tokens.json", "additional_chat_templates")
# A folder with none of these has no tokenizer at all (sentencepiece, BPE and WordPiece vocabularies
# as transformers' tokenizer classes name them).
_VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                     "sentencepiece.bpe.model", "merges.txt")
_TOKENIZER_FIX = ("repair or re-download the base model's tokenizer files (tokenizer.json, "
                  "tokenizer_config.json)")
# transformers rewrites the pre-tokenizer regex of some large-vocabulary (Mistral) tokenizers.
_MAX_PLAIN_VOCAB = 100_000


class FastTokenizer:
    """Encodes batches as ``AutoTokenizer(texts, padding=True, truncation=True, max_length=...,
    add_special_tokens=False, return_tensors="pt")`` does with right padding; ``truncation_side``
    ("right" or "left") is read at each call, as transformers reads its attribute of that name."""

    def __init__(self, backend, special_tokens: dict[str, str], chat_template: str | None) -> None:
        self.backend = backend
        self.truncation_side = "right"
        self.special_tokens = special_tokens  # the template sees these (pad = eos when unset)
        self.chat_template = chat_template
        self.pad_token_id = backend.token_to_id(special_tokens["pad_token"])
        self._compiled = None

    def __call__(self, texts: list[str], *, max_length: int, return_tensors: str = "pt",
                 padding: bool = True, truncation: bool = True,
                 add_special_tokens: bool = False) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask, (b, t) int64, right-padded to the longest text."""
        if (return_tensors, padding, truncation, add_special_tokens) != ("pt", True, True, False):
            raise NotImplementedError("only padded, truncated torch batches without special tokens")
        encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        if self.truncation_side == "left":
            ids = [encoding.ids[-max_length:] for encoding in encodings]
        else:
            ids = [encoding.ids[:max_length] for encoding in encodings]
        length = max((len(row) for row in ids), default=0)
        input_ids = torch.full((len(ids), length), self.pad_token_id, dtype=torch.int64)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.int64)
        for row, row_ids in enumerate(ids):
            input_ids[row, :len(row_ids)] = torch.tensor(row_ids, dtype=torch.int64)
            attention_mask[row, :len(row_ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def apply_chat_template(self, messages: list[dict[str, str]], *, tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:
        """The template rendered as transformers' ``apply_chat_template(..., tokenize=False)``."""
        if tokenize:
            raise NotImplementedError("render, then call the tokenizer")
        if self._compiled is None:
            self._compiled = compile_chat_template(self.chat_template)
        return self._compiled.render(messages=messages, tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt, **self.special_tokens)


def compile_chat_template(template: str):
    """A jinja2 template in the sandboxed environment transformers builds for chat templates
    (same options, filters and globals), so Hub templates render to the same text."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters; transformers' does not.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    class TemplateNamespace(jinja2.utils.Namespace):
        # As transformers: no dunder attributes on a namespace (sandbox hardening).
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"Chat templates cannot store underscore-prefixed attributes on a namespace, got {name!r}")

    class GenerationTag(jinja2.ext.Extension):
        # transformers' {% generation %} block renders its body unchanged unless assistant masks
        # are requested (never here); without the tag such templates would not even parse.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[GenerationTag, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    environment.globals["dict"] = TemplateDict()
    environment.globals["namespace"] = TemplateNamespace
    return environment.from_string(template)


def load_fast_tokenizer(folder: Path) -> FastTokenizer | None:
    """The folder's tokenizer without transformers, or None when only AutoTokenizer is sure to be
    right. A folder with no tokenizer at all, or with tokenizer files that cannot be read or
    parsed, is a CheckpointError here, before the fallback: AutoTokenizer would fail on them with a
    traceback."""
    folder = Path(folder)
    require_tokenizer_files(folder)
    tokenizer_file, config_file = folder / "tokenizer.json", folder / "tokenizer_config.json"
    config = _json_file(config_file) if _present(config_file) else None
    if not _present(tokenizer_file):
        return None
    serialized = _json_file(tokenizer_file)

    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for a bad file
        raise CheckpointError(f"{tokenizer_file} is not a tokenizer the tokenizers library can load: "
                              f"{excerpt(str(exc), 200)}", _TOKENIZER_FIX) from None
    if config is None or any((folder / name).exists() for name in _LEGACY_FILES):
        return None
    if set(config) - _HARMLESS_KEYS:
        return None
    if config.get("tokenizer_class", "TokenizersBackend") not in _GENERIC_CLASSES:
        return None
    if config.get("split_special_tokens") or config.get("truncation_side", "right") != "right":
        return None
    special_tokens = _special_tokens(config, serialized)
    if special_tokens is None or ("eos_token" not in special_tokens and "pad_token" not in special_tokens):
        return None
    special_tokens.setdefault("pad_token", special_tokens.get("eos_token"))
    chat_template = _chat_template(folder, config)
    if chat_template is False:
        return None
    if backend.get_vocab_size() > _MAX_PLAIN_VOCAB:
        return None
    backend.no_truncation()  # tokenizer.json may carry its own; the caller's max_length rules
    backend.no_padding()
    backend.encode_special_tokens = False
    return FastTokenizer(backend, special_tokens, chat_template)


def has_tokenizer_files(folder: Path) -> bool:
    """Whether the folder ships any tokenizer vocabulary AutoTokenizer could load."""
    folder = Path(folder)
    return (any(_present(folder / name) for name in _VOCABULARY_FILES)
            or any(folder.glob("*.tiktoken")))


def require_tokenizer_files(folder: Path) -> None:
    """Refuse a model folder without a tokenizer (for the passes that tokenize samples)."""
    if not has_tokenizer_files(folder):
        raise CheckpointError(
            f"{folder} has no tokenizer (none of {', '.join(_VOCABULARY_FILES)}): RECALL tokenizes "
            "the samples with the base model's tokenizer",
            "copy the tokenizer files (tokenizer.json, tokenizer_config.json, ...) of the model the "
            "base was released with into the base folder")


def load_auto_tokenizer(folder: Path, trust_remote_code: bool = False):
    """``AutoTokenizer.from_pretrained(folder)``, with a failure to load the folder's tokenizer
    turned into a CheckpointError naming the folder (transformers raises OSError, ValueError,
    TypeError, KeyError or the tokenizers library's bare Exception, with a traceback)."""
    from transformers import AutoTokenizer

    require_tokenizer_files(folder)
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise CheckpointError(f"the tokenizer of {folder} cannot be loaded: {type(exc).__name__}: "
                              f"{excerpt(str(exc), 200)}", _TOKENIZER_FIX) from None


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _json_file(path: Path) -> dict:
    return read_json_object(path, "tokenizer file", _TOKENIZER_FIX)


def _special_tokens(config: dict, serialized: dict) -> dict[str, str] | None:
    """Named special tokens as strings, or None when transformers would add or change one: each
    must already be an added token of tokenizer.json, special and not normalized."""
    added_list = serialized.get("added_tokens") or []
    if not isinstance(added_list, list) or not all(isinstance(token, dict) for token in added_list):
        return None
    added = {token.get("content"): token for token in added_list}
    named: dict[str, str] = {}
    extras: list[Any] = []
    for key in SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        if isinstance(value, dict):  # an AddedToken serialisation
            value = value.get("content")
        if value is not None:
            if not isinstance(value, str):
                return None
            named[key] = value
    for key in ("extra_special_tokens", "additional_special_tokens"):
        value = config.get(key) or []
        if not isinstance(value, list):
            return None
        extras += value
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        return None
    for index, token in decoder.items():
        if (not isinstance(token, dict) or not index.isdigit()
                or added.get(token.get("content"), {}).get("id") != int(index)):
            return None
    for token in [*named.values(), *extras]:
        content = token.get("content") if isinstance(token, dict) else token
        entry = added.get(content)
        if entry is None or not entry.get("special") or entry.get("normalized"):
            return None
    return named


def _chat_template(folder: Path, config: dict) -> str | None | bool:
    """The default template as transformers picks it (chat_template.jinja first), None without
    one, False for a form only transformers resolves (named templates)."""
    template_file = folder / "chat_template.jinja"
    if template_file.exists():
        check_regular_file(template_file, "chat template")
        try:
            return template_file.read_text(encoding="utf-8")  # text mode, as transformers reads it
        except UnicodeDecodeError:
            raise CheckpointError(f"{template_file} is not UTF-8 text",
                                  "re-save chat_template.jinja as UTF-8 (or re-download it)") from None
    if (folder / "chat_template.json").exists():
        return False
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    return False
