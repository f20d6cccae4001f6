"""Fine-tuning for the continual harness: LoRA (default) or full, optionally only the top k
blocks; seeded AdamW over small CPU-friendly batches, loss on the answer tokens only.

Options used by the baselines:

* EWC (online form, Schwarz et al. 2018 with γ = 1): after each task the diagonal empirical
  Fisher of the trainable parameters is added to a running sum F, and the parameters become the
  anchor θ*; training on the next task adds (λ/2) Σ F (θ − θ*)².
* LwF: a frozen copy of the model before the new task is the teacher; the student adds
  α · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) over the non-padding tokens of the new data.
* Replay is a choice of training examples, made by the strategy (continual/strategies.py).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from recall_merge.continual.config import TrainingConfig
from recall_merge.continual.scoring import encode, pad_id
from recall_merge.data.task import Example
from recall_merge.errors import RecallError, excerpt


@dataclass
class EwcState:
    """Running Fisher sum and anchor, keyed by trainable-parameter name."""

    fisher: dict[str, torch.Tensor]
    anchor: dict[str, torch.Tensor]

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors = {f"fisher::{k}": v.detach().cpu().contiguous() for k, v in self.fisher.items()}
        tensors.update({f"anchor::{k}": v.detach().cpu().contiguous() for k, v in self.anchor.items()})
        save_file(tensors, str(path))

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> EwcState:
        from safetensors.torch import load_file

        tensors = load_file(str(path), device=device)
        pick = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        return cls(pick("fisher::"), pick("anchor::"))


def load_causal_lm(folder: Path, adapter: Path | None = None, merge_adapter: bool = True,
                   device: str = "cpu"):
    """A float32 CausalLM from ``folder`` on ``device``, with an optional PEFT adapter (merged in
    by default)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
    if adapter is None:
        return model
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=not merge_adapter)
    return peft_model.merge_and_unload() if merge_adapter else peft_model


def top_block_indices(model, top_k: int | None) -> list[int] | None:
    """Indices of the last ``top_k`` decoder blocks (None: all)."""
    if top_k is None:
        return None
    num_layers = model.config.num_hidden_layers
    return list(range(max(num_layers - top_k, 0), num_layers))


def make_trainable(model, training: TrainingConfig, adapter: Path | None = None, seed: int = 0):
    """Wrap ``model`` for training: a new (or continued) LoRA adapter, or unfrozen full weights."""
    blocks = top_block_indices(model, training.top_k_blocks)
    if training.mode == "lora":
        from peft import LoraConfig, PeftModel, get_peft_model

        if adapter is not None:
            return PeftModel.from_pretrained(model, adapter, is_trainable=True)
        torch.manual_seed(seed)
        lora = LoraConfig(
            r=training.lora_rank, lora_alpha=training.lora_alpha, lora_dropout=training.lora_dropout,
            target_modules=list(training.lora_targets), task_type="CAUSAL_LM",
            layers_to_transform=blocks, layers_pattern="layers" if blocks is not None else None,
        )
        return get_peft_model(model, lora)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = blocks is None or any(f"layers.{b}." in name for b in blocks)
    return model


def trainable_parameters(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _batches(tokenizer, examples: Sequence[Example], batch_size: int, max_length: int,
             rng: random.Random | None) -> Iterator[dict[str, torch.Tensor]]:
    """Left-padded batches (every answer ends at the last position, so the loss needs the head's
    logits of the last few positions only); ``labels`` are -100 outside the answer tokens and
    ``position_ids`` count real tokens, so padding changes nothing."""
    order = list(range(len(examples)))
    if rng is not None:
        rng.shuffle(order)
    for start in range(0, len(order), batch_size):
        encoded = [encode(tokenizer, examples[k].prompt, examples[k].target, max_length)
                   for k in order[start:start + batch_size]]
        width = max(len(e.prompt_ids) + len(e.answer_ids) for e in encoded)
        ids = torch.full((len(encoded), width), pad_id(tokenizer), dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for row, e in enumerate(encoded):
            seq = e.prompt_ids + e.answer_ids
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
            labels[row, width - len(e.answer_ids):] = torch.tensor(e.answer_ids)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        answer_span = max(len(e.answer_ids) for e in encoded)
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions,
               "answer_span": torch.tensor(answer_span)}


def _answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens. logits (b, n, v), labels (b, n)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                           labels[:, 1:].reshape(-1), ignore_index=-100)


def _distillation(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """T² · KL(teacher ‖ student) per token, averaged over the tokens where ``mask`` is 1."""
    log_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)
    per_token = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)  # (b, n)
    weights = mask.float()
    return temperature**2 * (per_token * weights).sum() / weights.sum().clamp(min=1)


def _ewc_penalty(model, ewc: EwcState, strength: float) -> torch.Tensor:
    total = torch.zeros((), device=next(model.parameters()).device)
    for name, parameter in trainable_parameters(model).items():
        if name in ewc.fisher:
            total = total + (ewc.fisher[name] * (parameter - ewc.anchor[name]) ** 2).sum()
    return 0.5 * strength * total


def train(model, tokenizer, examples: Sequence[Example], training: TrainingConfig, seed: int,
          description: str = "train", ewc: EwcState | None = None, teacher=None) -> float:
    """Fine-tune ``model`` in place; returns the mean loss of the last epoch. A non-finite loss
    (checked before each optimiser step) or weight raises :class:`TrainingError`."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model.train()
    params = list(trainable_parameters(model).values())
    optimizer = torch.optim.AdamW(params, lr=training.learning_rate,
                                  weight_decay=training.weight_decay)
    steps_per_epoch = -(-len(examples) // training.batch_size)
    total = steps_per_epoch * training.epochs
    if training.max_steps is not None:
        total = min(total, training.max_steps)
    bar = tqdm(total=total, desc=description, disable=not training.progress, leave=False)
    device = next(model.parameters()).device
    step, running, epoch_losses = 0, None, []
    for _ in range(training.epochs):
        epoch_losses = []
        for batch in _batches(tokenizer, examples, training.batch_size, training.max_length, rng):
            if step >= total:
                break
            batch = {key: value.to(device) for key, value in batch.items()}
            distil = teacher is not None and training.lwf_alpha > 0
            # Without distillation only the answer positions need the 49k-way head (a large share
            # of a small model's compute); answers end at the last position (left padding).
            keep = 0 if distil else int(batch["answer_span"]) + 1
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        position_ids=batch["position_ids"], logits_to_keep=keep)
            loss = _answer_loss(out.logits, batch["labels"][:, -out.logits.shape[1]:])
            if distil:
                with torch.no_grad():
                    teacher_logits = teacher(input_ids=batch["input_ids"],
                                             attention_mask=batch["attention_mask"],
                                             position_ids=batch["position_ids"]).logits
                loss = loss + training.lwf_alpha * _distillation(
                    out.logits, teacher_logits, batch["attention_mask"], training.lwf_temperature)
            if ewc is not None and training.ewc_lambda > 0:
                loss = loss + _ewc_penalty(model, ewc, training.ewc_lambda)
            value = float(loss.detach())
            if not math.isfinite(value):  # before the step: a NaN update would poison every weight
                bar.close()
                raise _diverged(description, f"the loss is {value} at step {step + 1} of {total}",
                                training)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            epoch_losses.append(value)
            running = value if running is None else 0.9 * running + 0.1 * value
            bar.set_postfix(loss=f"{running:.4f}")
            bar.update(1)
    bar.close()
    model.eval()
    broken = next((name for name, p in trainable_parameters(model).items()
                   if not bool(torch.isfinite(p).all())), None)
    if broken is not None:  # the last step can overflow a weight after a finite loss
        raise _diverged(description, f"weight {excerpt(broken, 120)} is not finite after step {step}",
                        training)
    return sum(epoch_losses) / max(len(epoch_losses), 1)


class TrainingError(RecallError):
    """Fine-tuning diverged (a non-finite loss or weight); nothing is saved for the stage."""


def _diverged(description: str, what: str, training: TrainingConfig) -> TrainingError:
    return TrainingError(
        f"training {excerpt(description, 160)} diverged: {what}; the stage was stopped and nothing "
        "was saved for it",
        f"lower training.learning_rate (now {training.learning_rate:g}) or check the task's "
        "data, then run the same command again")


def fisher_diagonal(model, tokenizer, examples: Sequence[Example], training: TrainingConfig,
                    ) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher (mean squared gradient of the answer loss, one example per
    backward pass) of the trainable parameters over the first ``ewc_samples`` examples."""
    params = trainable_parameters(model)
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    subset = list(examples)[: training.ewc_samples]
    model.eval()  # no dropout noise in the Fisher
    device = next(model.parameters()).device
    for batch in _batches(tokenizer, subset, 1, training.max_length, rng=None):
        batch = {key: value.to(device) for key, value in batch.items()}
        model.zero_grad(set_to_none=True)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        _answer_loss(out.logits, batch["labels"]).backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach() ** 2 / len(subset)
    model.zero_grad(set_to_none=True)
    return fisher


def update_ewc(model, previous: EwcState | None, fisher: dict[str, torch.Tensor]) -> EwcState:
    """Online EWC: add this task's Fisher, anchor at the current parameters."""
    total = {k: v.clone() for k, v in fisher.items()}
    if previous is not None:
        for k, v in previous.fisher.items():
            total[k] = total[k] + v if k in total else v
    anchor = {k: p.detach().clone() for k, p in trainable_parameters(model).items()}
    return EwcState(total, anchor)


def save_model(model, tokenizer, folder: Path) -> None:
    """A PEFT model saves its adapter only; a plain model saves weights and tokenizer."""
    model.to("cpu").save_pretrained(folder)
    if not hasattr(model, "peft_config"):
        tokenizer.save_pretrained(folder)


def save_merged(model, tokenizer, folder: Path) -> None:
    """Save a full HF folder; a PEFT model's adapter is merged into the weights first."""
    if hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    model.to("cpu").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
