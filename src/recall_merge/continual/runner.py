"""The continual-learning loop: strategies × steps, every finished stage durable on disk.

Run folder layout (``run_dir``)::

    config.json                    the validated config; a rerun with another config is refused
    tasks/NAME.json                each task's spec and data hash; a task changed since is refused
    base_model/                    only for model: tiny-random (SYNTHETIC)
    samples/stepI.jsonl            newest task's train prompts, given to the merges at step I
    experts/TRAINKEY/stepI/        expert of task I fine-tuned from the base (shared by strategies)
    strategies/NAME/stepI/         the model of strategy NAME after step I (adapter or HF folder)
    strategies/NAME/expertI/       merges fine-tuned from the previous merge: that expert
    strategies/NAME/deployI/       merges with deploy: ema: the deployed moving average of the merges
    evals/KEY.json                 one model's scores, also per item, on every task (or some cells)
    results.json, results.csv

With ``expert_cache`` set, the experts fine-tuned from the base and the scores of them and of the
base live in that folder instead, by task (``TRAINKEY/TASK/``, ``evals/`` and ``tasks/``), so runs
of other task orders or sequences reuse them; ``expert_cache/manifest.json`` holds what they
depend on (model, seed, split caps, evaluation) and a run with other values is refused.

Stages are durable (:mod:`~.store`): re-running the same command after a crash or Ctrl-C
continues where it stopped; each stage reads its inputs from disk and seeds itself from (seed,
stage name), so a resumed run ends with the same numbers. What each strategy builds is in
:mod:`~.strategies`, the stages that build models in :mod:`~.stages`, the intervals of the
metrics in :mod:`~.intervals`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recall_merge.continual import intervals, metrics, stages
from recall_merge.continual.config import (
    TINY_RANDOM,
    ContinualConfig,
    Strategy,
    expand_strategies,
    load_continual_config,
)
from recall_merge.continual.results import build_results, print_summary, write_results
from recall_merge.continual.store import (
    ModelState,
    RunStore,
    check_run_folders,
    discard_temporaries,
    refuse_removed_weights,
    remove_intermediate_weights,
    remove_model_weights,
    slug,
)
from recall_merge.continual.strategies import describe, learner, merge_methods
from recall_merge.continual.tasks import (
    check_task_data,
    eval_examples,
    load_any_task,
    load_tasks,
    task_record,
)
from recall_merge.data.task import Example, Task
from recall_merge.errors import RecallError
from recall_merge.io.atomic import write_json

# what other modules (benchmarks, the demo) import from here
__all__ = ["ContinualRun", "ModelState", "load_any_task", "main", "print_summary",
           "refuse_removed_weights", "remove_model_weights", "run_continual", "slug"]

# One strategy's entry in results.json and the per-item scores of its cells (None if it failed).
StrategyOutcome = tuple[dict[str, Any], intervals.CellItems | None]
# Runs the strategies of a prepared run (base scored) and gives their outcomes in the same order:
# one after another here, as Ray tasks in continual/distributed.py.
Dispatch = Callable[["ContinualRun", list[Strategy], list[float | None]], list[StrategyOutcome]]


class ContinualRun:
    """One run folder. ``run()`` builds every missing stage and writes the results.

    ``sweep``: remove what killed runs left (marked temporaries of processes that are gone) when
    the run is prepared. Off in Ray tasks: there a live temporary of another node's process looks
    like a dead one's, so only the driver sweeps, before any task starts."""

    def __init__(self, config: ContinualConfig, quiet: bool = False, *, sweep: bool = True) -> None:
        self.config = config
        self.quiet = quiet
        self.sweep = sweep
        self.root = config.run_dir
        self.store = RunStore(self.root, self.log)

    @property
    def new_stages(self) -> int:
        """How many stages this run built (0 for a rerun of a finished run)."""
        return self.store.new_stages

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"[continual] {message}", file=sys.stderr, flush=True)

    def prepare(self, strategies: list[Strategy] | None = None) -> None:
        """Load and check the tasks (refused before anything is written), check the folders, drop
        what killed runs left, load the base and its tokenizer: what every use of a run folder
        needs before its first stage."""
        from transformers import AutoTokenizer

        self.tasks = load_tasks(self.config, needs_dev=any(s.guard_newest for s in strategies or []))
        records = [task_record(spec, task) for spec, task in zip(self.config.tasks, self.tasks,
                                                                 strict=True)]
        self.task_keys = [record["key"] for record in records]
        self.root.mkdir(parents=True, exist_ok=True)
        check_run_folders(self.config)
        check_task_data(self.config, records)
        if self.sweep:
            discard_temporaries(self.root)
            discard_temporaries(self.config.expert_cache)
        self.base = self.base_folder()
        self.tokenizer = AutoTokenizer.from_pretrained(self.base)

    def base_folder(self) -> Path:
        if self.config.model == TINY_RANDOM:
            from recall_merge.testing import make_tiny_llama

            return self.store.folder_stage(
                "base_model", lambda tmp: make_tiny_llama(tmp, seed=self.config.seed))
        from recall_merge.io.packaged import resolve_model_ref

        return resolve_model_ref(self.config.model)

    # --- the run ---------------------------------------------------------------------------

    def run(self, dispatch: Dispatch | None = None) -> dict[str, Any]:
        """Build what is missing and write the results; ``dispatch`` runs the strategies elsewhere
        (default: one after another in this process). Either way the results are the same."""
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Loading weights" bar per stage drowns the log
        if self.quiet:
            _silence_progress_bars()
        strategies = expand_strategies(self.config, merge_methods=merge_methods())
        reference = intervals.reference_strategy(self.config, strategies)  # refused before work
        self.prepare(strategies)
        base_scores = self.evaluate(ModelState(self.base), self.base_eval_path())
        outcomes = (dispatch(self, strategies, base_scores) if dispatch is not None
                    else [self.run_strategy(strategy, base_scores) for strategy in strategies])
        methods: dict[str, Any] = {}
        items: dict[str, intervals.CellItems] = {}  # per strategy, the per-item scores of its cells
        for strategy, (entry, cells) in zip(strategies, outcomes, strict=True):
            methods[strategy.name] = entry
            if cells is not None:
                items[strategy.name] = cells
        results = build_results(self.config, self.tasks,
                                [len(self.eval_examples(t)) for t in self.tasks], methods, items, reference)
        write_results(self.root, results)
        # the per-item scores behind every interval, in one file (per strategy, per step row,
        # per task; null where a cell was not scored), so runs can be pooled later (the benchmark)
        write_json(self.root / "items.json", {"tasks": [t.name for t in self.tasks], "items": items})
        return results

    def run_strategy(self, strategy: Strategy, base_scores: list[float | None]) -> StrategyOutcome:
        """One strategy's models (durable stages), its scores, results entry and per-item cells.
        A RecallError ends this strategy only: its entry then holds the error."""
        self.log(f"strategy {strategy.name}")
        try:
            states = learner(strategy).models(self, strategy)
            rows = [self.evaluate(state, self.eval_path(state), self.needed_columns(step))
                    for step, state in enumerate(states, 1)]
        except RecallError as exc:  # one broken strategy must not end the whole run
            self.log(f"strategy {strategy.name} failed: {exc}")
            return {"error": str(exc), **describe(strategy)}, None
        if self.config.keep_weights == "final":
            remove_intermediate_weights(self.root / "strategies" / slug(strategy.name))
        return ({**metrics.summarise([base_scores] + rows), **describe(strategy)},
                intervals.cell_items(self.tasks, [self.eval_path(s) for s in states]))

    def eval_examples(self, task: Task) -> list[Example]:
        return eval_examples(task, self.config)

    def needed_columns(self, step: int) -> list[int]:
        """The task columns scored in row ``step`` (1..T): all of them with ``cells: full``; with
        ``summary`` the last row, the diagonal R[i][i-1] (BWT) and R[i][i] (FWT) only; with
        ``ap_bwt`` the last row and the diagonal (one task a step before the last, not two)."""
        num_tasks = len(self.tasks)
        if self.config.cells == "full" or step == num_tasks:
            return list(range(num_tasks))
        return [step - 1] if self.config.cells == "ap_bwt" else [step - 1, step]

    def evaluate(self, state: ModelState, path: Path,
                 columns: list[int] | None = None) -> list[float | None]:
        """Scores (the task's own metric) of ``state`` on the tasks ``columns`` (default: all),
        kept in ``path`` (JSON by task name); only tasks not in it yet are scored."""
        wanted = [self.tasks[j] for j in (range(len(self.tasks)) if columns is None else columns)]
        wanted_names = {task.name for task in wanted}
        stored = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        missing = [task for task in wanted if task.name not in stored]
        if missing:
            from recall_merge.continual.scoring import score_task
            from recall_merge.continual.training import load_causal_lm

            refuse_removed_weights(state)
            started = time.perf_counter()
            model = load_causal_lm(state.folder, state.adapter, device=self.config.device)
            ev = self.config.evaluation
            scorer = score_task
            if ev.backend == "lm_eval":  # same prompts, same result keys (docs/evaluation.md)
                from recall_merge import lm_eval_backend

                scorer = functools.partial(lm_eval_backend.score_task, seed=self.config.seed)
            for task in missing:
                examples = self.eval_examples(task)
                self.log(f"scoring {self.label(state)} on task {task.name} "
                         f"({len(examples)} items)...")
                stored[task.name] = scorer(model, self.tokenizer, task, examples,
                                           ev.batch_size, ev.max_length, ev.max_new_tokens)
            write_json(path, stored)
            self.store.finished(f"{path.name}: {', '.join(t.name for t in missing)}", started)
        return [stored[t.name]["score"] if t.name in wanted_names else None for t in self.tasks]

    def label(self, state: ModelState) -> str:
        """How the log names a model: base, or its folder inside the run or the expert cache."""
        path = state.adapter or state.folder
        if state == ModelState(self.base):
            return "base"
        for root in (self.root, self.config.expert_cache):
            if root is not None and path.is_relative_to(root):
                return str(path.relative_to(root))
        return str(path)

    def base_eval_path(self) -> Path:
        return (self.config.expert_cache or self.root) / "evals" / "base.json"

    def eval_path(self, state: ModelState) -> Path:
        path = state.adapter or state.folder
        for root in (self.config.expert_cache, self.root):
            if root is not None and path.is_relative_to(root):
                return root / "evals" / (slug(str(path.relative_to(root))) + ".json")
        return self.base_eval_path()

    _base_eval_path, _eval_path = base_eval_path, eval_path  # what benchmarks/continual/sweep.py calls

    # --- the stages other tools build one at a time (benchmarks/continual/sweep.py) -----------

    def expert_from_base(self, strategy: Strategy, step: int) -> ModelState:
        return stages.expert_from_base(self, strategy, step)

    def merge_stage(self, relative: str, strategy: Strategy, models: list[str], step: int) -> Path:
        return stages.merge_stage(self, relative, strategy, models, step)

    def beats_base_on_dev(self, expert: ModelState, step: int) -> bool:
        return stages.beats_base_on_dev(self, expert, step)


def _silence_progress_bars() -> None:
    """--quiet: no bar from ``datasets`` either (transformers' switch covers huggingface_hub)."""
    if "datasets" in sys.modules:  # else read when it is imported (it is slow to import)
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    else:
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def run_continual(config: ContinualConfig | str | Path | dict, quiet: bool = False,
                  dispatch: Dispatch | None = None) -> dict[str, Any]:
    """Run (or resume) a continual experiment; returns the content of results.json. ``dispatch``
    runs the strategies elsewhere, e.g. ``continual.distributed.ray_dispatch(address)`` as Ray
    tasks, with the same results."""
    if not isinstance(config, ContinualConfig):
        config = load_continual_config(config)
    return ContinualRun(config, quiet=quiet).run(dispatch)


def main(config_path: str | Path, quiet: bool = False, dispatch: Dispatch | None = None) -> int:
    """Entry point of ``recall continual CONFIG.yaml``: run, print the summary, write the figures
    and the report; 0 when every strategy finished, 1 when one failed (its entry in results.json
    holds the error; the other strategies' results are written all the same)."""
    config = load_continual_config(config_path)
    results = run_continual(config, quiet=quiet, dispatch=dispatch)
    print_summary(results)
    print(f"results: {config.run_dir / 'results.json'}")
    from recall_merge.reports.html import write_report
    from recall_merge.reports.plots import plot_continual_results

    plot_continual_results(results, config.run_dir / "figures")
    print(f"report: {write_report(config.run_dir, None)}")
    failed = {name: entry["error"] for name, entry in results["methods"].items() if "error" in entry}
    for name, error in failed.items():
        print(f"error: strategy {name} failed: {error}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} of {len(results['methods'])} strategies failed; rerun the same "
              "command once the cause is fixed: finished stages are kept", file=sys.stderr)
    return 1 if failed else 0
