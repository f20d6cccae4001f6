"""Inflected word → lemma pairs from simplemma's dictionaries (``simplemma==2.0.0``).

Each ``data/<language>.plzma`` is an lzma-compressed front-coded stream of form → lemma pairs,
decoded by :func:`recall_merge.data.safe_formats.read_frontcoded` (a byte format, not a pickle).
We keep pairs where the form differs from its lemma and both are single words of letters, at
least three long, in lower case (German nouns may start with a capital, as both form and lemma).
German and Spanish hold over 700,000 such pairs; every language keeps a fixed sample of about
:data:`POOL_LIMIT`.
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


def read_pairs(path: Path) -> dict[str, str]:
    """Every form → lemma pair of one language file."""
    try:
        raw = lzma.decompress(path.read_bytes())
    except (OSError, lzma.LZMAError) as error:
        raise DataError(f"cannot read {path.name}: {str(error)[:120]}",
                        "reinstall simplemma==2.0.0 with --no-deps") from None
    try:
        return {form.decode("utf-8"): lemma.decode("utf-8")
                for form, lemma in read_frontcoded(raw, path.name).items()}
    except UnicodeDecodeError:
        raise DataError(f"{path.name} holds words that are not UTF-8",
                        "reinstall simplemma==2.0.0 with --no-deps") from None


def lemma_items(folder: Path, language: str, limit: int = POOL_LIMIT) -> list[Item]:
    """Form → lemma (generation, exact match), id the form; at most about ``limit`` pairs, a
    fixed sample (CRC-32 of the form below a threshold) that no seed changes."""
    name = LANGUAGES[language]
    pairs = [(form, lemma) for form, lemma in read_pairs(folder / f"{language}.plzma").items()
             if form != lemma and _plain(form, language) and _plain(lemma, language)
             and form[0].isupper() == lemma[0].isupper()]
    if len(pairs) > limit:
        threshold = (limit << 32) // len(pairs)
        pairs = [pair for pair in pairs if zlib.crc32(pair[0].encode("utf-8")) < threshold]
    instruction = f"Write the dictionary form (lemma) of this {name} word."
    return [(form, Example(frame_prompt(instruction, f"Word: {form}", answer_cue="Lemma:"), lemma))
            for form, lemma in sorted(pairs)]
