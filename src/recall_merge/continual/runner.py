"""The continual-learning loop: strategies × steps, every finished stage durable on disk.

Run folder layout (``run_dir``)::

    config.json                    the validated config; a rerun with another config is refused
    base_model/                    only for model: tiny-random (SYNTHETIC)
    samples/stepI.jsonl            newest task's train prompts, given to the merges at step I
    experts/TRAINKEY/stepI/        expert of task I fine-tuned from the base (shared by strategies)
    strategies/NAME/stepI/         the model of strategy NAME after step I (adapter or HF folder)
    strategies/NAME/expertI/       merges fine-tuned from the previous merge: that expert
    evals/KEY.json                 scores of one model on every task (or the cells it needs)
    results.json, results.csv

With ``expert_cache`` set, the experts fine-tuned from the base and the scores of them and of the
base live in that folder instead, by task (``TRAINKEY/TASK/`` and ``evals/``), so runs of other task
orders or sequences reuse them; ``expert_cache/manifest.json`` holds what they depend on (model,
seed, split caps, evaluation) and a run with other values is refused.

A stage is built in ``PATH.partial`` and renamed to ``PATH`` when complete; a stage whose ``PATH``
exists is skipped, so re-running the same command after a crash or Ctrl-C continues where it
stopped. Every stage reads its inputs from disk and seeds itself from (seed, stage name), so a
resumed run ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import random
import shutil
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recall_merge.continual import metrics
from recall_merge.continual.config import (
    TINY_RANDOM,
    ContinualConfig,
    Strategy,
    check_folder_names,
    expand_strategies,
    load_continual_config,
)
from recall_merge.data.task import DataError, Example, Task
from recall_merge.errors import ConfigError, RecallError
from recall_merge.provenance import versions

ABORT_ENV = "RECALL_CONTINUAL_ABORT_AFTER"  # test hook: hard-exit after this many new stages
ABORT_EXIT_CODE = 75
# what may differ between runs of one folder: where it lives, and what is kept once scored
_UNCOMPARED = ("run_dir", "expert_cache", "keep_weights")

# Written where a model's weights were removed after it was scored (``keep_weights``).
WEIGHTS_REMOVED = "WEIGHTS_REMOVED.json"


@dataclass(frozen=True)
class ModelState:
    """A model on disk: a full HF folder, or a base folder plus a PEFT adapter folder."""

    folder: Path
    adapter: Path | None = None

    @property
    def merge_ref(self) -> str:
        """What the merge engine is given for this model (adapters are read against the base)."""
        return str(self.adapter or self.folder)


def stable_seed(seed: int, key: str) -> int:
    return zlib.crc32(f"{seed}:{key}".encode()) & 0x7FFFFFFF


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _stamp_or_refuse(path: Path, current: dict[str, Any], problem: str, fix: str) -> None:
    """Write ``current`` to ``path`` the first time; afterwards refuse anything else, naming the
    keys that differ."""
    if not path.exists():
        _write_json(path, current)
        return
    stored = json.loads(path.read_text(encoding="utf-8"))
    if stored != current:
        changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
        raise ConfigError(f"{problem} (differs in: {', '.join(changed)})", fix)


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)


class ContinualRun:
    """One run folder. ``run()`` builds every missing stage and writes the results."""

    def __init__(self, config: ContinualConfig, quiet: bool = False) -> None:
        self.config = config
        self.quiet = quiet
        self.root = config.run_dir
        self.new_stages = 0
        self._abort_after = int(os.environ[ABORT_ENV]) if os.environ.get(ABORT_ENV) else None

    # --- bookkeeping -----------------------------------------------------------------------

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"[continual] {message}", file=sys.stderr, flush=True)

    def _stage_finished(self, name: str, started: float) -> None:
        self.new_stages += 1
        self.log(f"done: {name} ({time.perf_counter() - started:.1f} s)")
        if self._abort_after is not None and self.new_stages >= self._abort_after:
            print(f"[continual] {ABORT_ENV}={self._abort_after}: exiting after {name}",
                  file=sys.stderr, flush=True)
            os._exit(ABORT_EXIT_CODE)

    def folder_stage(self, relative: str | Path, build: Callable[[Path], None],
                     create: bool = True) -> Path:
        """``run_dir/relative`` (or an absolute path), built by ``build(partial_folder)`` unless it
        already exists."""
        final = self.root / relative
        if final.exists():
            return final
        started = time.perf_counter()
        partial = final.with_name(final.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)  # left by an interrupted run
        partial.parent.mkdir(parents=True, exist_ok=True)
        if create:
            partial.mkdir()
        try:
            build(partial)
        except BaseException:
            # a failed stage (a diverged training, a refused merge) leaves nothing behind
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            elif partial.exists():
                partial.unlink()
            raise
        os.replace(partial, final)
        self._stage_finished(relative, started)
        return final

    def json_stage(self, relative: str | Path, compute: Callable[[], Any]) -> Any:
        path = self.root / relative
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))
        started = time.perf_counter()
        data = compute()
        _write_json(path, data)
        self._stage_finished(relative, started)
        return data

    def _discard_partials(self) -> None:
        """Remove stages left half-written by an interrupted run (they are rebuilt)."""
        for partial in sorted(self.root.rglob("*.partial"), reverse=True):
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            elif partial.exists():
                partial.unlink()

    def _check_expert_cache(self) -> None:
        """The shared expert folder must hold experts and scores made under the same settings."""
        cache = self.config.expert_cache
        if cache is None:
            return
        current = {key: value for key, value in comparable_config(self.config).items()
                   if key in ("model", "seed", "max_train", "max_dev", "max_test", "task_options",
                              "evaluation", "device")}
        _stamp_or_refuse(cache / "manifest.json", current,
                         f"expert_cache {str(cache)!r} holds experts of other settings",
                         "use another expert_cache folder for these settings")

    def _check_config(self) -> None:
        """Refuse to mix two configs in one run folder (their stages would not match)."""
        _stamp_or_refuse(self.root / "config.json", comparable_config(self.config),
                         f"run folder {str(self.root)!r} holds a run of another config",
                         "use a new run_dir, or delete the old folder to start over")

    def prepare(self) -> None:
        """Check the folders, drop half-written stages, load the tasks, the base and its tokenizer
        (what every use of a run folder needs before its first stage)."""
        from transformers import AutoTokenizer

        self.tasks = self.load_tasks()
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_config()
        self._check_expert_cache()
        self._check_task_data()
        self._discard_partials()
        self.base = self.base_folder()
        self.tokenizer = AutoTokenizer.from_pretrained(self.base)

    # --- inputs ----------------------------------------------------------------------------

    def base_folder(self) -> Path:
        if self.config.model == TINY_RANDOM:
            from recall_merge.testing import make_tiny_llama

            return self.folder_stage("base_model",
                                     lambda tmp: make_tiny_llama(tmp, seed=self.config.seed))
        try:
            from recall_merge.io.packaged import resolve_model_ref
        except ImportError:
            return Path(self.config.model)
        return resolve_model_ref(self.config.model)

    def load_tasks(self) -> list[Task]:
        """The tasks in learning order, refused when one cannot be trained or scored."""
        tasks = [load_any_task(spec, self.config) for spec in self.config.tasks]
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"task names repeat: {names}", "list each task once")
        check_folder_names("task", names)
        split = self.config.evaluation.split
        for task in tasks:
            if not self.eval_examples(task):
                raise DataError(
                    f"task {task.name[:80]!r} has 0 {split} items, so it cannot be scored "
                    f"(a score of 0 items would read as 0.0)",
                    f"give it {split} records (a {split}.* file, or more records in its one file: "
                    "a share of them is held out)"
                    + (", or set evaluation.split: dev" if split == "test" else ""))
            if not task.train:
                raise DataError(f"task {task.name[:80]!r} has 0 train items, and every strategy "
                                "fine-tunes on each task", "give it train records (a train.* file, "
                                "or more records in its one file)")
        return tasks

    def _check_task_data(self) -> None:
        """The models and scores kept under a task's name must come from the same task: its spec
        and the examples of its splits, recorded the first time (folders made before these
        records existed are taken as they are)."""
        records = [task_record(spec, task) for spec, task in zip(self.config.tasks, self.tasks,
                                                                 strict=True)]
        check_task_records(self.root, records, f"run folder {_short(str(self.root))}",
                           "use a new run_dir, or delete the old folder to start over")
        if self.config.expert_cache is not None:
            check_task_records(self.config.expert_cache, records,
                               f"expert_cache {_short(str(self.config.expert_cache))}",
                               "give the changed task a new name (`name:` in its spec), or use "
                               "another expert_cache folder")

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Loading weights" bar per stage drowns the log
        if self.quiet:
            _silence_progress_bars()
        self.prepare()
        strategies = expand_strategies(self.config, merge_methods=_classic_and_recall_methods())
        if any(strategy.guard_newest for strategy in strategies):
            for task in self.tasks:
                if not task.dev:
                    raise DataError(f"task {task.name[:80]!r} has 0 dev items, and guard_newest "
                                    "scores each new expert on its task's dev split",
                                    "give the task dev records, or drop guard_newest")
        base_scores = self.evaluate(ModelState(self.base), self._base_eval_path())
        methods: dict[str, Any] = {}
        for strategy in strategies:
            self.log(f"strategy {strategy.name}")
            try:
                rows = self.run_strategy(strategy)
            except RecallError as exc:  # one broken merge method must not end the whole run
                self.log(f"strategy {strategy.name} failed: {exc}")
                methods[strategy.name] = {"error": str(exc), **describe(strategy)}
                continue
            if self.config.keep_weights == "final":
                self.remove_intermediate_weights(strategy)
            matrix = [base_scores] + rows
            methods[strategy.name] = {**metrics.summarise(matrix), **describe(strategy)}
        results = self.results(methods)
        _write_json(self.root / "results.json", results)
        write_csv(self.root / "results.csv", results)
        return results

    def results(self, methods: dict[str, Any]) -> dict[str, Any]:
        return {
            "tasks": [{"spec": spec, "name": t.name, "kind": t.kind, "metric": t.metric,
                       "synthetic": bool(t.meta.get("synthetic")),
                       "num_train": len(t.train), "num_eval": len(self.eval_examples(t))}
                      for spec, t in zip(self.config.tasks, self.tasks, strict=True)],
            "rows": ["base"] + [f"after step {i} ({t.name})" for i, t in enumerate(self.tasks, 1)],
            "normalisation": metrics.NORMALISATION,
            "methods": methods,
            "seed": self.config.seed,
            "config": self.config.model_dump(mode="json"),
            "versions": versions(),
        }

    def eval_examples(self, task: Task) -> list[Example]:
        return list(getattr(task, self.config.evaluation.split))

    def needed_columns(self, step: int) -> list[int]:
        """The task columns scored in row ``step`` (1..T): all of them with ``cells: full``; with
        ``summary`` the last row, the diagonal R[i][i-1] (BWT) and R[i][i] (FWT) only."""
        num_tasks = len(self.tasks)
        if self.config.cells == "full" or step == num_tasks:
            return list(range(num_tasks))
        return [step - 1, step]

    def evaluate(self, state: ModelState, path: Path,
                 columns: list[int] | None = None) -> list[float | None]:
        """Scores (the task's own metric) of ``state`` on the tasks ``columns`` (default: all),
        kept in ``path`` (JSON by task name); only tasks not in it yet are scored."""
        wanted = [self.tasks[j] for j in (range(len(self.tasks)) if columns is None else columns)]
        wanted_names = {task.name for task in wanted}
        stored = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        missing = [task for task in wanted if task.name not in stored]
        if missing:
            refuse_removed_weights(state)
            from recall_merge.continual.scoring import score_task
            from recall_merge.continual.training import load_causal_lm

            started = time.perf_counter()
            model = load_causal_lm(state.folder, state.adapter, device=self.config.device)
            ev = self.config.evaluation
            for task in missing:
                examples = self.eval_examples(task)
                self.log(f"scoring {self._label(state)} on task {task.name} "
                         f"({len(examples)} items)...")
                stored[task.name] = score_task(model, self.tokenizer, task, examples,
                                               ev.batch_size, ev.max_length, ev.max_new_tokens)
            _write_json(path, stored)
            self._stage_finished(f"{path.name}: {', '.join(t.name for t in missing)}", started)
        return [stored[task.name]["score"] if task.name in wanted_names else None
                for task in self.tasks]

    def run_strategy(self, strategy: Strategy) -> list[list[float | None]]:
        """The T rows R[1..T] of one strategy."""
        if strategy.kind == "merge":
            states = self.merge_states(strategy)
        elif strategy.kind == "expert":
            states = [self.expert_from_base(strategy, i) for i in range(1, len(self.tasks) + 1)]
        else:
            states = self.trained_states(strategy)
        return [self.evaluate(state, self._eval_path(state), self.needed_columns(step))
                for step, state in enumerate(states, 1)]

    def _label(self, state: ModelState) -> str:
        """How the log names a model: base, or its folder inside the run or the expert cache."""
        path = state.adapter or state.folder
        if state == ModelState(self.base):
            return "base"
        for root in (self.root, self.config.expert_cache):
            if root is not None and path.is_relative_to(root):
                return str(path.relative_to(root))
        return str(path)

    def _base_eval_path(self) -> Path:
        if self.config.expert_cache is not None:
            return self.config.expert_cache / "evals" / "base.json"
        return self.root / "evals" / "base.json"

    def _eval_path(self, state: ModelState) -> Path:
        path = state.adapter or state.folder
        cache = self.config.expert_cache
        if cache is not None and path.is_relative_to(cache):
            return cache / "evals" / (_slug(str(path.relative_to(cache))) + ".json")
        if path.is_relative_to(self.root):
            return self.root / "evals" / (_slug(str(path.relative_to(self.root))) + ".json")
        return self._base_eval_path()

    def remove_intermediate_weights(self, strategy: Strategy) -> None:
        """Once every row of ``strategy`` is scored, remove the full-model weights of its stages
        but the last step's (``keep_weights: final``). The folders stay, with their configs and
        merge reports, so a rerun skips them and reads the scores it kept."""
        folder = self.root / "strategies" / _slug(strategy.name)
        if not folder.is_dir():
            return
        # the final model is the last step's, or an earlier one where guard_newest left the
        # newest experts out (no folder is made for those steps)
        steps = [int(stage.name[4:]) for stage in folder.glob("step*") if stage.name[4:].isdigit()]
        final = folder / f"step{max(steps)}" if steps else None
        for stage in sorted(folder.iterdir()):
            if stage.is_dir() and stage != final:
                remove_model_weights(stage, "keep_weights: final (set keep_weights: all to keep "
                                            "every step's model)")

    # --- training stages -------------------------------------------------------------------

    def _state_of(self, folder: Path, strategy: Strategy) -> ModelState:
        return ModelState(self.base, folder) if strategy.training.mode == "lora" else ModelState(folder)

    def train_stage(self, relative: str, strategy: Strategy, examples: list[Example],
                    start: ModelState, continue_adapter: bool, *, ewc_from: Path | None = None,
                    teacher: ModelState | None = None, with_ewc: bool = False,
                    merged_output: bool = False, record: dict[str, Any] | None = None) -> Path:
        """Fine-tune from ``start`` on ``examples`` and save to ``run_dir/relative``.

        ``continue_adapter``: keep training ``start``'s LoRA adapter instead of a new one.
        ``merged_output``: save a full HF folder (adapter merged in) instead of an adapter."""
        def build(tmp: Path) -> None:
            from recall_merge.continual.training import (
                EwcState,
                fisher_diagonal,
                load_causal_lm,
                make_trainable,
                save_merged,
                save_model,
                train,
                update_ewc,
            )

            training = strategy.training
            if self.quiet:
                training = training.model_copy(update={"progress": False})
            self.log(f"training {self._seed_key(relative)} on {len(examples)} examples...")
            seed = stable_seed(self.config.seed, self._seed_key(relative))
            device = self.config.device
            if continue_adapter and start.adapter is not None:
                model = make_trainable(load_causal_lm(start.folder, device=device), training,
                                       adapter=start.adapter)
            else:
                model = make_trainable(load_causal_lm(start.folder, start.adapter, device=device),
                                       training, seed=seed)
            ewc = EwcState.load(ewc_from, device) if ewc_from is not None else None
            teacher_model = (load_causal_lm(teacher.folder, teacher.adapter, device=device)
                             if teacher else None)
            if teacher_model is not None:
                teacher_model.eval().requires_grad_(False)
            loss = train(model, self.tokenizer, examples, training, seed, description=str(relative),
                         ewc=ewc, teacher=teacher_model)
            if with_ewc:
                fisher = fisher_diagonal(model, self.tokenizer, examples, training)
                update_ewc(model, ewc, fisher).save(tmp / "ewc.safetensors")
            (save_merged if merged_output else save_model)(model, self.tokenizer, tmp)
            _write_json(tmp / "training.json", {"loss": loss, "examples": len(examples),
                                                "seed": seed, "max_steps": training.max_steps,
                                                **(record or {})})
            self.log(f"trained {relative}: loss {loss:.4f}")

        return self.folder_stage(relative, build)

    def _seed_key(self, relative: str | Path) -> str:
        """What a stage's seed derives from: its path inside the run folder or the expert cache."""
        cache = self.config.expert_cache
        if cache is not None and Path(relative).is_absolute() and Path(relative).is_relative_to(cache):
            return "expert_cache/" + str(Path(relative).relative_to(cache))
        return str(relative)

    def expert_from_base(self, strategy: Strategy, step: int) -> ModelState:
        """Task ``step``'s expert, fine-tuned from the base; shared by strategies that train alike
        (and, with ``expert_cache``, by runs of other orders: there it is kept by task name)."""
        task = self.tasks[step - 1]
        relative: str | Path = f"experts/{training_key(strategy)}/step{step}"
        if self.config.expert_cache is not None:
            relative = self.config.expert_cache / training_key(strategy) / _slug(task.name)
        key = task_record(self.config.tasks[step - 1], task)["key"]
        folder = self.train_stage(relative, strategy, task.train, ModelState(self.base),
                                  continue_adapter=False, record={"task_key": key})
        return self._state_of(folder, strategy)

    def trained_states(self, strategy: Strategy) -> list[ModelState]:
        """Sequential fine-tuning and its EWC / LwF / replay variants, and joint training."""
        states: list[ModelState] = []
        previous = ModelState(self.base)
        for step, task in enumerate(self.tasks, 1):
            relative = f"strategies/{_slug(strategy.name)}/step{step}"
            kwargs: dict[str, Any] = {}
            examples = list(task.train)
            start, continue_adapter = previous, step > 1
            stage_strategy = strategy
            if strategy.kind == "joint":
                examples = [ex for t in self.tasks[:step] for ex in t.train]
                start, continue_adapter = ModelState(self.base), False
                if strategy.steps_per_task and strategy.training.max_steps is not None:
                    # the experts of these `step` tasks had max_steps each: give joint their total
                    scaled = strategy.training.model_copy(
                        update={"max_steps": strategy.training.max_steps * step})
                    stage_strategy = dataclasses.replace(strategy, training=scaled)
            elif strategy.kind == "replay":
                examples += self.replay_buffer(strategy, step)
            elif strategy.kind == "ewc":
                kwargs["with_ewc"] = True
                if step > 1:
                    kwargs["ewc_from"] = (previous.adapter or previous.folder) / "ewc.safetensors"
            elif strategy.kind == "lwf" and step > 1:
                kwargs["teacher"] = previous
            folder = self.train_stage(relative, stage_strategy, examples, start, continue_adapter,
                                      **kwargs)
            previous = self._state_of(folder, strategy)
            states.append(previous)
        return states

    def replay_buffer(self, strategy: Strategy, step: int) -> list[Example]:
        """``replay_per_task`` seeded train examples of every task before ``step`` (old data)."""
        buffer: list[Example] = []
        for index, task in enumerate(self.tasks[: step - 1], 1):
            rng = random.Random(stable_seed(self.config.seed, f"replay:{strategy.name}:{index}"))
            count = min(strategy.training.replay_per_task, len(task.train))
            buffer += rng.sample(list(task.train), count)
        return buffer

    # --- merge stages ----------------------------------------------------------------------

    def samples_file(self, step: int) -> Path:
        """The newest task's train prompts, as the merge engine's ``samples`` .jsonl."""
        def build(tmp: Path) -> None:
            prompts = self.tasks[step - 1].inputs("train")[: self.config.merge_samples]
            tmp.write_text("".join(json.dumps({"text": p}) + "\n" for p in prompts), encoding="utf-8")

        return self.folder_stage(f"samples/step{step}.jsonl", build, create=False)

    def merge_states(self, strategy: Strategy) -> list[ModelState]:
        """After every step, merge the experts (or the previous merge and the new expert)."""
        slug = _slug(strategy.name)
        experts: list[ModelState] = []
        merged: list[ModelState] = []
        for step in range(1, len(self.tasks) + 1):
            if strategy.finetune_from == "base" or step == 1:
                expert = self.expert_from_base(strategy, step)  # step 1: the previous merge is M_0
            else:
                folder = self.train_stage(f"strategies/{slug}/expert{step}", strategy,
                                          self.tasks[step - 1].train, merged[-1],
                                          continue_adapter=False, merged_output=True)
                expert = ModelState(folder)
            if strategy.guard_newest and not self.beats_base_on_dev(expert, step):
                self.log(f"{strategy.name} step {step}: the new expert does not beat the base on "
                         f"the dev split of {self.tasks[step - 1].name}; it is left out")
                merged.append(merged[-1] if merged else ModelState(self.base))
                continue
            experts.append(expert)
            if strategy.library == "experts" or step == 1:
                models = [e.merge_ref for e in experts]
            else:
                models = [merged[-1].merge_ref, expert.merge_ref]
            folder = self.merge_stage(f"strategies/{slug}/step{step}", strategy, models, step)
            merged.append(ModelState(folder))
        return merged

    def beats_base_on_dev(self, expert: ModelState, step: int) -> bool:
        """Whether ``expert`` scores above the base on task ``step``'s dev split (no old data: the
        newest task's own held-out slice, at hand when its expert is made)."""
        task = self.tasks[step - 1]
        ev = self.config.evaluation

        def dev_score(state: ModelState, path: Path) -> float:
            def compute() -> dict[str, Any]:
                from recall_merge.continual.scoring import score_task
                from recall_merge.continual.training import load_causal_lm

                model = load_causal_lm(state.folder, state.adapter, device=self.config.device)
                return score_task(model, self.tokenizer, task, list(task.dev), ev.batch_size,
                                  ev.max_length, ev.max_new_tokens)

            return float(self.json_stage(path, compute)["score"])

        expert_path = self._eval_path(expert)
        base_path = self._base_eval_path()
        slug = _slug(task.name)
        return dev_score(expert, expert_path.with_name(f"dev_{slug}_{expert_path.name}")) > \
            dev_score(ModelState(self.base), base_path.with_name(f"dev_{slug}_{base_path.name}"))

    def merge_stage(self, relative: str, strategy: Strategy, models: list[str], step: int) -> Path:
        samples = self.samples_file(step)

        def build(tmp: Path) -> None:
            from recall_merge.engine import merge

            self.log(f"merging {relative} ({strategy.method}, {len(models)} models)...")
            cfg = {"method": strategy.method, "base": str(self.base), "models": models,
                   "samples": str(samples), "output": str(tmp), "seed": self.config.seed,
                   "parameters": dict(strategy.parameters), "device": self.config.device}
            result = merge(cfg, overwrite=True, quiet=True)
            if Path(result.output) != tmp:
                shutil.copytree(result.output, tmp, dirs_exist_ok=True)
            _write_json(tmp / "continual_merge.json", {"config": cfg | {"output": relative},
                                                       "report": _jsonable(result.report)})

        return self.folder_stage(relative, build, create=False)


# --- helpers -------------------------------------------------------------------------------

def _full_model_weight_files(folder: Path) -> list[Path]:
    """A full HF model's weight files in ``folder`` (shards and index included); a PEFT adapter's
    ``adapter_model.safetensors`` and an EWC state are not among them (both are small)."""
    return sorted(path for pattern in ("model*.safetensors", "model.safetensors.index.json",
                                       "pytorch_model*.bin", "pytorch_model.bin.index.json")
                  for path in folder.glob(pattern))


def remove_model_weights(folder: Path, reason: str) -> int:
    """Delete the full-model weights in ``folder`` once the model was scored, leaving its config,
    tokenizer and merge report, and a ``WEIGHTS_REMOVED.json`` that says what went and why.
    Returns the bytes freed (0 where there were none)."""
    files = _full_model_weight_files(folder)
    if not files:
        return 0
    freed = sum(path.stat().st_size for path in files)
    _write_json(folder / WEIGHTS_REMOVED, {"files": [path.name for path in files],
                                           "bytes": freed, "reason": reason})
    for path in files:
        path.unlink()
    return freed


def refuse_removed_weights(state: ModelState) -> None:
    """A model whose weights were removed cannot be scored again: say so before loading it."""
    for folder in (state.folder, state.adapter):
        if folder is not None and (folder / WEIGHTS_REMOVED).exists():
            reason = json.loads((folder / WEIGHTS_REMOVED).read_text(encoding="utf-8"))["reason"]
            raise ConfigError(f"the weights of {str(folder)!r} were removed after it was scored "
                              f"({reason}), and a score is missing for it",
                              f"delete {str(folder)!r} so that it is built again, and set "
                              "keep_weights: all if later runs need it")


def load_any_task(spec: str | dict[str, Any], config: ContinualConfig) -> Task:
    """A synthetic task, or one from the task registry, with its splits capped."""
    from recall_merge.continual.synthetic import is_synthetic_spec, load_synthetic_task

    if isinstance(spec, str) and is_synthetic_spec(spec):
        task = load_synthetic_task(spec, config.seed, config.max_train, config.max_dev, config.max_test)
    else:
        try:
            from recall_merge.data.registry import load_task
        except ImportError:
            raise ConfigError(f"task {spec!r} needs recall_merge.data.registry, which is missing",
                              "use synthetic:NAME tasks, or install the full package") from None
        caps = {"n_train": config.max_train, "n_dev": config.max_dev, "n_test": config.max_test}
        task = load_task(spec, seed=config.seed, **{**caps, **config.task_options})
    task.train = list(task.train)[: config.max_train]
    task.dev = list(task.dev)[: config.max_dev]
    task.test = list(task.test)[: config.max_test]
    return task


def _short(text: str, limit: int = 120) -> str:
    """A path or name as an excerpt short enough for an error message."""
    return repr(text if len(text) <= limit else "…" + text[-limit:])


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
        path = folder / "tasks" / f"{_slug(record['name'])}.json"
        if not path.exists():
            _write_json(path, record)
            continue
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") == record["key"]:
            continue
        differs = [what for what, key in (("another task name", "name"),
                                          ("a different spec", "spec_sha256"),
                                          ("different data", "data_sha256"))
                   if stored.get(key) != record[key]]
        raise ConfigError(f"{where} holds models and scores of task "
                          f"{_short(str(stored.get('name')), 60)} made with "
                          f"{' and '.join(differs) or 'another task'} than task "
                          f"{_short(record['name'], 60)} of this config (it changed under the "
                          "same name)", fix)


def _silence_progress_bars() -> None:
    """--quiet: no bar from the libraries that load data and weights either."""
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    if "datasets" in sys.modules:  # else read when it is imported (it is slow to import)
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    else:
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def _classic_and_recall_methods() -> list[str]:
    """What ``merge:all`` means: every method the engine registers."""
    try:
        from recall_merge.methods.registry import available_methods

        return available_methods()
    except ImportError:
        return []


def training_key(strategy: Strategy) -> str:
    """Short hash of the training options, so experts are shared only when trained alike."""
    options = strategy.training.model_dump(mode="json", exclude={"progress"})
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    return f"{strategy.training.mode}-{digest}"


def describe(strategy: Strategy) -> dict[str, Any]:
    info: dict[str, Any] = {"kind": strategy.kind, "uses_old_data": strategy.uses_old_data,
                            "training": strategy.training.mode,
                            "top_k_blocks": strategy.training.top_k_blocks}
    if strategy.kind == "joint":
        info["steps_per_task"] = strategy.steps_per_task
    if strategy.kind == "merge":
        info.update(method=strategy.method, library=strategy.library,
                    finetune_from=strategy.finetune_from, parameters=strategy.parameters,
                    guard_newest=strategy.guard_newest)
    return info


def comparable_config(config: ContinualConfig) -> dict[str, Any]:
    """The config without what may change between runs of one folder (path, progress bars)."""
    data = config.model_dump(mode="json", exclude=set(_UNCOMPARED))
    data["training"].pop("progress", None)
    for entry in data["strategies"]:
        if isinstance(entry, dict):
            entry.get("training", {}).pop("progress", None)
            # added after run folders existed: left out at its default so that they still match
            if not entry.get("steps_per_task"):
                entry.pop("steps_per_task", None)
    return data


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def write_csv(path: Path, results: dict[str, Any]) -> None:
    """Long format: one line per R cell and per metric (method, quantity, row, task, value)."""
    names = [t["name"] for t in results["tasks"]]
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "quantity", "row", "task", "value"])
        for method, entry in results["methods"].items():
            if "R" not in entry:
                writer.writerow([method, "error", "", "", entry.get("error", "")])
                continue
            for row_index, row in enumerate(entry["R"]):
                for name, value in zip(names, row, strict=True):
                    writer.writerow([method, "R", results["rows"][row_index], name, value])
            for quantity in ("AP", "BWT", "FWT", "average_forgetting"):
                writer.writerow([method, quantity, "", "", entry[quantity]])
            for name, value in zip(names, entry["forgetting"], strict=False):
                writer.writerow([method, "forgetting", "", name, value])
    os.replace(partial, path)


def print_summary(results: dict[str, Any], stream=sys.stdout) -> None:
    """A small table: method, AP, BWT, FWT, mean forgetting, old data used."""
    def fmt(value: Any) -> str:
        return "   n/a" if value is None else f"{value:+.3f}"

    print(f"tasks: {', '.join(t['name'] for t in results['tasks'])}   ({results['normalisation']})",
          file=stream)
    print(f"{'method':34s} {'AP':>7s} {'BWT':>7s} {'FWT':>7s} {'forget':>7s}  old data", file=stream)
    for name, entry in results["methods"].items():
        if "R" not in entry:
            print(f"{name:34s} failed: {entry['error'].splitlines()[0]}", file=stream)
            continue
        print(f"{name:34s} {entry['AP']:7.3f} {fmt(entry['BWT']):>7s} {fmt(entry['FWT']):>7s} "
              f"{fmt(entry['average_forgetting']):>7s}  {'yes' if entry['uses_old_data'] else 'no'}",
              file=stream)


def run_continual(config: ContinualConfig | str | Path | dict, quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) a continual experiment; returns the content of results.json."""
    if not isinstance(config, ContinualConfig):
        config = load_continual_config(config)
    return ContinualRun(config, quiet=quiet).run()


def main(config_path: str | Path, quiet: bool = False) -> int:
    """Entry point of ``recall continual CONFIG.yaml``: run, print the summary, return 0."""
    config = load_continual_config(config_path)
    results = run_continual(config, quiet=quiet)
    print_summary(results)
    print(f"results: {config.run_dir / 'results.json'}")
    from recall_merge.reports.html import write_report
    from recall_merge.reports.plots import plot_continual_results

    plot_continual_results(results, config.run_dir / "figures")
    print(f"report: {write_report(config.run_dir, None)}")
    return 0
