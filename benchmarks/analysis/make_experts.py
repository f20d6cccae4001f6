"""Fine-tune short LoRA experts from SmolLM2 on real tasks, then run `recall analyze` on them.

The experts measure the two observations the RECALL paper reports (docs/recall.md) on a real
model: (1) inside one model the RBF similarity between adjacent layers drops at the first and last
layers; (2) models fine-tuned from one base diverge more and more with depth.

    python benchmarks/analysis/make_experts.py                  # train (cached) + analyze
    python benchmarks/analysis/make_experts.py --merge-report   # + a RECALL merge and its page

Adapters go to ``$RECALL_MERGE_CACHE/analysis_experts`` (never into the repository). Writes
``benchmarks/results/analysis_smollm2.json`` (the analysis numbers plus the training record) and
the figures into ``docs/figures/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# (task, optimiser steps, learning rate, max tokens): batch 8, LoRA rank 8 on q, k, v, o. On two
# shared CPU cores a step costs 10-30 s, so the later experts get shorter budgets.
PLAN = (("bbc", 60, 1e-3, 192),
        ("bigbench:intent_recognition", 30, 2e-3, 128),
        ("bigbench:multiemo/hotels_sentence_en", 30, 2e-3, 128))
TASKS = tuple(spec for spec, *_ in PLAN)
SAMPLES_TASK = "bigbench:intent_recognition"
TEST_ITEMS = 32


def _slug(spec: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in spec)


def train_expert(base: Path, spec: str, folder: Path, steps: int, lr: float, max_length: int,
                 seed: int) -> dict:
    """One LoRA expert (q, k, v, o; rank 8) on ``spec``'s train split; skipped when cached."""
    record_path = folder / "training.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    from transformers import AutoTokenizer

    from recall_merge.continual.config import TrainingConfig
    from recall_merge.continual.scoring import score_task
    from recall_merge.continual.training import load_causal_lm, make_trainable, save_model, train
    from recall_merge.data.registry import load_task

    task = load_task(spec, seed=seed, n_train=8 * steps, n_dev=8, n_test=TEST_ITEMS)
    tokenizer = AutoTokenizer.from_pretrained(base)
    training = TrainingConfig(mode="lora", max_steps=steps, batch_size=8, learning_rate=lr,
                              max_length=max_length, progress=False)
    started = time.perf_counter()
    model = make_trainable(load_causal_lm(base), training, seed=seed)
    loss = train(model, tokenizer, task.train, training, seed, description=spec)
    seconds = time.perf_counter() - started
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_model(model, tokenizer, partial)
    merged = model.merge_and_unload()
    accuracy = score_task(merged, tokenizer, task, task.test, 16, 256, 16)["score"]
    base_accuracy = score_task(load_causal_lm(base), tokenizer, task, task.test, 16, 256, 16)["score"]
    record = {"task": spec, "steps": steps, "batch_size": 8, "learning_rate": lr,
              "max_length": max_length, "lora_rank": 8,
              "lora_targets": list(training.lora_targets), "final_loss": loss,
              "train_seconds": round(seconds, 1), "test_items": len(task.test),
              "test_accuracy": accuracy, "base_test_accuracy": base_accuracy, "seed": seed}
    (partial / "training.json").write_text(json.dumps(record, indent=2))
    partial.rename(folder)
    print(json.dumps(record), flush=True)
    return record


def write_samples(spec: str, path: Path, count: int, seed: int) -> Path:
    """Test-split prompts of ``spec`` (unseen by every expert) as a .jsonl."""
    from recall_merge.data.registry import load_task

    task = load_task(spec, seed=seed, n_train=8, n_dev=8, n_test=count)
    path.write_text("".join(json.dumps({"text": p}) + "\n" for p in task.inputs("test")))
    return path


def copy_figures(analysis_dir: Path, figures: list[str], target: Path, prefix: str) -> list[str]:
    """Copy the PNG/SVG figures into ``target`` as ``prefix + name`` (for docs/analysis.md)."""
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in figures:
        shutil.copy(analysis_dir / name, target / f"{prefix}{name}")
        copied.append(f"{prefix}{name}")
    return copied


def merge_and_report(base: Path, experts: list[Path], samples: Path, folder: Path, seed: int) -> Path:
    """A RECALL merge (paper form, defaults) of base + experts, and its HTML page.

    ``samples`` are inputs of the newest task (the last expert's), as RECALL expects."""
    from recall_merge import merge
    from recall_merge.reports.html import write_report

    config = {"method": "recall", "base": str(base), "models": [str(e) for e in experts],
              "samples": str(samples), "output": str(folder), "seed": seed}
    result = merge(config, overwrite=True, quiet=True)
    return write_report(result.output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--merge-report", action="store_true",
                        help="also merge base + experts with RECALL and write its report.html")
    parser.add_argument("--figures", type=Path, default=REPO / "docs" / "figures")
    args = parser.parse_args()

    from recall_merge.io.cache import cache_dir
    from recall_merge.io.packaged import materialise_smollm2

    base = materialise_smollm2(quiet=True)
    root = cache_dir() / "analysis_experts"
    root.mkdir(parents=True, exist_ok=True)
    experts = [root / f"{_slug(spec)}-s{steps}-lr{lr:g}" for spec, steps, lr, _ in PLAN]
    training = [train_expert(base, spec, folder, steps, lr, length, args.seed)
                for (spec, steps, lr, length), folder in zip(PLAN, experts, strict=True)]
    if args.train_only:
        return

    from recall_merge.reports.analyze import run_analyze

    samples = write_samples(SAMPLES_TASK, root / "samples_intent_test.jsonl", args.num_samples, args.seed)
    output = run_analyze(models=[str(base)] + [str(e) for e in experts], samples=samples,
                         output=root / "analysis", num_samples=args.num_samples, seed=args.seed,
                         quiet=True)
    analysis = json.loads((output / "analysis.json").read_text())
    figures = copy_figures(output, analysis["figures"], args.figures, "smollm2_")
    result = {"command": "python benchmarks/analysis/make_experts.py --merge-report "
                         f"--num-samples {args.num_samples}",
              "model": "SmolLM2-135M-Instruct", "experts": training,
              "samples_task": SAMPLES_TASK, "samples_split": "test", "figures": figures,
              "analysis": analysis}
    out = REPO / "benchmarks" / "results" / "analysis_smollm2.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(out)
    if args.merge_report:
        newest = write_samples(TASKS[-1], root / "samples_newest_test.jsonl", 64, args.seed)
        print(merge_and_report(base, experts, newest, root / "recall_merge", args.seed))


if __name__ == "__main__":
    main()
