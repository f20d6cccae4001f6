"""Quotations from the BSD ``fortune`` collection, Debian package ``fortunes``
(``usr/share/games/fortunes/<topic>``: entries separated by lines holding only ``%``).

``fortunes:topic`` asks which of nine topic files a quotation comes from. It keeps entries of at
most :data:`MAX_CHARS` characters (whitespace collapsed); an entry found in two topic files is
dropped, a repeat within one file keeps its first place.
"""

from __future__ import annotations

import re
from pathlib import Path

from recall_merge.data.common import frame_prompt
from recall_merge.data.manifest import Item
from recall_merge.data.task import DataError, Example

TOPICS = ("computers", "education", "food", "law", "love", "politics", "science", "sports", "work")
MAX_CHARS = 300
SEPARATOR = re.compile(r"^%\s*$", re.MULTILINE)


def read_entries(path: Path) -> list[str]:
    """One file's entries, whitespace collapsed, empty ones dropped. Most files are ASCII or
    UTF-8; a Latin-1 byte is read as Latin-1."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read fortune file {path.name}: {str(error)[:120]}",
                        "delete the unpacked fortunes folder in the cache and load again") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return [" ".join(entry.split()) for entry in SEPARATOR.split(text) if entry.strip()]


def topic_items(folder: Path) -> list[Item]:
    """Quotation → topic (classification), id ``topic:N`` (N its entry number in the file)."""
    found: dict[str, list[tuple[str, int]]] = {}
    for topic in TOPICS:
        if not (folder / topic).is_file():
            raise DataError(f"the fortunes package has no {topic} file",
                            "delete the unpacked fortunes folder in the cache and load again")
        for number, entry in enumerate(read_entries(folder / topic)):
            if len(entry) <= MAX_CHARS:
                found.setdefault(entry, []).append((topic, number))
    items = []
    for entry, places in found.items():
        if len({topic for topic, _ in places}) > 1:
            continue
        topic, number = places[0]
        prompt = frame_prompt("Which topic is this quotation about?", f"Quotation: {entry}",
                              TOPICS, answer_cue="Topic:")
        items.append((f"{topic}:{number}", Example(prompt, topic, TOPICS)))
    return items
