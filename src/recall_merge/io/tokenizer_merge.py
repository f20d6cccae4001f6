"""The tokenizer of a merge whose models may have different vocabularies, as mergekit 0.1.5 builds
it (``tokenizer_source`` and ``chat_template``).

The output vocabulary (mergekit/tokenizer/build.py):

- ``base``: the base model's tokenizer, without the tokens whose id is at or beyond the base's
  ``vocab_size`` (config.json);
- ``union``: the base's tokenizer plus every token of the other models (below their own
  ``vocab_size``) that it lacks, ordinary tokens first (model by model, in id order), then the
  added (special) tokens. mergekit adds the ordinary ones in hash-map order, which changes from
  run to run; the tokens, and each token's rows, are the same;
- a model: that model's tokenizer as it is.

Each vocabulary tensor (embedding, head) of each model is then re-indexed to the output vocabulary
(mergekit/tokenizer/embed.py). A token the model has keeps its row. A token it lacks gets, from the
models that merge into that tensor: the row of the only one that has it; else the base's row when
the base is among them and has it; else the mean of the rows of those that have it; zeros when
none has it. With ``pad_to_multiple_of`` the rows past the vocabulary are the mean of the others.
The merge method then sees tensors of one shape, and new tokens agree between the models.
"""

from __future__ import annotations

import importlib.resources
import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recall_merge.errors import CheckpointError, ConfigError, excerpt
from recall_merge.io.pool import TOKENIZER_JSON_FILES, TOKENIZER_OTHER_FILES, check_tokenizer_files

# Files a saved tokenizer consists of: not copied from the base when the merge writes its own.
TOKENIZER_FILES = frozenset(TOKENIZER_JSON_FILES + TOKENIZER_OTHER_FILES)
_TEMPLATE_PACKAGE = "mergekit._data.chat_templates"


@dataclass
class TokenizerInput:
    """One merged model as the vocabulary sees it: where its tokenizer is (a LoRA adapter's is its
    base's) and how many embedding rows its config declares."""

    key: int
    folder: Path
    vocab_size: int | None


@dataclass
class MergedVocabulary:
    """The output tokenizer and, per model key, the source row of every output token (−1: absent)."""

    tokenizer: Any
    vocab: dict[str, int]
    rows: int
    permutations: dict[int, torch.Tensor]


def config_vocab_size(config: dict[str, Any]) -> int | None:
    """``vocab_size`` of a config.json (or of its ``text_config``), as mergekit reads it."""
    for block in (config, config.get("text_config")):
        if isinstance(block, dict) and isinstance(block.get("vocab_size"), int) and block["vocab_size"] > 0:
            return block["vocab_size"]
    return None


def load_tokenizer(folder: Path, *, trust_remote_code: bool, role: str) -> Any:
    """The fast tokenizer of a model folder, after the same file checks the pool makes."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not any((folder / name).exists() for name in ("tokenizer.json", "tokenizer.model", "vocab.json",
                                                     "tokenizer_config.json")):
        raise CheckpointError(f"{role} {folder} has no tokenizer, which tokenizer_source needs to align "
                              "its embedding rows with the output vocabulary",
                              "add the model's tokenizer files to its folder, or remove tokenizer_source")
    check_tokenizer_files(folder)
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code, use_fast=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"the tokenizer of {role} {folder} cannot be loaded: {excerpt(str(exc))}",
                              "repair or re-download its tokenizer files") from None


def stripped_tokenizer(tokenizer: Any, vocab_size: int | None, folder: Path) -> Any:
    """``tokenizer`` without the tokens whose id is ``vocab_size`` or more (mergekit's
    ``get_stripped_tokenizer``: they have no embedding row)."""
    from tokenizers import Tokenizer

    vocab_size = vocab_size or len(tokenizer.get_vocab())
    unused = {token for token, index in tokenizer.get_vocab().items() if index >= vocab_size}
    if not unused:
        return tokenizer
    if not tokenizer.is_fast:
        raise CheckpointError(f"the tokenizer of {folder} has tokens past vocab_size and no fast version",
                              "give the model a tokenizer.json, or use tokenizer_source: union/a model")
    document = json.loads(tokenizer._tokenizer.to_str())
    if document["model"]["type"] != "BPE":
        raise CheckpointError(f"the tokenizer of {folder} ({document['model']['type']}) has tokens past "
                              "vocab_size; only BPE tokenizers can be stripped (as in mergekit)",
                              "use a model whose tokenizer fits its vocab_size as the base")
    document["added_tokens"] = [entry for entry in document["added_tokens"] if entry["id"] < vocab_size]
    for token in unused:
        document["model"]["vocab"].pop(token, None)

    def keep(merge: Any) -> bool:
        parts = merge.split(" ") if isinstance(merge, str) else merge
        return not any(part in unused for part in parts)

    document["model"]["merges"] = [merge for merge in document["model"]["merges"] if keep(merge)]
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(document))
    return tokenizer


def _union_tokenizer(base: Any, tokenizers: list[tuple[Any, int | None]], trust_remote_code: bool) -> Any:
    """mergekit's ``build_union_tokenizer``: the base's tokenizer (a copy) plus the others' tokens."""
    from transformers import AutoTokenizer

    vocabulary: dict[str, int] = {}
    added: dict[str, Any] = {}
    for tokenizer, vocab_size in tokenizers:
        vocab_size = vocab_size or tokenizer.vocab_size
        # in id order: mergekit walks get_vocab(), whose order is a hash map's and differs from run
        # to run, so its union numbers the new tokens differently each time; here a merge is
        # reproducible (the same tokens, each with the same rows, under other ids)
        for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
            if index < vocab_size and token not in vocabulary:
                vocabulary[token] = len(vocabulary)
        for index, info in tokenizer.added_tokens_decoder.items():
            if index < vocab_size and info.content not in added:
                added[info.content] = info  # the first model's settings win
    with tempfile.TemporaryDirectory() as folder:  # a copy: the base's tokenizer stays as it is
        base.save_pretrained(folder, legacy_format=False, safe_serialization=True)
        result = AutoTokenizer.from_pretrained(folder, use_fast=True, trust_remote_code=trust_remote_code)
    base_vocabulary = base.get_vocab()
    for token in vocabulary:
        if token not in added and token not in base_vocabulary:
            result.add_tokens(token)
    for info in added.values():
        result.add_tokens(info)
    return result


def build_vocabulary(source: Any, base: TokenizerInput, others: list[TokenizerInput], *,
                     source_folder: Path | None = None, pad_to_multiple_of: int | None = None,
                     trust_remote_code: bool = False) -> MergedVocabulary:
    """The output tokenizer for ``source`` (``"base"``, ``"union"``, or ``"model"`` with
    ``source_folder``) and every model's row permutation into it (``base`` first, then ``others``)."""
    base_tokenizer = stripped_tokenizer(
        load_tokenizer(base.folder, trust_remote_code=trust_remote_code, role="the base model"),
        base.vocab_size, base.folder)
    tokenizers: dict[int, tuple[Any, int | None]] = {base.key: (base_tokenizer, base.vocab_size)}
    for model in others:
        if model.key not in tokenizers:
            tokenizers[model.key] = (load_tokenizer(model.folder, trust_remote_code=trust_remote_code,
                                                    role="model"), model.vocab_size)
    if source == "base":
        output = base_tokenizer
    elif source == "union":
        output = _union_tokenizer(base_tokenizer, list(tokenizers.values()), trust_remote_code)
    else:
        output = load_tokenizer(source_folder, trust_remote_code=trust_remote_code, role="tokenizer_source")
    vocab = output.get_vocab()
    rows = len(vocab)
    if pad_to_multiple_of and rows % pad_to_multiple_of:
        rows += pad_to_multiple_of - rows % pad_to_multiple_of
    permutations: dict[int, torch.Tensor] = {}
    for key, (tokenizer, vocab_size) in tokenizers.items():
        model_vocab = tokenizer.get_vocab()
        limit = vocab_size if vocab_size is not None else len(model_vocab)
        permutation = torch.full((len(vocab),), -1, dtype=torch.long)
        for token, new_index in vocab.items():
            old_index = model_vocab.get(token)
            # a token at or past the model's vocab_size has no row (mergekit warns "padding?")
            if old_index is not None and old_index < limit:
                permutation[new_index] = old_index
        permutations[key] = permutation
    return MergedVocabulary(output, vocab, rows, permutations)


def permute_rows(tensors: list[tuple[int, torch.Tensor]], vocabulary: MergedVocabulary,
                 base_key: int | None) -> list[torch.Tensor]:
    """Each model's vocabulary tensor (rows = tokens) re-indexed to the output vocabulary, with the
    rows of the tokens it lacks filled by mergekit's rules (module docstring). ``tensors`` are the
    (model key, tensor) pairs of one output tensor, in mergekit's input order: averages add the
    models up in this order, in the tensors' dtype, so that the rounding is mergekit's."""
    keys = [key for key, _ in tensors]
    values = [value for _, value in tensors]
    dtype = values[0].dtype
    for value in values[1:]:
        dtype = torch.promote_types(dtype, value.dtype)
    values = [value.to(dtype) for value in values]
    count_tokens = len(vocabulary.vocab)
    shape = tuple(values[0].shape[1:])
    permutations = torch.stack([vocabulary.permutations[key] for key in keys])  # (models, tokens)
    for key, value, permutation in zip(keys, values, permutations, strict=True):
        if int(permutation.max()) >= value.shape[0]:
            raise CheckpointError(f"model {key}'s vocabulary tensor has {value.shape[0]} rows, fewer than its "
                                  "tokenizer's tokens", "check the model's config.json vocab_size")
    present = permutations >= 0
    count = present.sum(dim=0)
    lacking = ~present.all(dim=0)
    defaults = torch.zeros((count_tokens, *shape), dtype=dtype)
    single = lacking & (count == 1)
    if bool(single.any()):
        donor = present.to(torch.int8).argmax(dim=0)
        for m, value in enumerate(values):
            chosen = single & (donor == m)
            defaults[chosen] = value[permutations[m, chosen]]
    shared = lacking & (count >= 2)
    if base_key is not None and base_key in keys:
        from_base = shared & present[keys.index(base_key)]
        b = keys.index(base_key)
        defaults[from_base] = values[b][permutations[b, from_base]]
        shared = shared & ~from_base
    if bool(shared.any()):
        total = torch.zeros((int(shared.sum()), *shape), dtype=dtype)
        rows = shared.nonzero().squeeze(1)
        for m, value in enumerate(values):
            has = present[m, rows]
            total[has] = total[has] + value[permutations[m, rows[has]]]
        for n in sorted(set(count[rows].tolist())):
            same = count[rows] == n
            total[same] = total[same] / n
        defaults[rows] = total
    result = []
    for m, value in enumerate(values):
        merged = torch.zeros((vocabulary.rows, *shape), dtype=dtype)
        own = present[m]
        merged[:count_tokens][own] = value[permutations[m, own]]
        merged[:count_tokens][~own] = defaults[~own]
        if vocabulary.rows > count_tokens:
            # as mergekit (after https://nlp.stanford.edu/~johnhew/vocab-expansion.html)
            merged[count_tokens:] = torch.mean(merged[:count_tokens], dim=0)
        result.append(merged)
    return result


# ------------------------------------------------------------------------------ chat templates
def _named_template(name: str) -> str | None:
    """mergekit's template file ``NAME.jinja``, read from the installed mergekit package (the
    templates are mergekit's files and are not copied here); None when there is none."""
    try:
        resource = importlib.resources.files(_TEMPLATE_PACKAGE).joinpath(name + ".jinja")
    except ModuleNotFoundError:
        return None
    return resource.read_text(encoding="utf-8") if resource.is_file() else None


def _looks_like_name(value: str) -> bool:
    return len(value) < 256 and "\n" not in value and "{" not in value


def check_chat_template(value: Any) -> None:
    """Refuse, when the config is read, a chat_template mergekit 0.1.5 would refuse or that cannot
    be found: ``auto``, a named template, or a literal Jinja template."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"mergekit chat_template {excerpt(value)} is not text",
                          "give auto, a template name (chatml, llama3, ...) or a Jinja template")
    if value == "auto":
        return
    if _looks_like_name(value):
        if _named_template(value) is not None:
            return
        try:
            names = sorted(entry.name.removesuffix(".jinja")
                           for entry in importlib.resources.files(_TEMPLATE_PACKAGE).iterdir()
                           if entry.name.endswith(".jinja"))
        except ModuleNotFoundError:
            raise ConfigError(f"chat_template {excerpt(value)} names one of mergekit's templates, which are "
                              "read from an installed mergekit (not found)",
                              "pip install mergekit==0.1.5, or paste the template's Jinja text as "
                              "chat_template") from None
        if len(value) < 20:
            raise ConfigError(f"chat_template {excerpt(value)} is no known template name",
                              f"use auto, one of {', '.join(names)}, or a Jinja template")
    if len(value) < 20 or "{" not in value:
        raise ConfigError(f"chat_template {excerpt(value)} is neither a template name nor a Jinja template "
                          "(mergekit: 'Invalid chat template')",
                          "give auto, a template name (chatml, llama3, ...) or a Jinja template")


def resolve_chat_template(value: str, folders: list[Path], *, trust_remote_code: bool) -> str | None:
    """The template text mergekit sets: for ``auto`` the most common template among the models'
    tokenizers (stripped; None when none has one), a named template's file, or the text itself."""
    if value == "auto":
        templates = []
        for folder in folders:
            try:
                template = load_tokenizer(folder, trust_remote_code=trust_remote_code, role="model").chat_template
            except CheckpointError:
                continue  # mergekit skips a model whose tokenizer does not load
            if isinstance(template, dict):
                template = template.get("default")
            if template:
                templates.append(template.strip())
        return Counter(templates).most_common(1)[0][0] if templates else None
    if _looks_like_name(value):
        named = _named_template(value)
        if named is not None:
            return named
    return value


def save_tokenizer(tokenizer: Any, folder: Path, chat_template: str | None) -> None:
    """Write ``tokenizer`` (with ``chat_template`` when given) as transformers saves it: what mergekit
    writes (with transformers 5 the template goes to chat_template.jinja)."""
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(folder), safe_serialization=True)
