"""WordNet 3.0 (Princeton; WordNet 3.0 licence) from Debian's ``wordnet-base`` package:
``usr/share/wordnet/index.noun`` lists every noun with the byte offsets of its senses in
``data.noun``, whose second field is the sense's lexicographer file (noun.animal, noun.food...).

``wordnet:noun_category`` asks which of eight concrete categories a noun names. It keeps single
lower-case words of three letters or more whose senses all lie in one of those eight files (a
noun with senses in two categories is ambiguous and dropped).

``wordnet:definition_mc`` gives a sense's definition and four nouns of its lexicographer file,
and asks for the letter of the noun it defines (see :func:`definition_mc_items`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from recall_merge.data.common import frame_prompt
from recall_merge.data.lettered import Question, lettered_items, pick
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


# --- wordnet:definition_mc ---------------------------------------------------------------------

@dataclass(frozen=True)
class Synset:
    """One line of data.noun: a sense, the words that share it and its definition."""

    lexicographer_file: int
    words: tuple[str, ...]
    definition: str
    hypernyms: frozenset[int] = frozenset()  # offsets, instance hypernyms included


@dataclass(frozen=True)
class Noun:
    """One line of index.noun."""

    senses: tuple[int, ...]  # synset offsets, most frequent first
    tagged: int  # senses tagged in the SemCor corpus: 0 for a rare word


def _unreadable(folder: Path, error: Exception) -> DataError:
    return DataError(f"cannot read WordNet's noun files in {folder}: {str(error)[:120]}",
                     "delete the unpacked wordnet-base folder in the cache and load again")


def definition(gloss: str) -> str:
    """The defining part of a gloss: its ``;``-separated parts less the quoted examples."""
    parts = [part.strip() for part in gloss.split(";")]
    return "; ".join(part for part in parts if part and not part.startswith(('"', "'")))


def noun_synsets(folder: Path) -> dict[int, Synset]:
    """Offset → synset of data.noun (its words as written there, e.g. ``Canis_familiaris``)."""
    try:
        text = (folder / "data.noun").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise _unreadable(folder, error) from None
    synsets = {}
    try:
        for line in text.splitlines():
            if not line[:1].isdigit():  # the licence header lines start with spaces
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            count = int(fields[3], 16)
            words = tuple(fields[4 + 2 * k] for k in range(count))
            first_pointer = 5 + 2 * count  # after the pointer count; 4 fields a pointer
            pointers = [fields[first_pointer + 4 * k:first_pointer + 4 * k + 2]
                        for k in range(int(fields[4 + 2 * count]))]
            hypernyms = frozenset(int(offset) for symbol, offset in pointers
                                  if symbol in ("@", "@i"))
            synsets[int(fields[0])] = Synset(int(fields[1]), words, definition(gloss),
                                             hypernyms)
    except (ValueError, IndexError) as error:
        raise DataError(f"WordNet's data.noun has a malformed synset line ({str(error)[:80]})",
                        "delete the unpacked wordnet-base folder in the cache and load again"
                        ) from None
    return synsets


def noun_index(folder: Path) -> dict[str, Noun]:
    """Noun (lower case, ``_`` for spaces) → its senses and how many are tagged in SemCor."""
    try:
        index = (folder / "index.noun").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise _unreadable(folder, error) from None
    nouns = {}
    try:
        for line in index.splitlines():
            if not line or line.startswith(" "):
                continue
            fields = line.split()
            senses, pointers = int(fields[2]), int(fields[3])
            nouns[fields[0]] = Noun(
                tuple(int(field) for field in fields[6 + pointers:6 + pointers + senses]),
                int(fields[5 + pointers]))
    except (ValueError, IndexError) as error:
        raise DataError(f"WordNet's index.noun has a malformed line ({str(error)[:80]})",
                        "delete the unpacked wordnet-base folder in the cache and load again"
                        ) from None
    return nouns


def _mentions(text: str, word: str) -> bool:
    """True when a word of ``text`` starts with ``word`` ("dog" in "dogs", "dog-like")."""
    return re.search(rf"\b{re.escape(word)}", text, flags=re.IGNORECASE) is not None


def _close(one: Synset, one_offset: int, other: Synset, other_offset: int) -> bool:
    """The same synset, one the other's hypernym, or siblings under a shared hypernym: a
    distractor with such a sense could fit the definition nearly as well."""
    return (one_offset == other_offset or one_offset in other.hypernyms
            or other_offset in one.hypernyms or bool(one.hypernyms & other.hypernyms))


def definition_mc_items(folder: Path, answer_with: Literal["letter", "text"] = "letter"
                        ) -> list[Item]:
    """A WordNet definition and four nouns of its lexicographer file, answered with the letter
    of the noun it defines (lettered multiple choice; ``answer_with="text"``: with the noun
    itself, ``wordnet:definition_choice``); id the noun.

    Candidates are single lower-case words of three letters or more that SemCor has seen (a
    tagged sense: no rare words) and whose most frequent sense lies in the file; each item is
    such a sense, its definition and the first candidate it is the most frequent sense of. A
    definition that names its own noun is dropped, and so are plurals of other nouns. Distractors
    are other candidates of the same file none of whose senses is the defined synset (so exactly
    one option fits), its hypernym, its hyponym or its sibling (so none fits nearly as well),
    and that the definition does not name."""
    synsets, nouns = noun_synsets(folder), noun_index(folder)
    candidates: dict[int, list[str]] = defaultdict(list)  # lexicographer file → nouns
    defined: dict[int, str] = {}  # synset offset → the noun asked for
    for noun, entry in sorted(nouns.items()):
        first = synsets.get(entry.senses[0]) if entry.senses else None
        # written in lower case in its synset: a common noun, not a name ("Alabama"); not the
        # plural of another noun ("shoes" as in "in your shoes")
        if (first is None or entry.tagged < 1 or len(noun) < 3 or noun not in first.words
                or not (noun.isalpha() and noun.islower())
                or (noun.endswith("s") and noun[:-1] in nouns)):
            continue
        candidates[first.lexicographer_file].append(noun)
        defined.setdefault(entry.senses[0], noun)
    questions = []
    for offset, noun in sorted(defined.items()):
        synset = synsets[offset]
        if not synset.definition or _mentions(synset.definition, noun):
            continue

        def fits(other: str, synset: Synset = synset, offset: int = offset) -> bool:
            return (not any(_close(synsets[sense], sense, synset, offset)
                            for sense in nouns[other].senses)
                    and not _mentions(synset.definition, other))

        distractors = pick(candidates[synset.lexicographer_file], 3, "distractors", noun,
                           fits=fits)
        if len(distractors) == 3:
            questions.append(Question(noun, "Which noun does this definition define?",
                                      f"Definition: {synset.definition}", noun,
                                      tuple(distractors)))
    return lettered_items(questions, "wordnet:definition_mc", answer_with)
