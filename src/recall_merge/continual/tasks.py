"""The tasks of a continual run: loaded with their splits capped, refused when one cannot be
trained or scored, and recorded where their models and scores are kept.

A task's record (``tasks/NAME.json`` in the run folder and in the expert cache) holds its spec
and a hash of the examples of each split as used. The models and scores kept under a task's name
are valid only for that task: a later run whose task of the same name has another spec or other
data (a local file edited in place) is refused, never served the stale experts. Folders made
before these records existed are taken as they are on first use.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from recall_merge.continual.config import ContinualConfig, check_folder_names
from recall_merge.continual.store import slug
from recall_merge.data.task import DataError, Example, Task
from recall_merge.errors import ConfigError, excerpt
from recall_merge.io.atomic import write_json


def load_any_task(spec: str | dict[str, Any], config: ContinualConfig) -> Task:
    """A synthetic task, or one from the task registry, with its splits capped."""
    from recall_merge.continual.synthetic import is_synthetic_spec, load_synthetic_task

    if isinstance(spec, str) and is_synthetic_spec(spec):
        task = load_synthetic_task(spec, config.seed, config.max_train, config.max_dev, config.max_test)
    else:
        from recall_merge.data.registry import load_task

        caps = {"n_train": config.max_train, "n_dev": config.max_dev, "n_test": config.max_test}
        task = load_task(spec, seed=config.seed, **{**caps, **config.task_options})
    task.train = list(task.train)[: config.max_train]
    task.dev = list(task.dev)[: config.max_dev]
    task.test = list(task.test)[: config.max_test]
    return task


def eval_examples(task: Task, config: ContinualConfig) -> list[Example]:
    """The items a task is scored on (its test split, or dev with ``evaluation.split: dev``)."""
    return list(getattr(task, config.evaluation.split))


def load_tasks(config: ContinualConfig, needs_dev: bool = False) -> list[Task]:
    """The tasks in learning order, refused when one cannot be trained or scored (``needs_dev``:
    a strategy scores new experts on the dev split)."""
    tasks = [load_any_task(spec, config) for spec in config.tasks]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"task names repeat: {names}", "list each task once")
    check_folder_names("task", names)
    split = config.evaluation.split
    for task in tasks:
        name = excerpt(task.name, 80)
        if not eval_examples(task, config):
            raise DataError(
                f"task {name} has 0 {split} items, so it cannot be scored (a score of 0 items "
                "would read as 0.0)",
                f"give it {split} records (a {split}.* file, or more records in its one file: a "
                "share of them is held out)" + (", or set evaluation.split: dev" if split == "test"
                                                else ""))
        if not task.train:
            raise DataError(f"task {name} has 0 train items, and every strategy fine-tunes on "
                            "each task", "give it train records (a train.* file, or more records "
                            "in its one file)")
        if needs_dev and not task.dev:
            raise DataError(f"task {name} has 0 dev items, and guard_newest scores each new "
                            "expert on its task's dev split",
                            "give the task dev records, or drop guard_newest")
    return tasks


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def task_record(spec: str | dict[str, Any], task: Task) -> dict[str, Any]:
    """What the models and scores of a task depend on: its spec and the examples of its splits
    as used (after the caps). ``key`` changes when either does."""
    splits = {split: _digest([[ex.prompt, ex.target, ex.choices, list(ex.references)]
                              for ex in getattr(task, split)])
              for split in ("train", "dev", "test")}
    data = {"kind": task.kind, "metric": task.metric, "splits": splits}
    record = {"name": task.name, "spec": spec, "spec_sha256": _digest(spec),
              "data_sha256": _digest(data), "sizes": {s: len(getattr(task, s)) for s in splits}}
    record["key"] = _digest([record["name"], record["spec_sha256"], record["data_sha256"]])[:16]
    return record


def check_task_records(folder: Path, records: list[dict[str, Any]], where: str, fix: str) -> None:
    """Record each task in ``folder/tasks/`` the first time; afterwards refuse a task of the same
    folder name whose spec or data differ (its experts and scores there are of the old task)."""
    for record in records:
        path = folder / "tasks" / f"{slug(record['name'])}.json"
        if not path.exists():
            write_json(path, record)
            continue
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") == record["key"]:
            continue
        differs = [what for what, key in (("another task name", "name"),
                                          ("a different spec", "spec_sha256"),
                                          ("different data", "data_sha256"))
                   if stored.get(key) != record[key]]
        raise ConfigError(f"{where} holds models and scores of task "
                          f"{excerpt(str(stored.get('name')), 60)} made with "
                          f"{' and '.join(differs) or 'another task'} than task "
                          f"{excerpt(record['name'], 60)} of this config (it changed under the "
                          "same name)", fix)


def check_task_data(config: ContinualConfig, records: list[dict[str, Any]]) -> None:
    """The run folder and the expert cache must hold models and scores of these very tasks."""
    check_task_records(config.run_dir, records, f"run folder {excerpt(str(config.run_dir))}",
                       "use a new run_dir, or delete the old folder to start over")
    if config.expert_cache is not None:
        check_task_records(config.expert_cache, records,
                           f"expert_cache {excerpt(str(config.expert_cache))}",
                           "give the changed task a new name (`name:` in its spec), or use "
                           "another expert_cache folder")
