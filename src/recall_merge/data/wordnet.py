"""WordNet 3.0 (Princeton; WordNet 3.0 licence) from Debian's ``wordnet-base`` package:
``usr/share/wordnet/index.noun`` lists every noun with the byte offsets of its senses in
``data.noun``, whose second field is the sense's lexicographer file (noun.animal, noun.food...).

``wordnet:noun_category`` asks which of eight concrete categories a noun names. It keeps single
lower-case words of three letters or more whose senses all lie in one of those eight files (a
noun with senses in two categories is ambiguous and dropped).
"""

from __future__ import annotations

from pathlib import Path

from recall_merge.data.common import frame_prompt
from recall_merge.data.manifest import Item
from recall_merge.data.task import DataError, Example

# lexicographer file number (lexnames(5WN)) → label
CATEGORIES = {5: "animal", 6: "artifact", 8: "body part", 13: "food", 15: "place", 18: "person",
              20: "plant", 27: "substance"}
LABELS = tuple(sorted(CATEGORIES.values()))


def _lexicographer_file(data: bytes, offset: int) -> int:
    """The lex_filenum field of the synset line starting at byte ``offset`` of data.noun."""
    end = data.find(b"\n", offset)
    fields = data[offset:end if end >= 0 else None].split(maxsplit=2)
    if len(fields) < 2 or int(fields[0]) != offset:
        raise ValueError(f"no synset at byte {offset}")
    return int(fields[1])


def noun_categories(folder: Path) -> dict[str, set[int]]:
    """Noun → the lexicographer files of all its senses."""
    try:
        data = (folder / "data.noun").read_bytes()
        index = (folder / "index.noun").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read WordNet's noun files in {folder}: {str(error)[:120]}",
                        "delete the unpacked wordnet-base folder in the cache and load again"
                        ) from None
    nouns = {}
    try:
        for line in index.splitlines():
            if not line or line.startswith(" "):  # the licence header lines start with spaces
                continue
            fields = line.split()
            senses, pointers = int(fields[2]), int(fields[3])
            offsets = [int(field) for field in fields[6 + pointers:6 + pointers + senses]]
            nouns[fields[0]] = {_lexicographer_file(data, offset) for offset in offsets}
    except (ValueError, IndexError) as error:
        raise DataError(f"WordNet's index.noun does not match data.noun ({str(error)[:80]})",
                        "delete the unpacked wordnet-base folder in the cache and load again"
                        ) from None
    return nouns


def noun_category_items(folder: Path) -> list[Item]:
    """Noun → one of eight categories (classification), id the noun."""
    items = []
    for noun, files in sorted(noun_categories(folder).items()):
        if len(files) != 1 or len(noun) < 3 or not (noun.isalpha() and noun.islower()):
            continue
        label = CATEGORIES.get(next(iter(files)))
        if label:
            prompt = frame_prompt("Which kind of thing does this noun name?", f"Noun: {noun}",
                                  LABELS, answer_cue="Category:")
            items.append((noun, Example(prompt, label, LABELS)))
    return items
