"""Merge speed and memory: recall-merge vs mergekit-yaml on the same inputs, plus the disk floor.

Every measurement runs in its own subprocess under `/usr/bin/time`-style accounting (wall time
and peak RSS from os.wait4), in one invocation of this script, so all numbers share a machine
state. Inputs are SmolLM2-135M-Instruct plus N seeded perturbations of it (fp32, ~540 MB each),
and optionally one synthetic Llama checkpoint of ≥ 2 GB.

    python benchmarks/merge_speed/run.py --counts 2 4 8 --big
    python benchmarks/merge_speed/run.py --docs       # rewrite docs/speed.md's tables from the JSONs

With ``--methods`` naming other methods than the mergekit comparison's (linear and RECALL), the
run measures those methods instead, on the same inputs, next to task arithmetic and the disk floor
of the same run, and writes ``merge_speed_methods.json``; ``--blocks K`` cuts the inputs to their
first K blocks, for methods too slow for the whole model (a full-model cost is then projected):

    python benchmarks/merge_speed/run.py --methods tsv_m iso_c --counts 2
    python benchmarks/merge_speed/run.py --methods wudi dop --counts 2 --blocks 1 --append
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "merge_speed.json"
METHODS_RESULTS = HERE.parent / "results" / "merge_speed_methods.json"
SPEED_DOC = HERE.parents[1] / "docs" / "speed.md"
sys.path.insert(0, str(HERE.parent))  # benchmarks/doc_tables.py
from doc_tables import replace_table  # noqa: E402

# The mergekit comparison (merge_speed.json): any other --methods is a methods run.
COMPARISON_METHODS = ["linear", "recall"]
# Every methods run measures this one too, so each method is read against a merge of the same run.
REFERENCE_METHOD = "task_arithmetic"
# A row of a methods run: a method of the registry with its defaults, or a name of this table for
# a method with the options a benchmark needs (DELLA drops nothing at its mergekit default density
# 1; WUDI without the embedding splits its cost into the blocks' share and the embedding's).
ROWS = {
    "della": ("della", {"density": 0.5, "epsilon": 0.1}),
    "della_linear": ("della_linear", {"density": 0.5, "epsilon": 0.1}),
    "wudi_no_embed": ("wudi", {"exclude": ["model.embed_tokens.weight"]}),
}
# A row whose method also works outside the blocks (WUDI optimises the 49,152 × 576 embedding), and
# the row that leaves that out: on a cut model their difference is the cost paid once, not per block.
BLOCKS_ONLY = {"wudi": "wudi_no_embed"}
EXACTLY_ONE_EXPERT = {"slerp"}  # rows run only where N = 1; every other new method only where N ≥ 2


# A child's ru_maxrss also holds the peak RSS of the process it was spawned from: exec records
# the old address space's high-water mark, and a vfork/posix_spawn child's old address space is
# its parent's. A driver that imported torch or generated a checkpoint (scale.py) would lend its
# own peak to every tool it measures (a 2-block Qwen2 merge read 4,460 MB that way; 1,885 MB is
# its own). So each tool starts from this small launcher, which forks it from a fresh interpreter
# and reports its rusage: the tool's peak alone.
LAUNCHER = r"""
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"ru_maxrss": usage.ru_maxrss}, out)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(command: list[str], env: dict | None = None) -> dict:
    """Wall time and peak RSS (MB) of a subprocess, from wait4's rusage in LAUNCHER (the wall time
    includes the launcher's start, ~20 ms)."""
    with tempfile.TemporaryDirectory() as scratch:
        usage_file = Path(scratch) / "usage.json"
        started = time.perf_counter()
        process = subprocess.run([sys.executable, "-c", LAUNCHER, str(usage_file), *command],
                                 capture_output=True, env={**os.environ, **(env or {})}, check=False)
        wall = time.perf_counter() - started
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr.decode()[-3000:]}")
        peak_kb = json.loads(usage_file.read_text())["ru_maxrss"]
    return {"wall_s": wall, "peak_rss_mb": peak_kb / 1024, "stdout": process.stdout.decode()[-2000:]}


def drop_caches() -> None:
    """Best effort: flush the page cache so no tool profits from another's reads."""
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


FLOOR_SCRIPT = r"""
import sys, time, json
from pathlib import Path
paths = [Path(p) for p in sys.argv[2:]]
out = Path(sys.argv[1])
started = time.perf_counter()
buf = bytearray(64 * 2**20)
total = 0
for folder in paths:
    for file in sorted(folder.glob('*.safetensors')):
        with open(file, 'rb', buffering=0) as handle:
            while n := handle.readinto(buf):
                total += n
read_s = time.perf_counter() - started
first = sorted(paths[0].glob('*.safetensors'))
with open(out, 'wb') as sink:
    for file in first:
        with open(file, 'rb', buffering=0) as handle:
            while n := handle.readinto(buf):
                sink.write(memoryview(buf)[:n])
    sink.flush()
print(json.dumps({"read_s": read_s, "total_s": time.perf_counter() - started, "bytes_read": total}))
"""


def disk_floor(base: Path, experts: list[Path], work: Path) -> dict:
    drop_caches()
    floor = measure([sys.executable, "-c", FLOOR_SCRIPT, str(work / "floor.bin"), str(base), *map(str, experts)])
    floor.update(json.loads(floor.pop("stdout").strip().splitlines()[-1]))
    (work / "floor.bin").unlink()
    return floor


def merge_run(row: str, method: str, parameters: dict, base: Path, experts: list[Path], work: Path,
              samples: Path) -> dict:
    """One `recall merge` in its own process: wall and peak RSS, plan and merge stages from its report."""
    output = work / f"out-{row}"
    config = {"method": method, "base": str(base), "models": [str(e) for e in experts],
              "output": str(output), "seed": 0, "dtype": "float32", "parameters": parameters}
    if method == "recall":
        config["samples"] = str(samples)
    path = work / f"{row}.yaml"
    path.write_text(yaml.safe_dump(config))
    drop_caches()
    run = measure([sys.executable, "-m", "recall_merge.cli", "merge", str(path), "--quiet", "--overwrite"])
    report = json.loads((output / "recall_report.json").read_text())
    run["merge_stage_s"] = report["run"]["timings"]["merge_s"]
    run["plan_s"] = report["run"]["timings"]["plan_s"]
    run.pop("stdout")
    shutil.rmtree(output)
    return run


def run_case(label: str, base: Path, experts: list[Path], work: Path, samples: Path,
             methods: list[str]) -> dict:
    results: dict = {"label": label, "num_models": len(experts) + 1}
    floor = results["disk_floor"] = disk_floor(base, experts, work)
    for method in methods:
        if method == "recall":
            parameters = {"num_typical": 8}
        else:  # the same merge mergekit does: base and experts averaged with equal weights
            parameters = {"include_base": True}
        results[f"recall_merge_{method}"] = merge_run(method, method, parameters, base, experts, work, samples)
    # mergekit's linear over the same models (base included, equal weights), CPU, no lazy pickle
    mk_config = {"merge_method": "linear", "dtype": "float32",
                 "models": [{"model": str(m), "parameters": {"weight": 1.0}} for m in [base, *experts]]}
    mk_path = work / "mergekit.yaml"
    mk_path.write_text(yaml.safe_dump(mk_config))
    mk_out = work / "out-mergekit"
    drop_caches()
    mergekit = shutil.which("mergekit-yaml") or "mergekit-yaml"
    run = measure([mergekit, str(mk_path), str(mk_out), "--copy-tokenizer", "--allow-crimes", "--out-shard-size", "2B"],
                  env={"HF_HUB_OFFLINE": "1"})
    run.pop("stdout")
    results["mergekit_linear"] = run
    shutil.rmtree(mk_out, ignore_errors=True)
    ours, theirs = results["recall_merge_linear"], results["mergekit_linear"]
    results["ratios"] = {
        "our_linear_wall_over_mergekit": ours["wall_s"] / theirs["wall_s"],
        "our_linear_merge_stage_over_disk_floor": ours["merge_stage_s"] / floor["total_s"],
        "our_peak_rss_over_mergekit": ours["peak_rss_mb"] / theirs["peak_rss_mb"],
    }
    if "recall_merge_recall" in results:
        results["ratios"]["our_recall_wall_over_mergekit_linear"] = (
            results["recall_merge_recall"]["wall_s"] / theirs["wall_s"])
    return results


def runs_at(method: str, count: int) -> bool:
    """Whether a row of a methods run is measured with ``count`` experts."""
    return (method in EXACTLY_ONE_EXPERT) == (count == 1)


def run_methods_case(label: str, base: Path, experts: list[Path], work: Path, samples: Path, rows: list[str],
                     blocks: int | None, full_blocks: int) -> dict:
    """The disk floor, task arithmetic and each row that runs with this many experts, on the same inputs."""
    results: dict = {"label": label, "num_models": len(experts) + 1, "blocks": blocks, "full_blocks": full_blocks,
                     "disk_floor": disk_floor(base, experts, work), "rows": {}}
    for row in [REFERENCE_METHOD, *(r for r in rows if r != REFERENCE_METHOD)]:
        method, parameters = ROWS.get(row, (row, {}))
        if row != REFERENCE_METHOD and not runs_at(method, len(experts)):
            continue
        print(f"  {row}", flush=True)
        run = merge_run(row, method, parameters, base, experts, work, samples)
        results["rows"][row] = {"method": method, "parameters": parameters, **run}
        print(f"    wall {run['wall_s']:.1f} s, merge stage {run['merge_stage_s']:.1f} s, "
              f"peak RSS {run['peak_rss_mb']:.0f} MB", flush=True)
    return results


def projection(document: dict, case: dict, row: str, field: str) -> float | None:
    """A full-model ``field`` (wall_s or merge_stage_s) of ``row`` from a case cut to its first K blocks:
    task arithmetic's on the full model (same N, any run of the document) plus L blocks at the row's
    per-block excess over task arithmetic, plus, for a row in BLOCKS_ONLY, its cost outside the
    blocks, once. None for a whole-model case, without a full-model task arithmetic, or for a row of
    BLOCKS_ONLY measured without its blocks-only twin."""
    full = [c for c in document["cases"]
            if c["blocks"] is None and c["num_models"] == case["num_models"] and REFERENCE_METHOD in c["rows"]]
    if not full or case["blocks"] is None:
        return None
    rows = case["rows"]
    blocks_only = BLOCKS_ONLY.get(row, row)
    if blocks_only not in rows:  # the cost outside the blocks cannot be told apart
        return None
    per_block = (rows[blocks_only][field] - rows[REFERENCE_METHOD][field]) / case["blocks"]
    outside_blocks = rows[row][field] - rows[blocks_only][field]
    return full[-1]["rows"][REFERENCE_METHOD][field] + case["full_blocks"] * per_block + outside_blocks


def methods_table(document: dict) -> str:
    """The methods table of docs/speed.md: every row of merge_speed_methods.json, read against task
    arithmetic and the disk floor of its own case."""
    header = ("| models | method | wall | plan | merge stage | peak RSS | wall / task arithmetic "
              "| merge stage / disk floor | projected full model: wall / merge stage |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for case in document["cases"]:
        shape = "SmolLM2" if case["blocks"] is None else f"SmolLM2 cut to {case['blocks']} of {case['full_blocks']} blocks"
        reference, floor = case["rows"][REFERENCE_METHOD], case["disk_floor"]["total_s"]
        for row, run in case["rows"].items():
            wall, stage = projection(document, case, row, "wall_s"), projection(document, case, row, "merge_stage_s")
            projected = "" if row == REFERENCE_METHOD or wall is None else f"{wall / 60:.1f} min / {stage / 60:.1f} min"
            cells = [f"{case['num_models']} × {shape} (floor {floor:.1f} s)", f"`{row}`", f"{run['wall_s']:.1f} s", f"{run['plan_s']:.1f} s",
                     f"{run['merge_stage_s']:.1f} s", f"{run['peak_rss_mb']:.0f} MB",
                     f"{run['wall_s'] / reference['wall_s']:.2f}", f"{run['merge_stage_s'] / floor:.2f}", projected]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def conditions(paused: list[int]) -> dict:
    """The machine's load and the state of the processes the caller paused (``T``: stopped)."""
    def state(pid: int) -> str:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            return stat[stat.rindex(")") + 2]
        except (OSError, ValueError):
            return "gone"
    return {"loadavg": list(os.getloadavg()), "paused_pids_state": {str(pid): state(pid) for pid in paused}}


def truncated(folder: Path, work: Path, blocks: int) -> Path:
    out = work / f"{folder.name}-{blocks}blocks"
    subprocess.run([sys.executable, str(HERE / "make_inputs.py"), "truncate", str(out), str(folder), str(blocks)],
                   check=True)
    return out


def speed_table(document: dict) -> str:
    """The speed table of docs/speed.md, every figure read from the benchmark's JSON."""
    header = ("| models | disk floor | ours linear: wall / merge stage / peak RSS | mergekit linear: wall / peak RSS "
              "| linear wall ratio | merge stage / floor | RSS ratio | RECALL full merge: wall (plan) / peak RSS "
              "| RECALL wall / mergekit linear |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for case in document["cases"]:
        floor, ours, theirs = case["disk_floor"], case["recall_merge_linear"], case["mergekit_linear"]
        ratios, recall = case["ratios"], case.get("recall_merge_recall")
        label = case["label"].replace("smollm2 x", "").replace("synthetic 2.1 GB x", "")
        kind = "SmolLM2" if case["label"].startswith("smollm2") else "2.1 GB synthetic"
        cells = [f"{label} × {kind}", f"{floor['total_s']:.1f} s",
                 f"{ours['wall_s']:.1f} s / {ours['merge_stage_s']:.1f} s / {ours['peak_rss_mb']:.0f} MB",
                 f"{theirs['wall_s']:.1f} s / {theirs['peak_rss_mb']:.0f} MB",
                 f"{ratios['our_linear_wall_over_mergekit']:.2f}",
                 f"{ratios['our_linear_merge_stage_over_disk_floor']:.2f}",
                 f"{ratios['our_peak_rss_over_mergekit']:.2f}",
                 f"{recall['wall_s']:.1f} s ({recall['plan_s']:.1f} s) / {recall['peak_rss_mb']:.0f} MB" if recall else "",
                 f"{ratios['our_recall_wall_over_mergekit_linear']:.2f}" if recall else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_docs(page: Path, document: dict, methods_document: dict | None = None) -> None:
    """Replace the text between the speed-table markers of ``page`` with the generated table, and
    that between the speed-methods-table markers with the methods table (when given)."""
    text = replace_table(page.read_text(encoding="utf-8"), "speed", speed_table(document))
    if text is None:
        raise SystemExit(f"{page} has no <!-- speed-table --> ... <!-- /speed-table --> markers")
    if methods_document is not None:
        text = replace_table(text, "speed-methods", methods_table(methods_document))
        if text is None:
            raise SystemExit(f"{page} has no <!-- speed-methods-table --> ... <!-- /speed-methods-table --> markers")
    page.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[2, 4, 8], help="experts per merge (N)")
    parser.add_argument("--big", action="store_true", help="also a synthetic ≥2 GB checkpoint pair")
    parser.add_argument("--methods", nargs="+", default=COMPARISON_METHODS,
                        help="recall-merge methods to measure (default: linear and RECALL against mergekit); any "
                             f"other set is a methods run, next to {REFERENCE_METHOD}, written to "
                             f"{METHODS_RESULTS.name}; rows with options of their own: {', '.join(ROWS)}")
    parser.add_argument("--blocks", type=int, help="methods run: cut the inputs to their first BLOCKS blocks")
    parser.add_argument("--append", action="store_true",
                        help="methods run: keep the cases of --output that this run does not measure again")
    parser.add_argument("--paused-pids", type=int, nargs="*", default=[],
                        help="processes the caller stopped (kill -STOP) for the run: their state is recorded")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "recall-merge-speed")
    parser.add_argument("--output", type=Path, help=f"default: {RESULTS.name}, or {METHODS_RESULTS.name} "
                                                    "for a methods run")
    parser.add_argument("--docs", "--readme", dest="docs", action="store_true",
                        help="rewrite the tables in docs/speed.md from the JSONs and exit")
    args = parser.parse_args()
    methods_run = not set(args.methods) <= set(COMPARISON_METHODS)
    output = args.output or (METHODS_RESULTS if methods_run else RESULTS)
    if args.docs:
        update_docs(SPEED_DOC, json.loads((args.output or RESULTS).read_text()),
                    json.loads(METHODS_RESULTS.read_text()) if METHODS_RESULTS.exists() else None)
        return
    if not methods_run and (args.blocks or args.append or "linear" not in args.methods):
        parser.error("the mergekit comparison measures linear, on whole models: --blocks and --append are "
                     "for a methods run (--methods with any method but linear and recall)")
    if methods_run and args.big:
        parser.error("--big is the mergekit comparison's synthetic pair: leave it out of a methods run")
    os.environ["HF_HUB_OFFLINE"] = "1"
    started = conditions(args.paused_pids)

    base = Path(subprocess.run([sys.executable, "-m", "recall_merge.cli", "cache", "smollm2"], check=True,
                               capture_output=True, text=True).stdout.strip().splitlines()[-1])
    args.work.mkdir(parents=True, exist_ok=True)
    samples = args.work / "samples.jsonl"
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from recall_merge.testing "
                    "import write_samples; write_samples(Path(sys.argv[1]))", str(samples)], check=True)
    maker = str(HERE / "make_inputs.py")
    subprocess.run([sys.executable, maker, "experts", str(args.work / "experts"), str(base),
                    str(max(args.counts))], check=True)
    experts = [args.work / "experts" / f"expert{k}" for k in range(max(args.counts))]
    full_blocks = json.loads((base / "config.json").read_text())["num_hidden_layers"]
    if args.blocks:
        base, experts = truncated(base, args.work, args.blocks), [truncated(e, args.work, args.blocks) for e in experts]
    cases = []
    for count in args.counts:
        print(f"N = {count} experts + base", flush=True)
        if methods_run:
            label = f"smollm2 x{count + 1}" + (f" [{args.blocks} blocks]" if args.blocks else "")
            cases.append(run_methods_case(label, base, experts[:count], args.work, samples, args.methods,
                                          args.blocks, full_blocks))
        else:
            cases.append(run_case(f"smollm2 x{count + 1}", base, experts[:count], args.work, samples, args.methods))
            print(json.dumps(cases[-1]["ratios"]), flush=True)
    if args.big and not methods_run:
        subprocess.run([sys.executable, maker, "big", str(args.work)], check=True)
        big_base, big_expert = args.work / "big_base", args.work / "big_expert"
        cases.append(run_case("synthetic 2.1 GB x2", big_base, [big_expert], args.work, samples, ["linear"]))
        print(json.dumps(cases[-1]["ratios"]), flush=True)
    from importlib.metadata import version

    measured_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    command = "python benchmarks/merge_speed/run.py " + " ".join(sys.argv[1:])
    document = {"benchmark": "merge_speed", "measured_at": measured_at, "command": command,
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "versions": {name: version(name) for name in ("recall-merge", "torch", "mergekit", "safetensors")},
                "driver_note": "each tool runs in its own subprocess of a driver that never imports torch, so "
                               "peak RSS (wait4 ru_maxrss) is the tool's own",
                "cases": cases}
    if methods_run:
        # One record per invocation (an --append run adds one); each case names the run that measured it.
        run = {"measured_at": measured_at, "command": command, "counts": args.counts,
               "paused_pids": args.paused_pids, "at_start": started, "at_end": conditions(args.paused_pids)}
        earlier = json.loads(output.read_text()) if args.append and output.exists() else {"runs": [], "cases": []}
        document["benchmark"] = "merge_speed_methods"
        document["runs"] = [*earlier["runs"], run]
        for case in cases:
            case["run"] = len(document["runs"]) - 1
        measured = {case["label"] for case in cases}
        document["cases"] = [c for c in earlier["cases"] if c["label"] not in measured] + cases
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
