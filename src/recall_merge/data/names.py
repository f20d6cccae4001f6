"""First names and their gender from Jörg Michael's ``nam_dict.txt`` (GFDL 1.2+) as shipped in
``gender-guesser==0.4.0``.

Each line has a gender tag in columns 1-2 (``M``, ``F``; ``?M``/``?F`` mostly male/female,
``?`` unisex, ``1M``/``1F`` only as a first part, ``=`` an equivalence line), the name in columns
4-29, a ``+`` in column 30 on a duplicate line spelled with expanded umlauts (skipped, as the
file's header asks), then one hexadecimal frequency digit per country (1 rare ... D very common).

We keep names tagged only ``M`` or only ``F`` on every line that lists them (a name also tagged
``?`` or the other gender is ambiguous and dropped), without ``+`` (which stands for a space or a
hyphen), and common enough somewhere: a frequency of at least :data:`MIN_FREQUENCY` in one
country (the scale is logarithmic: 4 is roughly 1 in 4,000 people).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from recall_merge.data.common import frame_prompt
from recall_merge.data.manifest import Item
from recall_merge.data.task import DataError, Example

LABELS = ("female", "male")
GENDERS = {"M": "male", "F": "female"}
MIN_FREQUENCY = 4
NAME_COLUMNS = slice(3, 29)
EXPANDED_UMLAUT_COLUMN = 29
FREQUENCY_COLUMNS = slice(30, 85)


def read_names(path: Path) -> dict[str, tuple[set[str], int]]:
    """Name → (every gender tag it carries, its highest frequency digit)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path.name}: {str(error)[:120]}",
                        "reinstall gender-guesser==0.4.0 with --no-deps") from None
    tags: dict[str, set[str]] = defaultdict(set)
    frequency: dict[str, int] = defaultdict(int)
    for line in text.splitlines():
        if not line.strip() or line.startswith("#") or line.startswith("="):
            continue
        if len(line) > EXPANDED_UMLAUT_COLUMN and line[EXPANDED_UMLAUT_COLUMN] == "+":
            continue
        name = line[NAME_COLUMNS].strip()
        if not name:
            continue
        tags[name].add(line[:2].strip())
        digits = [int(char, 16) for char in line[FREQUENCY_COLUMNS]
                  if char in "0123456789ABCDEFabcdef"]
        frequency[name] = max([frequency[name], *digits])
    return {name: (tags[name], frequency[name]) for name in tags}


def gender_items(path: Path, min_frequency: int = MIN_FREQUENCY) -> list[Item]:
    """Name → female/male (classification), id the name."""
    items = []
    for name, (tags, frequency) in sorted(read_names(path).items()):
        if len(tags) != 1 or "+" in name or frequency < min_frequency:
            continue
        gender = GENDERS.get(next(iter(tags)))
        if gender:
            prompt = frame_prompt("Is this first name usually female or male?", f"Name: {name}",
                                  LABELS, answer_cue="Gender:")
            items.append((name, Example(prompt, gender, LABELS)))
    return items
