"""Country and language names in English, French, German and Spanish from the Unicode CLDR data
shipped in ``babel==2.18.0`` (``babel/locale-data/<locale>.dat``).

Those files are pickles. We never unpickle them: :func:`recall_merge.data.safe_formats.read_pickle_data`
reads their plain dicts without importing or calling anything, and we take only the
``territories`` and ``languages`` tables (code → display name).

Territories are the two-letter codes, less groupings and placeholders (European Union,
Eurozone, United Nations, Outlying Oceania, Unknown Region, pseudo-locales); languages are the
codes without a region or script suffix, less the placeholders (undetermined, multiple, no
linguistic content, uncoded). A pair whose translation equals the English name (ignoring case:
"Canada" → "Canada") is dropped: copying is not translating.
"""

from __future__ import annotations

from pathlib import Path

from recall_merge.data.common import frame_prompt
from recall_merge.data.manifest import Item
from recall_merge.data.safe_formats import read_pickle_data
from recall_merge.data.task import DataError, Example

TARGETS = {"fr": "French", "de": "German", "es": "Spanish"}
TABLES = {"country": ("territories", "country"), "language": ("languages", "language")}
NOT_COUNTRIES = frozenset({"EU", "EZ", "UN", "QO", "ZZ", "XA", "XB"})
NOT_LANGUAGES = frozenset({"und", "mul", "zxx", "mis"})


def locale_names(folder: Path, locale: str, table: str) -> dict[str, str]:
    """Code → display name from one table of one locale file."""
    path = folder / f"{locale}.dat"
    if not path.is_file():
        raise DataError(f"babel's locale data has no {locale}.dat",
                        "reinstall babel==2.18.0 with --no-deps")
    data = read_pickle_data(path.read_bytes(), path.name)
    names = data.get(table) if isinstance(data, dict) else None
    if not isinstance(names, dict):
        raise DataError(f"{path.name} has no {table} table", "reinstall babel==2.18.0")
    return {code: name for code, name in names.items()
            if isinstance(code, str) and isinstance(name, str)}


def _keep(kind: str, code: str) -> bool:
    if kind == "country":
        return len(code) == 2 and code.isalpha() and code not in NOT_COUNTRIES
    return code.isalpha() and code.islower() and code not in NOT_LANGUAGES


def translation_items(folder: Path, kind: str, targets: tuple[str, ...]) -> list[Item]:
    """English name → its name in each target language (generation), id ``CODE>LANG``."""
    table, noun = TABLES[kind]
    english = locale_names(folder, "en", table)
    items = []
    for target in targets:
        translated = locale_names(folder, target, table)
        for code in sorted(english):
            source, answer = english[code].strip(), translated.get(code, "").strip()
            if not _keep(kind, code) or not answer or source.casefold() == answer.casefold():
                continue
            prompt = frame_prompt(f"Translate this {noun} name from English into "
                                  f"{TARGETS[target]}.", f"English: {source}",
                                  answer_cue=f"{TARGETS[target]}:")
            items.append((f"{code}>{target}", Example(prompt, answer)))
    return items
