"""Which real tasks can SmolLM2-135M-Instruct learn within the harness's short LoRA budget?

For each task: score the base on the test split, fine-tune one LoRA expert from the base with the
benchmark's training config (the one `recall demo` uses: 30 steps of 8, rank 8 on every linear
layer of the top 8 blocks, lr 5e-3), score it again. A task whose expert does not beat the base
cannot show forgetting or merging, so the sequences in ``sequences.py`` drop or replace it.

    python benchmarks/continual/probe_tasks.py bigbench:hyperbaton bbc ...   # appends to the JSON
    python benchmarks/continual/probe_tasks.py --base-only bigbench:winowhy ...  # zero-shot only
    python benchmarks/continual/probe_tasks.py --packaged   # every task of PACKAGED (docs/data.md)
    python benchmarks/continual/probe_tasks.py --sequence paper_shaped cldr:language  # its budget

``--base-only`` scores the base alone (no expert): how the zero-shot tasks of the benchmark's
generalisation check were chosen (tasks never trained on, where the base is above chance).

Writes ``benchmarks/results/task_probe.json`` (one record per task, with seed and versions).
Experts go to ``$RECALL_MERGE_CACHE/task_probe`` (never into the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "task_probe.json"
# The packaged task sources (data/packaged_tasks.py), candidates for the benchmark's sequences.
PACKAGED = ["rt:sentiment", "geo:capital", "geo:continent", "geo:city_country",
            "geo:city_continent", "geo:facts_qa", "geo:country_mc", "geo:country_choice",
            "lemma:en", "lemma:fr", "lemma:de", "lemma:es", "names:gender", "cldr:country",
            "cldr:language", "emoji:name", "emoji:name_fr", "emoji:name_de", "emoji:name_es",
            "afinn:sentiment", "afinn:sentiment_da", "wordnet:noun_category",
            "wordnet:definition_mc", "wordnet:definition_choice", "fortunes:topic"]


def sequence_budget(sequence: str | None, spec: str) -> tuple[str | dict, dict, int, str]:
    """(task spec, training overrides, evaluation max_length, model) of ``spec`` as ``sequence``
    runs it: the sequence's own spec of that task (a dict with its metric, say), its training and
    evaluation settings and its model; without a sequence, the spec as given at the shared budget
    on SmolLM2."""
    from sequences import EVALUATION, SEQUENCES, short_name

    if sequence is None:
        return spec, {}, 160, "smollm2"
    settings = SEQUENCES[sequence]
    specs = [t for t in settings["tasks"] if t == spec or short_name(t) == short_name(spec)]
    return (specs[0] if specs else spec, dict(settings.get("training", {})),
            settings.get("evaluation", {}).get("max_length", EVALUATION["max_length"]),
            settings.get("model", "smollm2"))


_BASE_SCORES: dict[tuple, tuple[float, dict]] = {}  # (task, splits, evaluation) -> base's


def probe(spec: str, seed: int, test_items: int, steps: int, lr: float | None,
          base_only: bool = False, kind: str | None = None, sequence: str | None = None,
          training_seed: int | None = None) -> dict:
    """One task's base score and, unless ``base_only``, its expert's after ``steps`` LoRA steps.
    ``seed`` draws the task's splits; ``training_seed`` (default ``seed``) the expert's
    initialisation and batch order: at a learning rate near the edge a task can learn at one
    training seed and collapse onto one label at another, so a gate can probe several."""
    training_seed = seed if training_seed is None else training_seed
    from sequences import TRAINING  # the benchmark's own training config
    from transformers import AutoTokenizer

    from recall_merge.continual.config import TrainingConfig
    from recall_merge.continual.scoring import predict_choices, score_task
    from recall_merge.continual.training import load_causal_lm, make_trainable, train
    from recall_merge.data.registry import load_task
    from recall_merge.io.packaged import resolve_model_ref

    task_spec, overrides, eval_length, model_name = sequence_budget(sequence, spec)
    base = resolve_model_ref(model_name)
    tokenizer = AutoTokenizer.from_pretrained(base)
    task = load_task(task_spec, seed=seed, n_train=max(240, 8 * steps), n_dev=8,
                     n_test=test_items, **({"kind": kind} if kind else {}))
    training = TrainingConfig(**{**TRAINING, **overrides, "max_steps": steps, "progress": False,
                                 **({"learning_rate": lr} if lr else {})})

    def evaluate(model) -> tuple[float, dict]:
        """The task's score, and how often each label is predicted (a collapse onto one label
        means the expert learned the label prior, not the task)."""
        if task.kind == "generation":
            return score_task(model, tokenizer, task, task.test, 16, eval_length, 16)["score"], {}
        predictions = predict_choices(model.eval(), tokenizer, task.test, 16, eval_length)
        hits = sum(p == ex.target for p, ex in zip(predictions, task.test, strict=True))
        return hits / len(task.test), dict(Counter(predictions))

    started = time.perf_counter()
    # the base's score depends on the splits and the evaluation, not on the training seed: one
    # evaluation serves every --training-seeds probe of the task (~1–2 min at 300 items)
    base_key = (json.dumps(task_spec, sort_keys=True, default=str), seed, test_items, kind,
                eval_length, model_name)
    if base_key not in _BASE_SCORES:
        _BASE_SCORES[base_key] = evaluate(load_causal_lm(base))
    base_score, base_predictions = _BASE_SCORES[base_key]
    majority = Counter(ex.target for ex in task.test).most_common(1)[0][1] / len(task.test) \
        if task.kind != "generation" else None
    chance = (sum(1 / len(ex.choices) for ex in task.test) / len(task.test)
              if task.kind != "generation" and all(getattr(ex, "choices", None) for ex in task.test)
              else None)
    if base_only:
        return {"task": spec, "kind": task.kind, "metric": task.metric, "num_test": len(task.test),
                "steps": 0, "learning_rate": None, "base": base_score, "chance": chance,
                "majority_class_rate": majority, "base_predictions": base_predictions,
                "eval_max_length": eval_length, "seconds": round(time.perf_counter() - started, 1),
                "seed": seed, **({"sequence": sequence, "model": model_name} if sequence else {})}
    model = make_trainable(load_causal_lm(base), training, seed=training_seed)
    loss = train(model, tokenizer, task.train, training, training_seed, description=spec)
    expert_score, expert_predictions = evaluate(model.merge_and_unload())
    return {"task": spec, "kind": task.kind, "metric": task.metric, "num_train": len(task.train),
            "num_test": len(task.test), "steps": steps, "learning_rate": training.learning_rate,
            "num_train_used": min(len(task.train), steps * training.batch_size), "final_loss": loss,
            "base": base_score, "expert": expert_score, "gain": expert_score - base_score,
            "majority_class_rate": majority, "chance": chance, "base_predictions": base_predictions,
            "expert_predictions": expert_predictions,
            "eval_max_length": eval_length, "train_max_length": training.max_length,
            "seconds": round(time.perf_counter() - started, 1), "seed": seed,
            **({"training_seed": training_seed} if training_seed != seed else {}),
            **({"sequence": sequence, "model": model_name} if sequence else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="*")
    parser.add_argument("--packaged", action="store_true", help="add every task of PACKAGED")
    parser.add_argument("--seed", type=int, default=0, help="the task's splits (and, unless "
                        "--training-seeds is given, the expert's training)")
    parser.add_argument("--training-seeds", type=int, nargs="+", default=None, metavar="N",
                        help="train one expert per seed on the same splits (is learning robust "
                        "to the training seed, or does the expert sometimes collapse?)")
    parser.add_argument("--test-items", type=int, default=40)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=None, help="default: the benchmark's")
    parser.add_argument("--base-only", action="store_true", help="score the base only (zero-shot)")
    parser.add_argument("--sequence", help="probe each task as this sequence of sequences.py runs "
                        "it: its spec of the task (metric), training and evaluation lengths, model")
    parser.add_argument("--kind", choices=["classification", "multiple_choice", "generation"],
                        help="read the tasks as this kind (e.g. classification for a task whose "
                             "text targets name one of a few labels)")
    args = parser.parse_args()
    args.tasks += PACKAGED if args.packaged else []
    if not args.tasks:
        parser.error("name at least one task, or pass --packaged")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from recall_merge.engine import versions

    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"records": []}
    training_seeds = [None] if args.base_only or not args.training_seeds else args.training_seeds
    for spec, training_seed in ((s, t) for s in args.tasks for t in training_seeds):
        record = probe(spec, args.seed, args.test_items, args.steps, args.lr, args.base_only,
                       args.kind, args.sequence, training_seed)
        if args.kind:
            record["requested_kind"] = args.kind
        print(json.dumps(record), flush=True)
        # a rerun replaces the record of the same settings; another test-set size is another
        # record (the 40-item probes of the historical benchmark stay beside the 300-item ones)
        data["records"] = [r for r in data["records"]
                           if (r["task"], r["steps"], r["seed"], r.get("training_seed"),
                               r.get("learning_rate"), r.get("requested_kind"), r["num_test"],
                               r.get("sequence"))
                           != (spec, record["steps"], args.seed, record.get("training_seed"),
                               record["learning_rate"], args.kind, record["num_test"],
                               args.sequence)]
        data["records"].append(record)
        data.update(versions=versions(), command="python benchmarks/continual/probe_tasks.py "
                    "TASK... [--steps N] [--lr LR] [--test-items N] [--seed N] [--training-seeds N...] "
                    "[--base-only] [--kind K] [--sequence S]")
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    main()
