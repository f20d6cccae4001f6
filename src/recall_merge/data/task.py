"""One interface for every task: seeded splits, a prompt, and the kind of scoring it needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from recall_merge.errors import RecallError

TaskKind = Literal["classification", "multiple_choice", "generation"]
Metric = Literal["accuracy", "exact_match", "f1", "bleu", "rougeL", "chrf"]


@dataclass(frozen=True)
class Example:
    """One item. ``prompt`` is the task input already framed with the task's instruction (before
    any chat template). ``target`` is the gold answer text. ``choices`` lists the candidate answers
    for classification and multiple choice (``target`` is one of them); None for generation.
    ``references`` lists every acceptable gold answer when there are several (SQuAD-style
    answers, BIG-bench target lists), ``target`` first; empty means ``target`` alone."""

    prompt: str
    target: str
    choices: tuple[str, ...] | None = None
    references: tuple[str, ...] = ()

    def gold_answers(self) -> tuple[str, ...]:
        """Every acceptable answer: ``references`` if given, else just ``target``."""
        return self.references or (self.target,)


class DataError(RecallError):
    """A task's data is missing, unreadable, or not in the schema its source expects."""


@dataclass
class Task:
    name: str
    kind: TaskKind
    metric: Metric
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    description: str = ""
    source: str = ""
    meta: dict = field(default_factory=dict)

    def inputs(self, split: str = "train") -> list[str]:
        """The raw prompts of a split: what RECALL clusters as the newest task's samples."""
        return [example.prompt for example in getattr(self, split)]
