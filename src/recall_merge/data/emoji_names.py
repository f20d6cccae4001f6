"""Emoji names (Unicode CLDR short names) as shipped in ``emoji==2.16.0``
(``emoji/unicode_codes/emoji.json`` and ``emoji_<lang>.json``: plain JSON, read as data; the
package itself is never imported).

We keep fully qualified emoji (status 2 in the package's table) without a skin-tone modifier
and without flags (a flag's English "name" is the bare country name, while its French one reads
"drapeau ..."; country names are the CLDR tasks' subject). Names are written as words: the
package's ``:grinning_face:`` becomes "grinning face".
"""

from __future__ import annotations

from pathlib import Path

from recall_merge.data.common import frame_prompt, read_json_mapping
from recall_merge.data.manifest import Item
from recall_merge.data.task import Example

TARGETS = {"fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese"}
FULLY_QUALIFIED = 2
REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)
WAVING_BLACK_FLAG = 0x1F3F4  # subdivision flags: black flag + tag characters


def _read(path: Path) -> dict:
    return read_json_mapping(path, "reinstall emoji==2.16.0 with --no-deps")


def as_words(name: str) -> str:
    """``:grinning_face:`` → ``grinning face``."""
    return " ".join(name.strip().strip(":").replace("_", " ").split())


def emoji_id(emoji: str) -> str:
    """The emoji's code points, ``1F947`` or ``1F9DD-200D-2640-FE0F`` (ASCII, stable)."""
    return "-".join(f"{ord(char):04X}" for char in emoji)


def _is_flag(emoji: str) -> bool:
    return ord(emoji[0]) in REGIONAL_INDICATORS or (
        ord(emoji[0]) == WAVING_BLACK_FLAG and len(emoji) > 1)


def base_emoji(folder: Path) -> dict[str, dict]:
    """Emoji → its record in the English table, for the emoji the module docstring keeps."""
    return {emoji: record for emoji, record in _read(folder / "emoji.json").items()
            if isinstance(record, dict) and record.get("status") == FULLY_QUALIFIED
            and isinstance(record.get("en"), str) and "skin_tone" not in record["en"]
            and not _is_flag(emoji)}


def name_items(folder: Path) -> list[Item]:
    """Emoji → its English name (generation); the package's aliases count as right too."""
    items = []
    for emoji, record in sorted(base_emoji(folder).items()):
        name = as_words(record["en"])
        aliases = [as_words(alias) for alias in record.get("alias", []) if isinstance(alias, str)]
        references = tuple(dict.fromkeys([name, *aliases]))
        prompt = frame_prompt("Write the English name of this emoji.", f"Emoji: {emoji}",
                              answer_cue="Name:")
        items.append((emoji_id(emoji), Example(prompt, name, None, references)))
    return items


def translation_items(folder: Path, target: str) -> list[Item]:
    """An emoji's English name → its name in ``target`` (generation), id the code points; a
    name that stays the same is dropped, as is one English name shared by two emoji."""
    translated = _read(folder / f"emoji_{target}.json")
    items, seen = [], set()
    for emoji, record in sorted(base_emoji(folder).items()):
        source = as_words(record["en"])
        answer = as_words(translated.get(emoji, "")) if isinstance(translated.get(emoji), str) \
            else ""
        if not answer or source.casefold() == answer.casefold() or source in seen:
            continue
        seen.add(source)
        prompt = frame_prompt(f"Translate this emoji name from English into {TARGETS[target]}.",
                              f"English: {source}", answer_cue=f"{TARGETS[target]}:")
        items.append((emoji_id(emoji), Example(prompt, answer)))
    return items
