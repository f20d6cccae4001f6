"""SYNTHETIC tasks for unit tests and the tiny example: generated, meaningless, never a benchmark.

Specs:

* ``synthetic:NAME`` — classification. The prompt is ``"NAME: WORD"`` (a word of a small fixed
  vocabulary); the label is a function of the word, with a word → label table seeded by ``NAME``.
  Different names get different label words and tables, so learning one task disturbs the
  others: forgetting is visible even on a tiny random model, which can learn such a table in a
  few dozen steps.
* ``synthetic-gen:NAME`` — generation scored by exact match: the target is another word of the
  vocabulary, from a seeded word → word table.
"""

from __future__ import annotations

import random
import zlib

from recall_merge.data.task import Example, Task

_WORDS = "cat dog park team rain jazz".split()
_LABEL_SETS = (
    ("yes", "no"), ("red", "blue", "green"), ("up", "down"), ("sun", "moon", "star"),
    ("left", "right"), ("hot", "cold"),
)


def _rng(name: str, seed: int, salt: str) -> random.Random:
    return random.Random(zlib.crc32(f"{name}|{seed}|{salt}".encode()))


def _classification(name: str, seed: int, sizes: tuple[int, int, int]) -> Task:
    table_rng = _rng(name, 0, "table")  # the rule depends on the name only, not the split seed
    labels = _LABEL_SETS[zlib.crc32(name.encode()) % len(_LABEL_SETS)]
    table = {word: table_rng.choice(labels) for word in _WORDS}
    rng = _rng(name, seed, "items")

    def item() -> Example:
        word = rng.choice(_WORDS)
        return Example(f"{name}: {word}", table[word], tuple(labels))

    train, dev, test = ([item() for _ in range(size)] for size in sizes)
    return Task(name=name, kind="classification", metric="accuracy", train=train, dev=dev,
                test=test, description=f"SYNTHETIC: label of the word ({'/'.join(labels)})",
                source=f"synthetic:{name}", meta={"synthetic": True})


def _generation(name: str, seed: int, sizes: tuple[int, int, int]) -> Task:
    table_rng = _rng(name, 0, "table")
    table = {word: table_rng.choice(_WORDS) for word in _WORDS}
    rng = _rng(name, seed, "items")

    def item() -> Example:
        word = rng.choice(_WORDS)
        return Example(f"{name}: {word}", table[word])

    train, dev, test = ([item() for _ in range(size)] for size in sizes)
    return Task(name=name, kind="generation", metric="exact_match", train=train, dev=dev,
                test=test, description="SYNTHETIC: the word paired with the input word",
                source=f"synthetic-gen:{name}", meta={"synthetic": True})


def is_synthetic_spec(spec: str) -> bool:
    return spec.startswith(("synthetic:", "synthetic-gen:"))


def load_synthetic_task(spec: str, seed: int = 0, max_train: int = 64, max_dev: int = 16,
                        max_test: int = 32) -> Task:
    """Build the synthetic task named by ``spec`` (see the module docstring)."""
    prefix, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"synthetic spec {spec!r} needs a name after the colon")
    sizes = (max_train, max_dev, max_test)
    if prefix == "synthetic-gen":
        return _generation(name, seed, sizes)
    return _classification(name, seed, sizes)
