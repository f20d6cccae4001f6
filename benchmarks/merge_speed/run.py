"""Merge speed and memory: recall-merge vs mergekit-yaml on the same inputs, plus the disk floor.

Every measurement runs in its own subprocess under `/usr/bin/time`-style accounting (wall time
and peak RSS from os.wait4), in one invocation of this script, so all numbers share a machine
state. Inputs are SmolLM2-135M-Instruct plus N seeded perturbations of it (fp32, ~540 MB each),
and optionally one synthetic Llama checkpoint of ≥ 2 GB.

    python benchmarks/merge_speed/run.py --counts 2 4 8 --big
    python benchmarks/merge_speed/run.py --docs       # rewrite docs/speed.md's table from the JSON
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
SPEED_DOC = HERE.parents[1] / "docs" / "speed.md"
sys.path.insert(0, str(HERE.parent))  # benchmarks/doc_tables.py
from doc_tables import replace_table  # noqa: E402


def measure(command: list[str], env: dict | None = None) -> dict:
    """Wall time and peak RSS (MB) of a subprocess, from wait4's rusage."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stdout, stderr = process.communicate()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr.decode()[-3000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": stdout.decode()[-2000:]}


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


def run_case(label: str, base: Path, experts: list[Path], work: Path, samples: Path,
             methods: list[str]) -> dict:
    results: dict = {"label": label, "num_models": len(experts) + 1}
    drop_caches()
    floor = measure([sys.executable, "-c", FLOOR_SCRIPT, str(work / "floor.bin"), str(base), *map(str, experts)])
    floor.update(json.loads(floor.pop("stdout").strip().splitlines()[-1]))
    (work / "floor.bin").unlink()
    results["disk_floor"] = floor
    for method in methods:
        output = work / f"out-{method}"
        config = {"method": method, "base": str(base), "models": [str(e) for e in experts],
                  "output": str(output), "seed": 0, "dtype": "float32"}
        if method == "recall":
            config["samples"] = str(samples)
            config["parameters"] = {"num_typical": 8}
        else:  # the same merge mergekit does: base and experts averaged with equal weights
            config["parameters"] = {"include_base": True}
        path = work / f"{method}.yaml"
        path.write_text(yaml.safe_dump(config))
        drop_caches()
        run = measure([sys.executable, "-m", "recall_merge.cli", "merge", str(path), "--quiet", "--overwrite"])
        report = json.loads((output / "recall_report.json").read_text())
        run["merge_stage_s"] = report["run"]["timings"]["merge_s"]
        run["plan_s"] = report["run"]["timings"]["plan_s"]
        run.pop("stdout")
        results[f"recall_merge_{method}"] = run
        shutil.rmtree(output)
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


def update_docs(page: Path, document: dict) -> None:
    """Replace the text between the speed-table markers of ``page`` with the generated table."""
    text = replace_table(page.read_text(encoding="utf-8"), "speed", speed_table(document))
    if text is None:
        raise SystemExit(f"{page} has no <!-- speed-table --> ... <!-- /speed-table --> markers")
    page.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[2, 4, 8], help="experts per merge (N)")
    parser.add_argument("--big", action="store_true", help="also a synthetic ≥2 GB checkpoint pair")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "recall-merge-speed")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--docs", "--readme", dest="docs", action="store_true",
                        help="rewrite the table in docs/speed.md from --output and exit")
    args = parser.parse_args()
    if args.docs:
        update_docs(SPEED_DOC, json.loads(args.output.read_text()))
        return
    os.environ["HF_HUB_OFFLINE"] = "1"

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
    cases = []
    for count in args.counts:
        print(f"N = {count} experts + base", flush=True)
        cases.append(run_case(f"smollm2 x{count + 1}", base, experts[:count], args.work, samples,
                              ["linear", "recall"]))
        print(json.dumps(cases[-1]["ratios"]), flush=True)
    if args.big:
        subprocess.run([sys.executable, maker, "big", str(args.work)], check=True)
        big_base, big_expert = args.work / "big_base", args.work / "big_expert"
        cases.append(run_case("synthetic 2.1 GB x2", big_base, [big_expert], args.work, samples, ["linear"]))
        print(json.dumps(cases[-1]["ratios"]), flush=True)
    from importlib.metadata import version

    document = {"benchmark": "merge_speed", "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": "python benchmarks/merge_speed/run.py " + " ".join(sys.argv[1:]),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "versions": {name: version(name) for name in ("recall-merge", "torch", "mergekit", "safetensors")},
                "driver_note": "each tool runs in its own subprocess of a driver that never imports torch, so "
                               "peak RSS (wait4 ru_maxrss) is the tool's own",
                "cases": cases}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
