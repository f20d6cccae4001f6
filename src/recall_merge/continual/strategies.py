"""The strategies: what each one builds after every step, one class per kind behind one interface
(:meth:`Learner.models`), chosen from :data:`STRATEGIES` by the strategy's kind.

* sequential: fine-tune the previous model on the new task (a LoRA adapter keeps training);
* replay: the same, plus ``replay_per_task`` seeded examples of every earlier task (old data);
* joint: fine-tune the base on every task so far (old data; the multi-task upper bound);
* ewc / lwf: sequential with an EWC penalty / LwF distillation from the previous model;
* expert: each task's expert fine-tuned from the base, alone;
* merge: merge the experts (or the previous merge and the new expert) with a merge method, and
  deploy the merge or a moving average of the merges (``deploy``).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recall_merge.continual import stages
from recall_merge.continual.config import Strategy, StrategyKind
from recall_merge.continual.store import ModelState, slug, stable_seed
from recall_merge.data.task import Example

if TYPE_CHECKING:
    from recall_merge.continual.runner import ContinualRun


class Learner:
    """One kind of strategy: the T models it has after steps 1..T, and how results describe it."""

    def models(self, run: ContinualRun, strategy: Strategy) -> list[ModelState]:
        raise NotImplementedError

    def describe(self, strategy: Strategy) -> dict[str, Any]:
        return {"kind": strategy.kind, "uses_old_data": strategy.uses_old_data,
                "training": strategy.training.mode, "top_k_blocks": strategy.training.top_k_blocks}

    def base_expert_steps(self, strategy: Strategy, num_tasks: int) -> list[int]:
        """The steps whose expert fine-tuned from the base (``stages.expert_from_base``) ``models``
        uses: independent stages that a scale-out builds first, in parallel (continual/distributed.py)."""
        return []


@dataclass
class Fit:
    """One fine-tuning stage: its examples, the model it starts from, and its options."""

    examples: list[Example]
    start: ModelState
    continue_adapter: bool
    strategy: Strategy
    options: dict[str, Any] = field(default_factory=dict)  # ewc_from, teacher, with_ewc


class Sequential(Learner):
    """Fine-tuning task after task; subclasses change what one step trains on or with."""

    def fit(self, run: ContinualRun, strategy: Strategy, step: int, previous: ModelState) -> Fit:
        return Fit(list(run.tasks[step - 1].train), previous, step > 1, strategy)

    def models(self, run: ContinualRun, strategy: Strategy) -> list[ModelState]:
        states: list[ModelState] = []
        previous = ModelState(run.base)
        for step in range(1, len(run.tasks) + 1):
            fit = self.fit(run, strategy, step, previous)
            folder = stages.train_stage(run, f"strategies/{slug(strategy.name)}/step{step}",
                                        fit.strategy, fit.examples, fit.start,
                                        fit.continue_adapter, **fit.options)
            previous = stages.state_of(run, folder, strategy)
            states.append(previous)
        return states


class Replay(Sequential):
    def fit(self, run: ContinualRun, strategy: Strategy, step: int, previous: ModelState) -> Fit:
        fit = super().fit(run, strategy, step, previous)
        fit.examples += replay_buffer(run, strategy, step)
        return fit


def replay_buffer(run: ContinualRun, strategy: Strategy, step: int) -> list[Example]:
    """``replay_per_task`` seeded train examples of every task before ``step`` (old data)."""
    buffer: list[Example] = []
    for index, task in enumerate(run.tasks[: step - 1], 1):
        rng = random.Random(stable_seed(run.config.seed, f"replay:{strategy.name}:{index}"))
        count = min(strategy.training.replay_per_task, len(task.train))
        buffer += rng.sample(list(task.train), count)
    return buffer


class Joint(Sequential):
    def fit(self, run: ContinualRun, strategy: Strategy, step: int, previous: ModelState) -> Fit:
        examples = [ex for task in run.tasks[:step] for ex in task.train]
        if strategy.steps_per_task and strategy.training.max_steps is not None:
            # the experts of these `step` tasks had max_steps each: give joint their total
            scaled = strategy.training.model_copy(
                update={"max_steps": strategy.training.max_steps * step})
            strategy = dataclasses.replace(strategy, training=scaled)
        return Fit(examples, ModelState(run.base), False, strategy)

    def describe(self, strategy: Strategy) -> dict[str, Any]:
        return {**super().describe(strategy), "steps_per_task": strategy.steps_per_task}


class Ewc(Sequential):
    def fit(self, run: ContinualRun, strategy: Strategy, step: int, previous: ModelState) -> Fit:
        fit = super().fit(run, strategy, step, previous)
        fit.options["with_ewc"] = True
        if step > 1:
            fit.options["ewc_from"] = Path(previous.adapter or previous.folder) / "ewc.safetensors"
        return fit


class Lwf(Sequential):
    def fit(self, run: ContinualRun, strategy: Strategy, step: int, previous: ModelState) -> Fit:
        fit = super().fit(run, strategy, step, previous)
        if step > 1:
            fit.options["teacher"] = previous
        return fit


class ExpertAlone(Learner):
    def models(self, run: ContinualRun, strategy: Strategy) -> list[ModelState]:
        return [stages.expert_from_base(run, strategy, step) for step in range(1, len(run.tasks) + 1)]

    def base_expert_steps(self, strategy: Strategy, num_tasks: int) -> list[int]:
        return list(range(1, num_tasks + 1))


class Merge(Learner):
    """After every step, merge the experts (or the previous merge and the new expert), and deploy
    the merge itself or a moving average of the merges (``deploy``).

    TIME (Dziadzio et al., "How to Merge Your Multimodal Models Over Time?", CVPR 2025,
    arXiv 2412.06712) separates the model that training and merging build on from the model that
    is deployed. Here:

    * the merges θ_merge_t are what ``library: previous`` merges with the new expert at step t + 1
      and what ``finetune_from: previous`` trains that expert from, whichever ``deploy`` is;
    * the deployed models, which :meth:`models` returns and the run scores (the rows of R), are
      with ``deploy: merge`` (default) the merges themselves, and with ``deploy: ema``
      θ_deploy_1 = θ_merge_1, θ_deploy_t = (1 − β)·θ_deploy_{t−1} + β·θ_merge_t (β =
      ``ema_beta``), each a durable stage ``strategies/NAME/deployT/`` (:func:`stages.ema_stage`).

    Where ``guard_newest`` leaves a step's expert out, nothing new is merged and the deployed
    model stays as it was; the average starts at the first merge made (the base is deployed
    before it, as it is the merge then).
    """

    def models(self, run: ContinualRun, strategy: Strategy) -> list[ModelState]:
        name = slug(strategy.name)
        experts: list[ModelState] = []
        merged: list[ModelState] = []
        deployed: list[ModelState] = []
        for step in range(1, len(run.tasks) + 1):
            if strategy.finetune_from == "base" or step == 1:
                expert = stages.expert_from_base(run, strategy, step)  # step 1: previous is M_0
            else:
                folder = stages.train_stage(run, f"strategies/{name}/expert{step}", strategy,
                                            run.tasks[step - 1].train, merged[-1],
                                            continue_adapter=False, merged_output=True)
                expert = ModelState(folder)
            if strategy.guard_newest and not stages.beats_base_on_dev(run, expert, step):
                run.log(f"{strategy.name} step {step}: the new expert does not beat the base on "
                        f"the dev split of {run.tasks[step - 1].name}; it is left out")
                merged.append(merged[-1] if merged else ModelState(run.base))
                deployed.append(deployed[-1] if deployed else ModelState(run.base))
                continue
            first_merge = not experts
            experts.append(expert)
            if strategy.library == "experts" or step == 1:
                models = [e.merge_ref for e in experts]
            else:
                models = [merged[-1].merge_ref, expert.merge_ref]
            folder = stages.merge_stage(run, f"strategies/{name}/step{step}", strategy, models, step)
            merged.append(ModelState(folder))
            if strategy.deploy == "merge" or first_merge:
                deployed.append(merged[-1])
            else:
                deployed.append(ModelState(stages.ema_stage(
                    run, f"strategies/{name}/deploy{step}", deployed[-1], merged[-1],
                    strategy.ema_beta)))
        return deployed

    def base_expert_steps(self, strategy: Strategy, num_tasks: int) -> list[int]:
        return list(range(1, num_tasks + 1)) if strategy.finetune_from == "base" else [1]

    def describe(self, strategy: Strategy) -> dict[str, Any]:
        return {**super().describe(strategy), "method": strategy.method,
                "library": strategy.library, "finetune_from": strategy.finetune_from,
                "parameters": strategy.parameters, "guard_newest": strategy.guard_newest,
                "deploy": strategy.deploy,
                "ema_beta": strategy.ema_beta if strategy.deploy == "ema" else None}


STRATEGIES: dict[StrategyKind, Learner] = {
    "sequential": Sequential(), "replay": Replay(), "joint": Joint(), "ewc": Ewc(), "lwf": Lwf(),
    "expert": ExpertAlone(), "merge": Merge(),
}


def learner(strategy: Strategy) -> Learner:
    return STRATEGIES[strategy.kind]


def describe(strategy: Strategy) -> dict[str, Any]:
    """What results.json says about a strategy besides its scores."""
    return learner(strategy).describe(strategy)


def merge_methods() -> list[str]:
    """What ``merge:all`` means: every method the engine registers that merges any number of
    experts (slerp takes exactly one, so a continual run's second step could not use it)."""
    from recall_merge.methods.registry import METHODS, available_methods

    return [name for name in available_methods()
            if getattr(METHODS[name], "max_experts", None) is None]
