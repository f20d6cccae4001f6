"""AFINN word sentiment (Finn Årup Nielsen; ODbL 1.0) as shipped in the ``afinn==0.1`` source
archive: ``afinn/data/AFINN-en-165.txt`` (3,382 English entries) and ``AFINN-da-32.txt``
(3,552 Danish entries), one ``word<TAB>score`` a line, scores -5..5.

We keep single words (letters, hyphens or apostrophes inside allowed) with a non-zero score;
the label is its sign.
"""

from __future__ import annotations

import re
from pathlib import Path

from recall_merge.data.common import frame_prompt
from recall_merge.data.manifest import Item
from recall_merge.data.task import DataError, Example

LABELS = ("negative", "positive")
LANGUAGES = {"en": ("AFINN-en-165.txt", "English"), "da": ("AFINN-da-32.txt", "Danish")}
WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")


def read_scores(path: Path) -> dict[str, int]:
    """Word → score, in file order."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path.name}: {str(error)[:120]}",
                        "reinstall afinn==0.1 with --no-deps") from None
    scores = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        word, _, score = line.rpartition("\t")
        try:
            scores[word.strip()] = int(score)
        except ValueError:
            raise DataError(f"{path.name} line {number} is not 'word<TAB>score'",
                            "reinstall afinn==0.1 with --no-deps") from None
    return scores


def sentiment_items(path: Path, language: str) -> list[Item]:
    """Word → negative/positive (classification), id the word."""
    name = LANGUAGES[language][1]
    items = []
    for word, score in read_scores(path).items():
        if score == 0 or not WORD.fullmatch(word):
            continue
        prompt = frame_prompt(f"Is the sentiment of this {name} word positive or negative?",
                              f"Word: {word}", LABELS, answer_cue="Sentiment:")
        items.append((word, Example(prompt, LABELS[score > 0], LABELS)))
    return items
