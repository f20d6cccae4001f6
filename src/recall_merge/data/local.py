"""Tasks from local JSONL / JSON / CSV / TSV / Parquet files with named fields.

A path may be one file (split with the seed), a folder holding files whose names start with a
split name (``train*``, ``validation*``/``dev*``, ``test*``, as Hugging Face exports them), or a
dict ``{"train": path, "test": path, ...}``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from recall_merge.data.common import (
    SPLIT_OPTIONS,
    SplitSizes,
    frame_prompt,
    make_task,
    reject_unknown,
)
from recall_merge.data.task import DataError, Example, Metric, Task, TaskKind
from recall_merge.errors import ConfigError, excerpt

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
SPLIT_ALIASES = {"train": "train", "validation": "dev", "valid": "dev", "dev": "dev",
                 "test": "test"}
DEFAULT_INSTRUCTIONS = {
    "classification": "Choose the label that fits the input.",
    "multiple_choice": "Choose the correct answer.",
    "generation": "Respond to the input.",
}
LOCAL_OPTIONS = ("path", "input_field", "target_field", "choices_field", "labels", "kind",
                 "metric", "instruction", "answer_cue", "name")


def read_records(path: str | Path) -> list[dict]:
    """All records of one file, as dicts, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist", "check the path (relative paths "
                        "are taken from the current directory)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".json":
            return _read_json(path)
        if suffix in (".csv", ".tsv"):
            with path.open(newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except (ValueError, UnicodeDecodeError, OSError) as error:
        raise DataError(f"cannot read {path}: {error}", "check that the file is valid "
                        f"{suffix[1:]} in UTF-8") from error
    raise DataError(f"unsupported data file type {path.name!r}",
                    f"use one of {', '.join(SUFFIXES)}")


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"line {number}: {error}") from error
    return records


def _read_json(path: Path) -> list[dict]:
    """A JSON list of records, or an object holding one under ``data``/``rows``."""
    content = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(content, dict):
        content = content.get("data", content.get("rows"))
    if not isinstance(content, list):
        raise ValueError("expected a list of records (or {'data': [...]})")
    return content


def read_splits(path: str | Path | dict) -> dict[str, list[dict]]:
    """Records per split: ``{"all": [...]}`` for one file, else ``train``/``dev``/``test``."""
    if isinstance(path, dict):
        return {_split_name(str(name)): read_records(file) for name, file in path.items()}
    path = Path(path)
    if path.is_file():
        return {"all": read_records(path)}
    if not path.is_dir():
        raise DataError(f"data path {path} does not exist", "give a file or a folder of split "
                        "files such as train.jsonl and test.jsonl")
    splits: dict[str, list[dict]] = {}
    for file in sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES):
        name = next((split for prefix, split in SPLIT_ALIASES.items()
                     if file.name.lower().startswith(prefix)), None)
        if name is not None:
            splits.setdefault(name, []).extend(read_records(file))
    if not splits:
        raise DataError(f"no split files found in {path}",
                        "name files train.*, validation.* (or dev.*) and test.*")
    return splits


def _split_name(name: str) -> str:
    try:
        return SPLIT_ALIASES[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown split name {name!r}",
                          "use train, validation (or dev) and test") from None


def to_examples(splits: dict[str, list], convert) -> dict[str, list[Example]] | list[Example]:
    """Convert each split's records (records converting to None are dropped); one pooled list
    when the data came as a single file."""
    converted = {name: [ex for ex in map(convert, records) if ex is not None]
                 for name, records in splits.items()}
    return converted["all"] if set(converted) == {"all"} else converted


def parse_list(value) -> list[str]:
    """A list field that may arrive as a list, a JSON string (CSV), or ``a|b|c``."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = json.loads(text)
        else:
            value = text.split("|")
    return [str(item).strip() for item in value]


def _field(record: dict, name: str, where: str):
    if not isinstance(record, dict):
        raise DataError(f"a record in {excerpt(where, 120)} is {excerpt(record, 60)}, not an object "
                        "with named fields", "write one object per record, e.g. "
                        '{"input": "...", "target": "..."}')
    if name not in record:
        raise DataError(f"record in {excerpt(where, 120)} has no field {excerpt(name, 120)} (fields: "
                        f"{excerpt(sorted(map(str, record)))})",
                        "set input_field / target_field to fields the file has")
    return record[name]


def _targets(value, field: str, where: str) -> list:
    """A record's target field as a list of answers: one text (or a number, which may index the
    labels), or a non-empty list of them, each a correct reference."""
    scalar = (str, int, float)
    if isinstance(value, scalar):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, scalar) for item in value):
        return list(value)
    raise DataError(f"the target field {excerpt(field, 60)} of a record in {excerpt(where, 120)} holds "
                    f"{excerpt(value, 60)} ({type(value).__name__})",
                    "give every record a target: a string, or a non-empty list of strings "
                    "(each a correct answer)")


def _label_text(value, labels: Sequence[str] | None) -> str:
    """A target as text: an integer (or digit string) indexes ``labels`` when they are given."""
    text = str(value).strip()
    if labels and text not in labels and text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < len(labels):
            return labels[index]
    return text


def _infer_kind(labels, choices_field) -> TaskKind:
    if choices_field:
        return "multiple_choice"
    return "classification" if labels else "generation"


def load_local(
    path: str | Path | dict,
    input_field: str | Sequence[str] = "input",
    target_field: str = "target",
    choices_field: str | None = None,
    labels: Sequence[str] | None = None,
    kind: TaskKind | None = None,
    metric: Metric | None = None,
    instruction: str | None = None,
    answer_cue: str = "Answer:",
    name: str | None = None,
    seed: int = 0,
    **options,
) -> Task:
    """A Task from local files. ``input_field`` may list several fields, shown as
    ``Field: value`` lines. Classification needs ``labels`` (fixed set; integer targets index
    it), multiple choice a ``choices_field`` per record; otherwise the task is generation.
    A record's target is one answer or a non-empty list of answers (JSON, JSONL, Parquet), each
    of which counts as correct; ``name`` names the task (default: the file or folder name)."""
    sizes = SplitSizes.from_options(options)
    reject_unknown("local", options, (*LOCAL_OPTIONS, *SPLIT_OPTIONS))
    kind = kind or _infer_kind(labels, choices_field)
    _check_kind(kind, labels, choices_field)
    metric = metric or ("accuracy" if kind != "generation" else "exact_match")
    instruction = DEFAULT_INSTRUCTIONS[kind] if instruction is None else instruction
    labels = [str(label) for label in labels] if labels else None
    where = str(path)
    fields = [input_field] if isinstance(input_field, str) else list(input_field)

    def convert(record: dict) -> Example | None:
        if len(fields) == 1:
            body = str(_field(record, fields[0], where))
        else:
            body = "\n".join(f"{f.replace('_', ' ').capitalize()}: {_field(record, f, where)}"
                             for f in fields)
        targets = [_label_text(value, labels)
                   for value in _targets(_field(record, target_field, where), target_field, where)]
        choices = parse_list(_field(record, choices_field, where)) if choices_field else labels
        outside = [target for target in targets if choices is not None and target not in choices]
        if outside:
            if labels and not choices_field:
                raise DataError(f"target {excerpt(outside[0], 120)} in {excerpt(where, 120)} is not one of "
                                f"labels {excerpt(labels, 120)}", "fix the labels option or the data")
            return None
        prompt = frame_prompt(instruction, body, choices, answer_cue,
                              choices_on_lines=kind == "multiple_choice")
        # several targets: every one is a correct answer (the first is the one trained on)
        return Example(prompt, targets[0], tuple(choices) if choices else None,
                       tuple(targets) if len(targets) > 1 else ())

    examples = to_examples(read_splits(path), convert)
    task_name = name or (Path(path).stem if not isinstance(path, dict) else "local")
    return make_task(task_name, kind, metric, examples, seed, sizes, description=instruction,
                     source=f"local:{where}", meta={"labels": labels} if labels else {})


def _check_kind(kind, labels, choices_field) -> None:
    if kind not in DEFAULT_INSTRUCTIONS:
        raise ConfigError(f"unknown task kind {kind!r}",
                          f"use one of {', '.join(DEFAULT_INSTRUCTIONS)}")
    if kind == "classification" and not labels and not choices_field:
        raise ConfigError("a local classification task needs its label set",
                          "add labels=[...] (or choices_field for per-record choices)")
    if kind == "multiple_choice" and not choices_field and not labels:
        raise ConfigError("a local multiple-choice task needs choices",
                          "add choices_field naming the field that lists each record's options")
