"""Multiple-choice items answered with a letter: a question, four options A–D (the answer and
three distractors) and the gold letter as the target, scored like the other multiple-choice tasks
by the log-likelihood of each choice (here the letters).

Everything about an item is fixed by its id, never by the split seed, so a manifest or another
seed sees the same prompt: the distractors' order comes from ``sha256(id)``, and the gold letters
are dealt round robin in the order of ``sha256(id)`` over the whole pool, so every letter is gold
for a quarter of the items (to within one). The task then splits with ``balance=True`` (one label
per letter), which makes every four-item prefix of dev and test balanced and chance exactly 25%.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from recall_merge.data.common import frame_prompt
from recall_merge.data.manifest import Item
from recall_merge.data.task import DataError, Example

LETTERS = ("A", "B", "C", "D")
ANSWER_WITH_A_LETTER = "Answer with the letter of the correct option."
ANSWER_WITH_THE_OPTION = "Answer with the correct option."


def stable_int(*parts: str) -> int:
    """A number fixed by ``parts`` on every machine and Python version (``hash`` is salted)."""
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:8], "big")


def pick(candidates: Sequence[str], count: int, *key: str,
         fits: Callable[[str], bool] | None = None) -> list[str]:
    """``count`` candidates, distinct ignoring case and each passing ``fits``, drawn in an order
    fixed by ``key`` (fewer when fewer pass). Draws one at a time, so a big pool costs only the
    draws it takes."""
    unique = list({candidate.casefold(): candidate for candidate in reversed(candidates)
                   }.values())[::-1]
    rng = random.Random(stable_int(*key))
    chosen: list[str] = []
    tried: set[int] = set()
    while len(chosen) < count and len(tried) < len(unique):
        index = rng.randrange(len(unique))
        if index in tried:
            continue
        tried.add(index)
        if fits is None or fits(unique[index]):
            chosen.append(unique[index])
    return chosen


@dataclass(frozen=True)
class Question:
    """One question before lettering: ``answer`` is right and each distractor is wrong."""

    item_id: str
    instruction: str
    body: str
    answer: str
    distractors: tuple[str, ...]


def options_of(prompt: str) -> dict[str, str]:
    """Letter → option text, read back from a lettered prompt."""
    options = {}
    for line in prompt.splitlines():
        letter, dot, text = line.partition(". ")
        if dot and letter in LETTERS:
            options[letter] = text
    return options


def lettered_items(questions: Sequence[Question], source: str,
                   answer_with: Literal["letter", "text"] = "letter") -> list[Item]:
    """(id, Example) per question, in the given order: the options under the body as ``A. …``
    lines, the target the gold letter, the choices the letters (see the module docstring).

    ``answer_with="text"``: the same options in the same order as ``- …`` lines, answered with
    the option's text; the choices are the four texts (lm-eval's way of scoring ARC or MMLU-style
    continuations). A 135M model fine-tuned for 30 steps learns only the letter prior of the
    lettered form (it answers one letter for every item: benchmarks/results/task_probe.json);
    scoring the texts asks what it knows about the options instead of how it maps them to
    letters."""
    rank = {question.item_id: position for position, question in enumerate(
        sorted(questions, key=lambda question: stable_int("gold", question.item_id)))}
    items = []
    for question in questions:
        texts = [question.answer, *question.distractors]
        if len(texts) != len(LETTERS) or len({text.casefold() for text in texts}) != len(texts):
            raise DataError(f"{source}: item {question.item_id!r} needs one answer and "
                            f"{len(LETTERS) - 1} distinct distractors, got {texts}",
                            "the reader must drop items without enough distinct distractors")
        gold = rank[question.item_id] % len(LETTERS)
        distractors = list(question.distractors)
        random.Random(stable_int("order", question.item_id)).shuffle(distractors)
        options = [*distractors[:gold], question.answer, *distractors[gold:]]
        if answer_with == "text":
            lines = "\n".join(f"- {text}" for text in options)
            prompt = frame_prompt(f"{question.instruction} {ANSWER_WITH_THE_OPTION}",
                                  f"{question.body}\nOptions:\n{lines}", answer_cue="Answer:")
            items.append((question.item_id, Example(prompt, question.answer, tuple(options))))
            continue
        lines = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, options,
                                                                        strict=True))
        prompt = frame_prompt(f"{question.instruction} {ANSWER_WITH_A_LETTER}",
                              f"{question.body}\n{lines}", answer_cue="Answer:")
        items.append((question.item_id, Example(prompt, LETTERS[gold], LETTERS)))
    return items
