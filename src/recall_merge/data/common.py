"""Pieces every task source shares: prompt framing, seeded splits, and building a Task."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from recall_merge.data.task import DataError, Example, Metric, Task, TaskKind

DEFAULT_DEV_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class SplitSizes:
    """Caps on each split (None: everything the split's share holds) and the shares themselves.

    Membership is decided by the shares alone and the caps take prefixes, so lowering
    ``n_train`` never moves an example into dev or test.
    """

    n_train: int | None = None
    n_dev: int | None = None
    n_test: int | None = None
    dev_fraction: float = DEFAULT_DEV_FRACTION
    test_fraction: float = DEFAULT_TEST_FRACTION

    @classmethod
    def from_options(cls, options: dict) -> SplitSizes:
        """Pop the split options out of ``options`` (the rest belong to the source)."""
        sizes = cls(
            n_train=options.pop("n_train", None),
            n_dev=options.pop("n_dev", None),
            n_test=options.pop("n_test", None),
            dev_fraction=float(options.pop("dev_fraction", DEFAULT_DEV_FRACTION)),
            test_fraction=float(options.pop("test_fraction", DEFAULT_TEST_FRACTION)),
        )
        sizes.validate()
        return sizes

    def validate(self) -> None:
        """Reject negative caps and shares that leave nothing for training."""
        from recall_merge.errors import ConfigError

        for name in ("n_train", "n_dev", "n_test"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}",
                                  f"set {name} to a count such as 200, or leave it out")
        if not (0 <= self.dev_fraction < 1 and 0 <= self.test_fraction < 1
                and self.dev_fraction + self.test_fraction < 1):
            raise ConfigError(
                f"dev_fraction={self.dev_fraction} and test_fraction={self.test_fraction} "
                "must each lie in [0, 1) and sum to less than 1",
                "use shares such as dev_fraction=0.1, test_fraction=0.2")


def frame_prompt(
    instruction: str,
    body: str,
    choices: Sequence[str] | None = None,
    answer_cue: str = "Answer:",
    choices_on_lines: bool = False,
) -> str:
    """Instruction, blank line, the input, the options (unless the instruction already names
    them all), then an answer cue. No chat template and no trailing whitespace."""
    parts = [instruction.strip(), "", body.strip()] if instruction.strip() else [body.strip()]
    if choices and not _names_all(instruction, choices):
        if choices_on_lines:
            parts.append("Options:\n" + "\n".join(f"- {choice}" for choice in choices))
        else:
            parts.append("Options: " + ", ".join(choices))
    if answer_cue.strip():
        parts.append(answer_cue.strip())
    return "\n".join(parts).strip()


def _names_all(instruction: str, choices: Sequence[str]) -> bool:
    """True when every choice already appears word for word in the instruction."""
    lowered = instruction.lower()
    return all(choice.lower() in lowered for choice in choices)


def dedupe(examples: Sequence[Example]) -> list[Example]:
    """Drop repeated prompts (first kept), so one item can never be in train and in test."""
    seen: set[str] = set()
    unique = []
    for example in examples:
        if example.prompt not in seen:
            seen.add(example.prompt)
            unique.append(example)
    return unique


def split_examples(
    examples: Sequence[Example], seed: int, sizes: SplitSizes
) -> tuple[list[Example], list[Example], list[Example]]:
    """Seeded, disjoint train/dev/test from one pool: shuffle, cut by shares, then cap."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_test = round(len(order) * sizes.test_fraction)
    n_dev = round(len(order) * sizes.dev_fraction)
    test = [examples[i] for i in order[:n_test]]
    dev = [examples[i] for i in order[n_test:n_test + n_dev]]
    train = [examples[i] for i in order[n_test + n_dev:]]
    return _cap(train, sizes.n_train), _cap(dev, sizes.n_dev), _cap(test, sizes.n_test)


def split_official(
    splits: dict[str, list[Example]], seed: int, sizes: SplitSizes
) -> tuple[list[Example], list[Example], list[Example]]:
    """Use given train/dev/test where they exist; carve the missing ones out of train.

    Test falls back to dev (as for GLUE, whose test labels are hidden) and dev is then cut
    from train with ``dev_fraction``. Each split is shuffled with the seed before capping.
    """
    train, dev, test = (dedupe(splits.get(name, [])) for name in ("train", "dev", "test"))
    if not train:
        pooled = dedupe(train + dev + test)
        return split_examples(pooled, seed, sizes)
    if not test:
        test, dev = dev, []
    if not test:
        carved = SplitSizes(dev_fraction=sizes.dev_fraction, test_fraction=sizes.test_fraction)
        train, dev, test = split_examples(train, seed, carved)
    elif not dev:
        carved = SplitSizes(dev_fraction=sizes.dev_fraction, test_fraction=0.0)
        train, dev, _ = split_examples(train, seed, carved)
    held_out = {example.prompt for example in dev + test}
    train = [example for example in train if example.prompt not in held_out]
    return (_shuffled_cap(train, seed, sizes.n_train), _shuffled_cap(dev, seed + 1, sizes.n_dev),
            _shuffled_cap(test, seed + 2, sizes.n_test))


def _cap(examples: list[Example], limit: int | None) -> list[Example]:
    return examples if limit is None else examples[:limit]


def _shuffled_cap(examples: list[Example], seed: int, limit: int | None) -> list[Example]:
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    return _cap(shuffled, limit)


def make_task(
    name: str,
    kind: TaskKind,
    metric: Metric,
    examples: Sequence[Example] | dict[str, list[Example]],
    seed: int,
    sizes: SplitSizes,
    description: str = "",
    source: str = "",
    meta: dict | None = None,
) -> Task:
    """Split (a pool, or official splits given as a dict) and wrap the result as a Task."""
    if isinstance(examples, dict):
        n_total = sum(len(split) for split in examples.values())
        train, dev, test = split_official(examples, seed, sizes)
    else:
        n_total = len(examples)
        examples = dedupe(examples)
        train, dev, test = split_examples(examples, seed, sizes)
    if not (train or dev or test):
        raise DataError(f"task {name!r} has no usable examples ({source})",
                        "check the source path and that its records carry the expected fields")
    info = {"seed": seed, "n_records": n_total, "sizes": [len(train), len(dev), len(test)],
            **(meta or {})}
    return Task(name=name, kind=kind, metric=metric, train=train, dev=dev, test=test,
                description=description, source=source, meta=info)


def label_set(examples: Sequence[Example]) -> list[str]:
    """The distinct targets in first-seen order (for task metadata)."""
    return list(dict.fromkeys(example.target for example in examples))


def reject_unknown(source: str, options: dict, accepted: Sequence[str]) -> None:
    """Raise a ConfigError naming the options ``source`` did not consume."""
    if options:
        from recall_merge.errors import ConfigError

        raise ConfigError(f"unknown option(s) for {source}: {sorted(options)}",
                          f"{source} accepts: {', '.join(accepted)}")


SPLIT_OPTIONS = ("n_train", "n_dev", "n_test", "dev_fraction", "test_fraction")


def read_json_mapping(path: Path, fix: str) -> dict:
    """A data file of an installed package that must hold a JSON object, or a DataError with
    ``fix`` (how to reinstall that package)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path.name}: {str(error)[:120]}", fix) from None
    if not isinstance(data, dict):
        raise DataError(f"{path.name} is not a JSON object", fix)
    return data
