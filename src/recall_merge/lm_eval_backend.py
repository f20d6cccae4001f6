"""lm-evaluation-harness (``lm-eval``, optional: ``pip install 'recall-merge[eval]'``) as a scorer.

Our tasks become local lm-eval tasks: per task one JSONL of the scored items and one YAML over it
in a folder of the cache, which lm-eval reads with its ``json`` dataset builder, so nothing is
downloaded. The prompt format is our scorer's (:mod:`recall_merge.continual.scoring`): each
document holds the prompt as ``render_prompt`` writes it (the chat template's user turn and
assistant header, or the plain prompt + ``"\\n"``) and each choice as ``render_answer`` writes it
(the reply and its end of turn, or + EOS), joined with an empty target delimiter. lm-eval's ``hf``
backend then does the rest with its own tokenisation, batching and forward passes:

* classification and multiple choice: ``multiple_choice``, the arg-max of the summed
  log-likelihoods of the choices (``acc``; any of an item's gold choices counts);
* generation: ``generate_until``, greedy, stopping at the tokenizer's end-of-sequence token,
  scored by our exact match, token F1 and ROUGE-L (and chrF or sentence BLEU where the task's
  metric asks for them): the YAML names :func:`process_results` of this module.

lm-eval moves the context's trailing ``"\\n"`` into the continuation before it tokenises; that
adds the same log p("\\n" | prompt) to every choice of an item, so its arg-max is ours.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recall_merge.data.task import DataError, Example, Task
from recall_merge.errors import ConfigError, RecallError, excerpt
from recall_merge.io import atomic
from recall_merge.io.cache import cache_dir, file_lock

LM_EVAL_PIN = "lm-eval==0.4.13"
INSTALL_FIX = "pip install 'recall-merge[eval]' (lm-eval with its hf backend, " + LM_EVAL_PIN + ")"
TASK_PREFIX = "recall_"  # lm-eval names of our tasks: recall_<spec or name>
FOLDER_FORMAT = 1  # bump when the written YAML or JSONL changes meaning


def require_lm_eval():
    """The ``lm_eval`` module, or a RecallError naming the install command."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (the hf backend's extra)
    except ImportError as error:
        raise RecallError(f"lm-eval (lm-evaluation-harness) is not installed ({error})",
                          INSTALL_FIX) from None
    return lm_eval


# --- our tasks as lm-eval tasks ------------------------------------------------------------

def lm_eval_task_name(task: Task, spec: str | None = None) -> str:
    """A name lm-eval accepts for ``task`` (from its spec, else its name): ``recall_`` and
    letters, digits and '_' (``rt:sentiment`` → ``recall_rt_sentiment``)."""
    body = "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in (spec or task.name).lower())
    return TASK_PREFIX + "_".join(part for part in body.split("_") if part)


def _generation_metrics(task: Task) -> list[str]:
    from recall_merge.continual.scoring import GENERATION_METRICS, item_metric

    metrics = list(GENERATION_METRICS)
    extra = item_metric(task)
    return metrics + ([extra] if extra not in metrics else [])


def task_documents(task: Task, examples: Sequence[Example], tokenizer) -> list[dict[str, Any]]:
    """One lm-eval document per example: the raw prompt and answers (for readers) and the texts
    our scorer renders for this tokenizer (what lm-eval scores)."""
    from recall_merge.continual.scoring import gold_answers, render_answer, render_prompt

    documents = []
    for index, example in enumerate(examples):
        document: dict[str, Any] = {"item": index, "prompt": example.prompt,
                                    "context": render_prompt(tokenizer, example.prompt)}
        if task.kind in ("classification", "multiple_choice"):
            if not example.choices:
                raise ConfigError(f"item {index} of task {excerpt(task.name, 60)} has no choices",
                                  "give classification and multiple-choice items their choices")
            golds = gold_answers(example)
            document["labels"] = list(example.choices)
            document["choices"] = [render_answer(tokenizer, example.prompt, choice)
                                   for choice in example.choices]
            document["gold"] = [k for k, choice in enumerate(example.choices) if choice in golds]
        else:
            document["references"] = list(gold_answers(example))
            document["metrics"] = _generation_metrics(task)
        documents.append(document)
    return documents


def task_yaml(lm_name: str, task: Task, data_file: Path, max_new_tokens: int,
              eos_token_id: int | None) -> str:
    """The lm-eval task config over ``data_file``."""
    import yaml

    config: dict[str, Any] = {
        "task": lm_name, "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test", "doc_to_text": "context", "target_delimiter": "", "num_fewshot": 0,
    }
    if task.kind in ("classification", "multiple_choice"):
        config.update({"output_type": "multiple_choice", "doc_to_choice": "choices",
                       "doc_to_target": "gold",
                       "metric_list": [{"metric": "acc", "aggregation": "mean",
                                        "higher_is_better": True}]})
    else:
        generation: dict[str, Any] = {"until": [], "do_sample": False, "max_gen_toks": max_new_tokens}
        if eos_token_id is not None:
            generation["eos_token_id"] = eos_token_id  # as our scorer stops: at the tokenizer's EOS
        config.update({"output_type": "generate_until", "doc_to_target": "references",
                       "generation_kwargs": generation,
                       "metric_list": [{"metric": name, "aggregation": "mean",
                                        "higher_is_better": True}
                                       for name in _generation_metrics(task)]})
    config["metadata"] = {"version": FOLDER_FORMAT, "recall_task": task.name, "source": task.source}
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    if task.kind == "generation":
        # `!function` is lm-eval's YAML tag for a Python function; this one is importable
        text += f"process_results: !function {__name__}.process_results\n"
    return text


def process_results(document: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """lm-eval's process_results for our generation tasks: :func:`generation_item_scores`."""
    return generation_item_scores(document, results[0])


def generation_item_scores(document: dict[str, Any], prediction: str) -> dict[str, float]:
    """Our per-item scores of one generated answer (lm-eval's process_results)."""
    from recall_merge.continual import scoring

    references = document["references"]
    prediction = prediction.strip()  # as our scorer strips its decoded completions
    scores = {}
    for name in document["metrics"]:
        if name == "chrf":
            scores[name] = scoring.sentence_chrf(prediction, references)
        elif name == "sentence_bleu":
            scores[name] = scoring.sentence_bleu(prediction, references)
        else:  # the best over the item's references, as in SQuAD
            metric = scoring.GENERATION_METRICS[name]
            scores[name] = max(metric(prediction, reference) for reference in references)
    return scores


@dataclass(frozen=True)
class LocalTask:
    """One of our tasks written as an lm-eval task."""

    lm_name: str
    task: Task
    examples: list[Example]


def write_task_folder(tasks: Sequence[LocalTask], tokenizer, max_new_tokens: int,
                      root: Path | None = None) -> Path:
    """A folder with ``NAME.jsonl`` and ``NAME.yaml`` per task, named by the hash of what is in
    it (the same items, tokenizer and settings reuse it). Written whole, under a lock, and moved
    into place: a folder that exists is complete."""
    documents = {item.lm_name: task_documents(item.task, item.examples, tokenizer) for item in tasks}
    eos = tokenizer.eos_token_id
    digest = hashlib.sha256(json.dumps(
        [FOLDER_FORMAT, documents, max_new_tokens, eos, [item.task.kind for item in tasks],
         [_generation_metrics(item.task) if item.task.kind == "generation" else [] for item in tasks]],
        sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    root = root or cache_dir() / "lm_eval_tasks"
    folder = root / digest
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".lock"):
        if folder.is_dir():
            return folder
        temporary = atomic.temporary_folder_for(folder)
        for item in tasks:
            data_file = folder / f"{item.lm_name}.jsonl"
            lines = "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in documents[item.lm_name])
            atomic.write_text(temporary / data_file.name, lines)
            atomic.write_text(temporary / f"{item.lm_name}.yaml",
                              task_yaml(item.lm_name, item.task, data_file, max_new_tokens, eos))
        atomic.replace_folder(temporary, folder)
    return folder


# --- running lm-eval --------------------------------------------------------------------------

def make_lm(model, tokenizer, batch_size: int, max_length: int):
    """lm-eval's ``hf`` model around an already loaded model; BOS as our scorer adds it (only for
    a plain-prompt tokenizer that starts texts with it; a chat template writes its own start)."""
    require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    from recall_merge.continual.scoring import leading_bos

    _quiet_lm_eval()
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                add_bos_token=bool(leading_bos(tokenizer)))


def _quiet_lm_eval() -> None:
    # lm-eval warns about every default it fills in and about being handed a loaded model (which
    # is how we use it); its errors still show
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


@dataclass
class LoadedTasks:
    """lm-eval task names whose data loaded, with the task manager that knows them."""

    manager: Any
    names: list[str]


def load_tasks(task_names: list[str], include_path: Path | None,
               with_defaults: bool = False) -> LoadedTasks:
    """lm-eval's tasks of ``task_names`` (ours from ``include_path``; lm-eval's own ones with
    ``with_defaults``), their data loaded now: a name lm-eval lacks, or data it cannot fetch
    (offline), is refused before any model is read."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    _quiet_lm_eval()
    manager = TaskManager(include_path=str(include_path) if include_path else None,
                          include_defaults=with_defaults)
    unknown = [name for name in task_names if name not in manager.all_tasks]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], manager.all_tasks, n=3)
        raise ConfigError(f"lm-eval has no task {excerpt(unknown[0], 80)}",
                          (f"did you mean {', '.join(hint)}? " if hint else "")
                          + "give one of our task specs (docs/data.md, e.g. rt:sentiment) or an "
                          "lm-eval task name (lm-eval ls tasks)")
    try:
        loaded = manager.load(list(task_names))  # builds the tasks: loads their data
    except Exception as error:  # datasets raises many types for "not here and not reachable"
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
        raise RecallError(
            f"lm-eval could not load the data of {', '.join(task_names)}: "
            f"{type(error).__name__}: {excerpt(str(error), 300)}",
            ("lm-eval's own tasks download their data from the Hugging Face hub, and "
             "HF_HUB_OFFLINE=1 is set (recall sets it unless told otherwise): run once with "
             "HF_HUB_OFFLINE=0 on a machine that reaches huggingface.co (datasets keeps a "
             "copy), or use our offline task specs (docs/data.md)") if offline else
            "check the network and the task's dataset, or use our offline task specs "
            "(docs/data.md)") from None
    del loaded  # simple_evaluate builds them again by name (groups stay groups), from cache
    return LoadedTasks(manager, list(task_names))


def evaluate(lm, tasks: LoadedTasks, seed: int, limit: int | None = None) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` on loaded tasks, zero-shot, with per-sample logs."""
    lm_eval = require_lm_eval()
    results = lm_eval.simple_evaluate(
        model=lm, tasks=tasks.names, task_manager=tasks.manager,
        log_samples=True, limit=limit, bootstrap_iters=0, random_seed=seed,
        numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    if results is None:  # simple_evaluate answers None on ranks other than 0
        raise RecallError("lm-eval returned no results", "run it as one process")
    return results


def samples_in_order(results: dict[str, Any], lm_name: str) -> list[dict[str, Any]]:
    """lm-eval's per-sample logs of one task in item order (its doc ids are the JSONL lines)."""
    return sorted(results["samples"][lm_name], key=lambda sample: sample["doc_id"])


def task_scores(task: Task, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """lm-eval's per-sample results of ``task`` as our score dict: the task's metric in
    ``score``, the per-item scores in ``items`` (in item order), ``predictions``."""
    from recall_merge.continual import scoring

    per_item = scoring.item_metric(task)
    if task.kind in ("classification", "multiple_choice"):
        items: list[Any] = [int(sample["acc"]) for sample in samples]
        predictions = []
        for sample in samples:
            likelihoods = [float(response[0]) for response in sample["filtered_resps"]]
            labels = sample["doc"]["labels"]
            predictions.append(labels[max(range(len(labels)), key=likelihoods.__getitem__)])
        scores: dict[str, Any] = {"accuracy": sum(items) / len(items)}
    else:
        predictions = [_generated(sample).strip() for sample in samples]
        references = [sample["doc"]["references"] for sample in samples]
        scores = scoring.generation_scores(predictions, references, with_bleu=task.metric == "bleu",
                                           with_chrf=task.metric == "chrf")
        items = [sample[per_item] for sample in samples]
        if per_item == "exact_match":
            items = [int(value) for value in items]
    metric = task.metric if task.metric in scores else next(iter(scores))
    scores["score"] = scores[metric]
    scores["items"] = items
    scores["items_metric"] = per_item
    scores["predictions"] = predictions
    return scores


def _generated(sample: dict[str, Any]) -> str:
    response = sample["filtered_resps"]
    return response[0] if isinstance(response, list) else response


def score_task(model, tokenizer, task: Task, examples: Sequence[Example], batch_size: int,
               max_length: int, max_new_tokens: int, seed: int = 0) -> dict[str, Any]:
    """:func:`recall_merge.continual.scoring.score_task` done by lm-eval: the same keys (and
    ``backend``), the items in the order of ``examples``."""
    if not examples:  # a score of 0 items would read as 0.0
        raise DataError(f"task {excerpt(task.name, 80)} has no items to score",
                        "give the task test (or dev) records, or leave it out")
    lm_name = lm_eval_task_name(task)
    folder = write_task_folder([LocalTask(lm_name, task, list(examples))], tokenizer, max_new_tokens)
    model.eval()
    tasks = load_tasks([lm_name], folder)
    results = evaluate(make_lm(model, tokenizer, batch_size, max_length), tasks, seed)
    scores = task_scores(task, samples_in_order(results, lm_name))
    scores.pop("predictions")  # the builtin scorer keeps none either; items.json stays small
    scores["backend"] = "lm_eval"
    return scores


# --- recall eval ------------------------------------------------------------------------------

def is_our_task(spec: str) -> bool:
    """A spec of our task registry (``rt:sentiment``, ``bbc``, ``synthetic:alpha``); every other
    name is passed to lm-eval as one of its own tasks."""
    from recall_merge.continual.synthetic import is_synthetic_spec
    from recall_merge.data.registry import SOURCES

    return is_synthetic_spec(spec) or spec.strip().partition(":")[0].lower() in SOURCES


def load_our_task(spec: str, seed: int, limit: int | None) -> Task:
    """The task with its test split (the first ``limit`` items: the caps take prefixes)."""
    from recall_merge.continual.synthetic import is_synthetic_spec, load_synthetic_task
    from recall_merge.data.registry import load_task

    if is_synthetic_spec(spec):
        task = load_synthetic_task(spec, seed, max_train=1, max_dev=1, max_test=limit or 32)
    else:
        task = load_task(spec, seed=seed, **({"n_test": limit} if limit else {}))
    task.test = list(task.test)[:limit] if limit else list(task.test)
    if not task.test:
        raise DataError(f"task {excerpt(spec, 80)} has no test items to score",
                        "give it test records, or leave it out")
    return task


def _model_folder(ref: str) -> Path:
    from recall_merge.errors import CheckpointError
    from recall_merge.io.packaged import resolve_model_ref

    folder = resolve_model_ref(ref)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"model {excerpt(ref, 120)} is not a Hugging Face model folder (no "
                              "config.json there)",
                              "give a folder with config.json, tokenizer and weights, or 'smollm2'")
    return folder


def _check_output(path: Path | None) -> None:
    from recall_merge.errors import OutputError

    if path is None:
        return
    if path.is_dir():
        raise OutputError(f"--output {excerpt(str(path), 120)} is a folder", "give a file path")
    if not path.parent.is_dir():
        raise OutputError(f"the folder of --output {excerpt(str(path), 120)} does not exist",
                          f"create {excerpt(str(path.parent), 120)} first")


def run_eval(model_ref: str, specs: Sequence[str], limit: int | None = None,
             output: Path | None = None, batch_size: int = 16, device: str = "cpu", seed: int = 0,
             max_length: int = 256, max_new_tokens: int = 32) -> dict[str, Any]:
    """``recall eval``: score a model with lm-eval on our tasks (written as local lm-eval tasks,
    offline) and on lm-eval's own tasks (passed through); writes ``output`` (JSON) when given.
    Everything a user can get wrong is refused before the model is loaded."""
    from recall_merge.config import check_device
    from recall_merge.continual.scoring import leading_bos
    from recall_merge.provenance import versions

    require_lm_eval()
    for name, value, least in (("--limit", limit, 1), ("--batch-size", batch_size, 1),
                               ("--max-length", max_length, 8), ("--max-new-tokens", max_new_tokens, 1)):
        if value is not None and value < least:
            raise ConfigError(f"{name} {value} is below {least}", f"give {name} {least} or more")
    if max_new_tokens >= max_length:
        raise ConfigError(f"--max-new-tokens {max_new_tokens} leaves no room for the prompt in "
                          f"--max-length {max_length}", "raise --max-length or lower --max-new-tokens")
    if len(set(specs)) != len(specs):
        raise ConfigError("a task is listed twice in --tasks", "list each task once")
    device = check_device(device)
    _check_output(output)
    folder = _model_folder(model_ref)
    ours = {spec: load_our_task(spec, seed, limit) for spec in specs if is_our_task(spec)}
    theirs = [spec for spec in specs if not is_our_task(spec)]

    from transformers import AutoTokenizer

    from recall_merge.continual.training import load_causal_lm

    tokenizer = AutoTokenizer.from_pretrained(folder)
    local = [LocalTask(lm_eval_task_name(task, spec), task, task.test) for spec, task in ours.items()]
    names = [item.lm_name for item in local]
    if len(set(names)) != len(names):
        raise ConfigError("two task specs name the same task", "list each task once")
    task_folder = write_task_folder(local, tokenizer, max_new_tokens) if local else None
    loaded = load_tasks(names + theirs, task_folder, with_defaults=bool(theirs))
    model = load_causal_lm(folder, device=device).eval()
    results = evaluate(make_lm(model, tokenizer, batch_size, max_length), loaded, seed, limit)
    tasks: dict[str, Any] = {}
    for spec, item in zip(ours, local, strict=True):
        scores = task_scores(item.task, samples_in_order(results, item.lm_name))
        tasks[spec] = {"source": "recall-merge", "lm_eval_task": item.lm_name,
                       "name": item.task.name, "kind": item.task.kind, "metric": item.task.metric,
                       "n": len(item.examples), **scores,
                       "lm_eval_metrics": _metrics(results["results"][item.lm_name])}
    for name in theirs:
        metrics = _metrics(results["results"].get(name, {}))
        tasks[name] = {"source": "lm-eval", "lm_eval_task": name,
                       "n": results.get("n-samples", {}).get(name, {}).get("effective"),
                       "lm_eval_metrics": metrics}
    report = {
        "model": model_ref, "model_folder": str(folder), "seed": seed,
        "settings": {"limit": limit, "batch_size": batch_size, "device": device,
                     "max_length": max_length, "max_new_tokens": max_new_tokens, "split": "test",
                     "num_fewshot": 0,
                     "prompt_format": ("chat template" if getattr(tokenizer, "chat_template", None)
                                       else "plain prompt + newline"),
                     "add_bos_token": bool(leading_bos(tokenizer)),
                     "lm_eval_task_folder": str(task_folder) if task_folder else None},
        "versions": {**versions(), "lm_eval": _version_of("lm-eval"),
                     "datasets": _version_of("datasets")},
        "tasks": tasks,
    }
    if output is not None:
        atomic.write_json(output, report, sort_keys=False)
    return report


def _metrics(entry: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's aggregate metrics of one task, without its 'N/A' stderr entries."""
    return {key: value for key, value in entry.items()
            if key not in ("name", "alias", "sample_len") and value != "N/A"}


def _version_of(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the per-item lists (what ``recall eval`` prints)."""
    return {**report, "tasks": {spec: {key: value for key, value in entry.items()
                                       if key not in ("items", "predictions")}
                                for spec, entry in report["tasks"].items()}}
