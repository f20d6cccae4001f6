"""The stages that make models: a fine-tuning (from the base, a previous model or a merge), an
expert of one task fine-tuned from the base, the samples a merge is given, a merge, the moving
average of the merges that ``deploy: ema`` deploys, and the dev check of ``guard_newest``. Each
is a durable stage of the run's store, seeded from (seed, its path), so a resumed run builds the
same model as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recall_merge.continual.config import Strategy
from recall_merge.continual.store import ModelState, slug, stable_seed
from recall_merge.data.task import Example
from recall_merge.io.atomic import write_json, write_text

if TYPE_CHECKING:
    from recall_merge.continual.runner import ContinualRun


def training_key(strategy: Strategy) -> str:
    """Short hash of the training options, so experts are shared only when trained alike."""
    options = strategy.training.model_dump(mode="json", exclude={"progress"})
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    return f"{strategy.training.mode}-{digest}"


def state_of(run: ContinualRun, folder: Path, strategy: Strategy) -> ModelState:
    """The model a training stage saved: an adapter on the base (LoRA) or a full folder."""
    return ModelState(run.base, folder) if strategy.training.mode == "lora" else ModelState(folder)


def stage_name(run: ContinualRun, relative: str | Path) -> str:
    """A stage's path inside the run folder or the expert cache: its seed derives from it."""
    cache = run.config.expert_cache
    if cache is not None and Path(relative).is_absolute() and Path(relative).is_relative_to(cache):
        return "expert_cache/" + str(Path(relative).relative_to(cache))
    return str(relative)


def train_stage(run: ContinualRun, relative: str | Path, strategy: Strategy,
                examples: list[Example], start: ModelState, continue_adapter: bool, *,
                ewc_from: Path | None = None, teacher: ModelState | None = None,
                with_ewc: bool = False, merged_output: bool = False,
                record: dict[str, Any] | None = None) -> Path:
    """Fine-tune from ``start`` on ``examples`` and save to ``run_dir/relative``.

    ``continue_adapter``: keep training ``start``'s LoRA adapter instead of a new one.
    ``merged_output``: save a full HF folder (adapter merged in) instead of an adapter.
    ``record``: more to write into the stage's ``training.json``."""
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
        if run.quiet:
            training = training.model_copy(update={"progress": False})
        name = stage_name(run, relative)
        run.log(f"training {name} on {len(examples)} examples...")
        seed = stable_seed(run.config.seed, name)
        device = run.config.device
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
        loss = train(model, run.tokenizer, examples, training, seed, description=str(relative),
                     ewc=ewc, teacher=teacher_model)
        if with_ewc:
            fisher = fisher_diagonal(model, run.tokenizer, examples, training)
            update_ewc(model, ewc, fisher).save(tmp / "ewc.safetensors")
        (save_merged if merged_output else save_model)(model, run.tokenizer, tmp)
        write_json(tmp / "training.json", {"loss": loss, "examples": len(examples), "seed": seed,
                                           "max_steps": training.max_steps, **(record or {})})
        run.log(f"trained {relative}: loss {loss:.4f}")

    return run.store.folder_stage(relative, build)


def expert_from_base(run: ContinualRun, strategy: Strategy, step: int) -> ModelState:
    """Task ``step``'s expert, fine-tuned from the base; shared by strategies that train alike
    (and, with ``expert_cache``, by runs of other orders: there it is kept by task name, and its
    ``training.json`` carries the key of the task it was trained on)."""
    task = run.tasks[step - 1]
    folder = train_stage(run, expert_relative(run, strategy, step), strategy, task.train,
                         ModelState(run.base), continue_adapter=False,
                         record={"task_key": run.task_keys[step - 1]})
    return state_of(run, folder, strategy)


def expert_relative(run: ContinualRun, strategy: Strategy, step: int) -> str | Path:
    """Where task ``step``'s expert from the base lives: in the run folder by step, or (absolute)
    in the expert cache by task name."""
    if run.config.expert_cache is not None:
        return run.config.expert_cache / training_key(strategy) / slug(run.tasks[step - 1].name)
    return f"experts/{training_key(strategy)}/step{step}"


def samples_file(run: ContinualRun, step: int) -> Path:
    """The newest task's train prompts, as the merge engine's ``samples`` .jsonl."""
    def make() -> str:
        prompts = run.tasks[step - 1].inputs("train")[: run.config.merge_samples]
        return "".join(json.dumps({"text": prompt}) + "\n" for prompt in prompts)

    return run.store.text_stage(f"samples/step{step}.jsonl", make)


def merge_stage(run: ContinualRun, relative: str, strategy: Strategy, models: list[str],
                step: int) -> Path:
    """Merge ``models`` on the base with the strategy's method, given step ``step``'s samples."""
    samples = samples_file(run, step)
    return _engine_stage(run, relative, {
        "method": strategy.method, "base": str(run.base), "models": models,
        "samples": str(samples), "seed": run.config.seed,
        "parameters": dict(strategy.parameters), "device": run.config.device})


def ema_stage(run: ContinualRun, relative: str, deployed: ModelState, merged: ModelState,
              beta: float) -> Path:
    """EMA deployment's update: (1 − β)·``deployed`` + β·``merged``, tensor by tensor, made by the
    engine's ``linear`` method with weights [1 − β, β] and no normalisation (they sum to 1; the
    division by their float32 sum would only add a rounding). Both inputs are full merged models,
    so the base takes no part in the arithmetic; the engine reads it for the model's layout."""
    return _engine_stage(run, relative, {
        "method": "linear", "base": str(run.base), "models": [deployed.merge_ref, merged.merge_ref],
        "seed": run.config.seed, "device": run.config.device,
        "parameters": {"weights": [1.0 - beta, beta], "normalize": False}})


def _engine_stage(run: ContinualRun, relative: str, cfg: dict[str, Any]) -> Path:
    """The stage ``run_dir/relative``: the merge engine's output for ``cfg`` (every merge config
    key but ``output``), with the config and the engine's report in ``continual_merge.json``."""
    def build(tmp: Path) -> None:
        from recall_merge.engine import merge

        run.log(f"merging {relative} ({cfg['method']}, {len(cfg['models'])} models)...")
        # the engine writes a folder of its own (atomically, inside this stage's temporary one);
        # its files then move up, so the stage holds the merged model itself
        output = tmp / "merged"
        full = {**cfg, "output": str(output)}
        result = merge(full, overwrite=True, quiet=True)
        for entry in Path(result.output).iterdir():
            os.replace(entry, tmp / entry.name)
        shutil.rmtree(result.output)
        report = json.loads(json.dumps(result.report, default=str))
        # not write_json: a merge report may hold a NaN statistic, kept as the engine gave it
        write_text(tmp / "continual_merge.json", json.dumps(
            {"config": full | {"output": relative}, "report": report}, indent=2, sort_keys=True) + "\n")

    return run.store.folder_stage(relative, build)


def beats_base_on_dev(run: ContinualRun, expert: ModelState, step: int) -> bool:
    """Whether ``expert`` scores above the base on task ``step``'s dev split (no old data: the
    newest task's own held-out slice, at hand when its expert is made)."""
    task = run.tasks[step - 1]
    ev = run.config.evaluation

    def dev_score(state: ModelState, path: Path) -> float:
        def compute() -> dict[str, Any]:
            from recall_merge.continual.scoring import score_task
            from recall_merge.continual.training import load_causal_lm

            run.log(f"scoring {run.label(state)} on the dev split of task {task.name} "
                    f"({len(task.dev)} items)...")
            model = load_causal_lm(state.folder, state.adapter, device=run.config.device)
            return score_task(model, run.tokenizer, task, list(task.dev), ev.batch_size,
                              ev.max_length, ev.max_new_tokens)

        return float(run.store.json_stage(path, compute)["score"])

    expert_path = run.eval_path(expert)
    base_path = run.base_eval_path()
    name = slug(task.name)
    return dev_score(expert, expert_path.with_name(f"dev_{name}_{expert_path.name}")) > \
        dev_score(ModelState(run.base), base_path.with_name(f"dev_{name}_{base_path.name}"))
