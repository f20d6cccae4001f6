"""`recall demo`: the main job on the embedded default model.

SmolLM2-135M-Instruct learns three short real tasks one after another (a LoRA expert per task);
after every step the experts are merged with RECALL and with the classic baselines, every model
is scored on every task, and the run folder gets results.json, results.csv, plots, the merge
reports and one HTML report. Every finished stage is kept, so an interrupted demo resumes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from recall_merge.methods.default import DEFAULT_METHOD, default_parameters

# Each was checked to be learnable at the demo's budget (benchmarks/results/task_probe.json:
# word sentiment 0.82 -> 1.00, past tense 0.00 -> 0.70); CMUdict syllable counts are not (the
# expert predicts one label), nor are MultiEmo sentiment, FEVER and hyperbaton. All three ship
# in PyPI wheels, so the demo needs no BIG-bench (which PyPI stopped serving on 2026-12-05);
# `--tasks bbc bigbench:intent_recognition bigbench:tense` is the earlier default.
DEMO_TASKS = ["bbc", "lexicon:word_sentiment", "lexicon:past_tense"]
# RECALL beside the default merge (task arithmetic at the λ the benchmark chose): with the demo's
# three experts that λ is 1/(N+1), RECALL's weights where the representations do not differ, so the
# two part only where RECALL reads a difference.
DEMO_METHODS = ["recall", DEFAULT_METHOD]  # --methods adds more (each costs ~1.5 min)


def demo_config(run_dir: Path, seed: int = 0, steps: int = 30, test_items: int = 16,
                methods: list[str] | None = None,
                tasks: list[str] | None = None) -> dict[str, Any]:
    """The demo's continual config (a plain dict: `recall continual` takes the same as YAML)."""
    return {
        "model": "smollm2",
        "tasks": list(tasks or DEMO_TASKS),
        "max_train": steps * 8,
        "max_dev": 8,
        "max_test": test_items,
        "seed": seed,
        "run_dir": str(run_dir),
        # LoRA on the top 8 of 30 blocks: the backward pass stops there, which halves a step's
        # cost on a CPU, and the top blocks are where task-specific features live.
        "training": {"mode": "lora", "lora_rank": 8, "lora_alpha": 16, "top_k_blocks": 8,
                     "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                      "down_proj"],
                     "epochs": 1, "max_steps": steps, "batch_size": 8, "learning_rate": 5e-3,
                     "max_length": 96},
        "evaluation": {"batch_size": 16, "max_length": 128, "max_new_tokens": 32},
        "merge_samples": 64,
        "merge_parameters": {"recall": {"num_typical": 16, "max_length": 96},
                             "ties": {"density": 0.2, "lambda": 1.0},
                             DEFAULT_METHOD: default_parameters()},
        "strategies": ["expert", *[f"merge:{method}" for method in (methods or DEMO_METHODS)]],
    }


def print_matrices(results: dict[str, Any], stream=sys.stdout) -> None:
    """Each strategy's accuracy matrix R (rows: base, after step 1..T; columns: tasks). Columns and
    row labels are as wide as the longest name, so no task name is cut."""
    names = [task["name"].split("/")[-1] for task in results["tasks"]]
    column = max(8, *(len(name) + 2 for name in names))
    label_width = max(len(label) for label in results["rows"])
    for method, entry in results["methods"].items():
        if "R" not in entry:
            continue
        print(f"\n{method}", file=stream)
        print(f"  {'':{label_width}s}" + "".join(f"{name:>{column}s}" for name in names), file=stream)
        for label, row in zip(results["rows"], entry["R"], strict=True):
            cells = "".join(f"{'-':>{column}s}" if v is None else f"{v:{column}.3f}" for v in row)
            print(f"  {label:{label_width}s}" + cells, file=stream)


def run_demo(run_dir: Path, *, seed: int = 0, steps: int = 30, test_items: int = 16,
             methods: list[str] | None = None, tasks: list[str] | None = None,
             quiet: bool = False) -> Path:
    from recall_merge.continual.runner import print_summary, run_continual

    started = time.perf_counter()
    config = demo_config(Path(run_dir).resolve(), seed=seed, steps=steps, test_items=test_items,
                         methods=methods, tasks=tasks)
    results = run_continual(config, quiet=quiet)
    print_matrices(results)
    print()
    print_summary(results)
    report = _write_report(Path(run_dir))
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; results: {Path(run_dir) / 'results.json'}")
    print(f"report: {report}")
    return Path(run_dir)


def _write_report(run_dir: Path) -> Path:
    """Plots (PNG and SVG) and the self-contained HTML page of the run."""
    from recall_merge.reports.html import write_report
    from recall_merge.reports.plots import plot_continual_results

    results = json.loads((run_dir / "results.json").read_text())
    plot_continual_results(results, run_dir / "figures")
    return write_report(run_dir, None)
