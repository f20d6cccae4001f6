"""Inflected word → lemma pairs from simplemma's dictionaries (``simplemma==2.0.0``).

Each ``data/<language>.plzma`` is an lzma-compressed front-coded stream of form → lemma pairs,
decoded by :func:`recall_merge.data.safe_formats.read_frontcoded` (a byte format, not a pickle).
We keep pairs where the form differs from its lemma and both are single words of letters, at
least three long, in lower case (German nouns may start with a capital, as both form and lemma).
German and Spanish hold over 700,000 such pairs; every language keeps a fixed sample of
:data:`POOL_LIMIT` (those whose form has the smallest CRC-32).
"""

from __future__ import annotations

import lzma
import zlib
from pathlib import Path

from recall_merge.data.common import frame_prompt
from recall_merge.data.manifest import Item
from recall_merge.data.safe_formats import read_frontcoded
from recall_merge.data.task import DataError, Example

LANGUAGES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish"}
POOL_LIMIT = 50_000  # far more than a benchmark needs; keeps a load to seconds


def _plain(word: str, language: str) -> bool:
    if len(word) < 3 or not word.isalpha():
        return False
    return word.islower() or (language == "de" and word[0].isupper() and word[1:].islower())


def read_pairs(path: Path) -> dict[bytes, bytes]:
    """Every form → lemma pair of one language file (UTF-8 bytes)."""
    try:
        raw = lzma.decompress(path.read_bytes())
    except (OSError, lzma.LZMAError) as error:
        raise DataError(f"cannot read {path.name}: {str(error)[:120]}",
                        "reinstall simplemma==2.0.0 with --no-deps") from None
    return read_frontcoded(raw, path.name)


def lemma_items(folder: Path, language: str, limit: int = POOL_LIMIT) -> list[Item]:
    """Form → lemma (generation, exact match), id the form: the ``limit`` kept pairs whose
    forms have the smallest CRC-32, a fixed sample that no seed changes (and that saves
    decoding and checking the other pairs)."""
    name = LANGUAGES[language]
    pairs = read_pairs(folder / f"{language}.plzma")
    kept = []
    for form_bytes in sorted(pairs, key=zlib.crc32):  # ties keep the file order
        try:
            form, lemma = form_bytes.decode("utf-8"), pairs[form_bytes].decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{language}.plzma holds words that are not UTF-8",
                            "reinstall simplemma==2.0.0 with --no-deps") from None
        if (form != lemma and _plain(form, language) and _plain(lemma, language)
                and form[0].isupper() == lemma[0].isupper()):
            kept.append((form, lemma))
            if len(kept) == limit:
                break
    instruction = f"Write the dictionary form (lemma) of this {name} word."
    return [(form, Example(frame_prompt(instruction, f"Word: {form}", answer_cue="Lemma:"), lemma))
            for form, lemma in sorted(kept)]
