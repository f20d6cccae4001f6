"""A continual run, or a grid of them, scaled out on Ray (``recall continual CONFIG --ray``,
``benchmarks/continual/run.py --ray``; ``pip install recall-merge[ray]``).

The driver prepares each run folder (tasks loaded and checked, config stamped, what killed runs
left swept) and scores the base. Then two waves of Ray tasks, each asking for ``cpus_per_task``
CPUs (and one GPU when the run's device is CUDA):

1. one task per expert fine-tuned from the base (per task, training settings and seed; shared by
   every strategy and, through ``expert_cache``, every order that uses it), which also scores it
   where an ``expert`` strategy will read it;
2. one task per strategy (``recall continual``) or per run folder (a benchmark cell).

Every task rebuilds its run from the config and works through the run's durable stages
(:mod:`~.store`): a stage whose folder or file exists is read, not rebuilt, and a stage appears
only when complete. So a task that Ray retries after its worker died redoes only the stage it was
in, and two tasks never build or score the same model at once: the experts (the only models
strategies share) are all built, and scored, in wave 1. Each stage seeds itself from (seed, its
path), so the models and scores are those of a serial run; the results are assembled in the
driver in the strategies' order. Nodes must see the run folder, the expert cache and the models
at the same paths (shared storage; docs/scale.md). Tasks never sweep temporaries: on another
node a live process's temporary looks like a dead one's, so only the driver sweeps, before any
task starts.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recall_merge.continual import stages
from recall_merge.continual.config import ContinualConfig, Strategy, expand_strategies
from recall_merge.continual.store import ModelState
from recall_merge.continual.strategies import learner, merge_methods
from recall_merge.errors import ConfigError

if TYPE_CHECKING:
    from recall_merge.continual.runner import ContinualRun, Dispatch, StrategyOutcome

INSTALL_FIX = "pip install 'recall-merge[ray]' (or pip install ray), or run without --ray"
MAX_RETRIES = 3  # Ray re-runs a task whose worker or node died; the stages make that safe
# Passed on to every task: where the packaged models and caches are, and offline switches.
FORWARDED_ENVIRONMENT = ("RECALL_MERGE_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                         "TRANSFORMERS_OFFLINE", "OMP_WAIT_POLICY")


def check_cpus_per_task(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 < value <= 1024:
        raise ConfigError(f"cpus per Ray task must be a number above 0 and at most 1024, not {value!r}",
                          "pass --cpus-per-task 1 (the default) or the cores one task should use")
    return float(value)


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs the ray package, which is not installed", INSTALL_FIX) from None
    return ray


@contextlib.contextmanager
def connected(address: str) -> Iterator[Any]:
    """Ray, connected to ``address`` ("": a local cluster of this machine's cores, or the one in
    $RAY_ADDRESS; "auto" or "HOST:PORT": a running cluster). A connection made here is closed on
    the way out; one the caller made (ray.init before) is left open."""
    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            environment = {key: os.environ[key] for key in FORWARDED_ENVIRONMENT if key in os.environ}
            ray.init(address=address or None, include_dashboard=False,
                     runtime_env={"env_vars": environment} if environment else None)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot connect to the Ray cluster at {address or 'RAY_ADDRESS'}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                              "start it first (ray start --head on the head node), pass its address "
                              "(--ray HOST:6379), or --ray alone for a local one") from None
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


@dataclass
class ExpertJob:
    """One expert fine-tuned from the base: built (and scored on ``score``, task names) in the run
    of ``config`` at ``step``; ``path`` is its stage folder."""

    config: ContinualConfig
    strategies: list[Strategy]
    strategy: Strategy
    step: int
    path: Path
    score: set[str]


def expert_jobs(runs: list[tuple[ContinualRun, list[Strategy]]]) -> list[ExpertJob]:
    """Every distinct expert the prepared ``runs`` fine-tune from the base, once (runs sharing an
    expert cache share its experts), with the tasks an ``expert`` strategy scores it on."""
    jobs: dict[Path, ExpertJob] = {}
    for run, strategies in runs:
        for strategy in strategies:
            for step in learner(strategy).base_expert_steps(strategy, len(run.tasks)):
                path = run.root / stages.expert_relative(run, strategy, step)
                job = jobs.setdefault(path, ExpertJob(run.config, strategies, strategy, step, path, set()))
                if strategy.kind == "expert":  # the one strategy that scores experts themselves
                    job.score |= {run.tasks[j].name for j in run.needed_columns(step)}
    return list(jobs.values())


def _rebuilt(config: ContinualConfig, strategies: list[Strategy], quiet: bool) -> ContinualRun:
    from recall_merge.continual.runner import ContinualRun

    run = ContinualRun(config, quiet=quiet, sweep=False)
    run.prepare(strategies)
    return run


def build_expert(job: ExpertJob, quiet: bool) -> int:
    """Wave 1, in a Ray task: the expert and its scores; returns the stages it built."""
    run = _rebuilt(job.config, job.strategies, quiet)
    state = stages.expert_from_base(run, job.strategy, job.step)
    if job.score:
        columns = [j for j, task in enumerate(run.tasks) if task.name in job.score]
        run.evaluate(state, run.eval_path(state), columns)
    return run.new_stages


def run_strategy(config: ContinualConfig, strategies: list[Strategy], strategy: Strategy,
                 base_scores: list[float | None], quiet: bool) -> tuple[StrategyOutcome, int]:
    """Wave 2 of ``recall continual --ray``, in a Ray task: one strategy's outcome and the stages
    it built."""
    run = _rebuilt(config, strategies, quiet)
    return run.run_strategy(strategy, base_scores), run.new_stages


def run_cell(config: ContinualConfig, quiet: bool) -> tuple[dict[str, Any], float, int]:
    """Wave 2 of a grid, in a Ray task: one run folder's results, its wall seconds (the shared
    experts were built in wave 1, so they are not in it) and the stages it built."""
    from recall_merge.continual.runner import ContinualRun

    started = time.perf_counter()
    run = ContinualRun(config, quiet=quiet, sweep=False)
    results = run.run()
    return results, time.perf_counter() - started, run.new_stages


def _resources(config: ContinualConfig, cpus_per_task: float) -> dict[str, Any]:
    gpus = 1 if config.device.startswith("cuda") else 0
    return {"num_cpus": cpus_per_task, "num_gpus": gpus, "max_retries": MAX_RETRIES}


def _results(ray, refs: list[Any]) -> list[Any]:
    """``ray.get``, with a task's RecallError raised as itself (the CLI's message and exit 2)."""
    from recall_merge.errors import RecallError

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, RecallError):
            raise exc.cause from None
        raise


def _build_experts(ray, runs: list[tuple[ContinualRun, list[Strategy]]], cpus_per_task: float,
                   log) -> int:
    jobs = expert_jobs(runs)
    if not jobs:
        return 0
    quiet = runs[0][0].quiet
    task = ray.remote(build_expert).options(**_resources(jobs[0].config, cpus_per_task))
    started = time.perf_counter()
    log(f"ray: {len(jobs)} expert(s) from the base, one task each")
    built = sum(_results(ray, [task.remote(job, quiet) for job in jobs]))
    log(f"ray: experts done ({time.perf_counter() - started:.1f} s, {built} new stages)")
    return built


def ray_dispatch(address: str, cpus_per_task: float = 1.0) -> Dispatch:
    """A :data:`~.runner.Dispatch` for ``ContinualRun.run``: wave 1 the experts, wave 2 one task per
    strategy; outcomes in the strategies' order."""
    cpus_per_task = check_cpus_per_task(cpus_per_task)
    _ray()  # a missing package is refused now, before the run's first stage

    def dispatch(run: ContinualRun, strategies: list[Strategy],
                 base_scores: list[float | None]) -> list[StrategyOutcome]:
        with connected(address) as ray:
            run.store.new_stages += _build_experts(ray, [(run, strategies)], cpus_per_task, run.log)
            task = ray.remote(run_strategy).options(**_resources(run.config, cpus_per_task))
            refs = [task.remote(run.config, strategies, strategy, base_scores, run.quiet)
                    for strategy in strategies]
            run.log(f"ray: {len(refs)} strateg{'y' if len(refs) == 1 else 'ies'}, one task each")
            outcomes = []
            for outcome, built in _results(ray, refs):
                outcomes.append(outcome)
                run.store.new_stages += built
        return outcomes

    return dispatch


def run_cells(configs: list[ContinualConfig | dict[str, Any]], *, address: str = "",
              cpus_per_task: float = 1.0, quiet: bool = False) -> list[tuple[dict[str, Any], float]]:
    """A grid of continual runs (e.g. the benchmark's (order, strategy) cells, each its own run
    folder, sharing an expert cache) on Ray: each run folder prepared and its base scored here,
    the experts of all of them built once (wave 1), then one task per run folder (wave 2).
    Returns each run's results and wall seconds in the order given."""
    from recall_merge.continual.config import load_continual_config
    from recall_merge.continual.runner import ContinualRun

    cpus_per_task = check_cpus_per_task(cpus_per_task)
    _ray()
    loaded = [c if isinstance(c, ContinualConfig) else load_continual_config(c) for c in configs]
    runs = []
    for config in loaded:
        run = ContinualRun(config, quiet=quiet)
        strategies = expand_strategies(config, merge_methods=merge_methods())
        run.prepare(strategies)
        if config.expert_cache is not None:
            # the base's scores are then shared by the runs: scored here, before any task could
            # score it at the same time (without a cache each run scores its own)
            run.evaluate(ModelState(run.base), run.base_eval_path())
        runs.append((run, strategies))
    if not runs:
        return []
    with connected(address) as ray:
        _build_experts(ray, runs, cpus_per_task, runs[0][0].log)
        task = ray.remote(run_cell).options(**_resources(loaded[0], cpus_per_task))
        outcomes = _results(ray, [task.remote(config, quiet) for config in loaded])
    return [(results, seconds) for results, seconds, _ in outcomes]
