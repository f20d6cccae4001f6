"""Wall time and peak memory of RECALL's representation pass on SmolLM2-135M-Instruct, per backend:
``streamed`` (transformers' decoder, one block's weights at a time; the default), ``fast`` (the
pure-torch Llama forward over whole memory-mapped models) and ``transformers`` (one whole model).

    python benchmarks/merge_speed/representation_backends.py            # writes the JSON below

Two passes, as RECALL runs them: the newest expert over every sample (clustering), then base and
every expert over the typical samples. Each backend runs in its own process (peak RSS is per
process), ``--repeats`` times, alternating; the table keeps every run and the minimum.

At model scale, ``--shape SHAPE --case lora|full`` measures RECALL's representation pass against
the same forward run alone, on the checkpoints of scale.py (random bf16 weights with the real
config of SHAPE; lora: base + 3 LoRA experts of rank 16, full: base + 2 full experts):

    python benchmarks/merge_speed/representation_backends.py --shape smollm2-135m --case lora --case full
    python benchmarks/merge_speed/representation_backends.py --shape tinyllama-1.1b --case lora --case full
    python benchmarks/merge_speed/representation_backends.py --shape llama2-7b --case lora --case full
    python benchmarks/merge_speed/representation_backends.py --shape qwen2-7b --case lora --case full
    python benchmarks/merge_speed/representation_backends.py --docs   # rewrite docs/speed.md's table

``recall``: the planning pass of scale.py's RECALL merge (the same config: 16 typical samples of
64 tokens, the default batch size, compute dtype float32 unless ``--compute-dtype``), run by the
RECALL method itself with its default (streamed) backend; its time is that of its calls to
``states_for_all_models``. ``plain``: the same models on the same samples in the same batches
(sorted by length, the streamed pass's waves), each loaded whole with ``AutoModelForCausalLM`` and
run through its decoder with ``output_hidden_states=True`` (a LoRA expert: the base object with
base + ΔW written into its adapted weights; a full expert: its own ``from_pretrained``). Each arm
runs in its own process (wall and peak RSS from ``wait4``), alternating, ``--repeats`` times; the
best of each is kept and the pooled states of the two arms are compared. The plain forward runs
in the compute dtype where that model fits the memory available (``/proc/meminfo``), checked
from the parameter count before anything is loaded; otherwise in bfloat16 if that fits (the ratio
then says so), otherwise not at all ("does not fit", with the figures). The page cache is dropped
before each process unless ``--keep-caches``. Results: ``benchmarks/results/representation_scale.json``
(one record per shape, case and compute dtype; a new run replaces the old one) and the
representation-scale table of docs/speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[1] / "benchmarks" / "results" / "representation_backends.json"
SCALE_RESULTS = HERE.parents[1] / "benchmarks" / "results" / "representation_scale.json"
SPEED_DOC = HERE.parents[1] / "docs" / "speed.md"
sys.path.insert(0, str(HERE.parent))  # benchmarks/doc_tables.py
from doc_tables import rewrite_tables  # noqa: E402

GB = 1e9
# What a plain forward holds besides its weights and activations: the interpreter with torch and
# transformers imported (~0.5 GB), the pool's headers, one tensor converted while loading, slack.
PROCESS_OVERHEAD_BYTES = 3 * 2**29  # 1.5 GiB
BYTES_PER = {"float32": 4, "bfloat16": 2}
SHAPE_NAMES = {"smollm2-135m": "SmolLM2-135M", "tinyllama-1.1b": "TinyLlama-1.1B",
               "llama2-7b": "Llama-2-7B", "qwen2-7b": "Qwen2-7B"}

_CHILD = """
import json, sys, time
from pathlib import Path
import torch
torch.manual_seed(0)
from recall_merge.io.output import peak_rss_mb
from recall_merge.io.pool import ModelPool
from recall_merge.recall.representations import states_for_all_models
args = json.loads(sys.argv[1])
pool = ModelPool.open(args["base"], args["experts"])
texts = args["texts"]
options = dict(max_length=args["max_length"], batch_size=args["batch_size"], use_chat_template=True,
               backend=args["backend"])
started = time.perf_counter()
newest = len(args["experts"])
states_for_all_models(pool, texts, model_indices=[newest], **options)
clustering = time.perf_counter() - started
started = time.perf_counter()
states_for_all_models(pool, texts[: args["typical"]], **options)
typical = time.perf_counter() - started
print(json.dumps({"clustering_s": clustering, "typical_s": typical,
                  "peak_rss_mb": peak_rss_mb()}))
"""


# --shape: RECALL's representation pass as its merge runs it. The method's own plan() runs (the
# samples, typical ones, batch size and dtype of the merge config); its calls to
# states_for_all_models are timed and their states kept for the comparison with the plain arm.
_RECALL_CHILD = """
import json, sys, time
started = time.perf_counter()
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM  # before the clock, as in the plain arm
import recall_merge.recall.method as recall_method
from recall_merge.config import load_config
from recall_merge.io.pool import ModelPool
from recall_merge.methods.registry import get_method
args = json.loads(sys.argv[1])
config = load_config(args["config"])
torch.manual_seed(config.seed)
pool = ModelPool.open(config.base, config.models)
method = get_method("recall")(config.method_parameters(), config, pool.num_layers)
original, passes, kept = recall_method.states_for_all_models, [], {}
def timed(pool, texts, **options):
    begun = time.perf_counter()
    states = original(pool, texts, **options)
    passes.append(time.perf_counter() - begun)
    kept.update({f"pass{len(passes)}_model{k}": v.contiguous() for k, v in states.items()})
    return states
recall_method.states_for_all_models = timed
ready = time.perf_counter()
method.plan(pool, quiet=True)
plan_s = time.perf_counter() - ready
save_file(kept, args["states"])
print(json.dumps({"pass_s": sum(passes), "passes_s": passes, "plan_s": plan_s,
                  "before_pass_s": ready - started, "threads": torch.get_num_threads()}))
"""

# --shape: the same models on the same samples in the same batches, each a whole transformers
# model in memory, run through its decoder with output_hidden_states=True (the LM head's logits,
# which no pass needs, are not computed).
_PLAIN_CHILD = """
import json, sys, time
started = time.perf_counter()
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
from recall_merge.config import load_config
from recall_merge.io.pool import ModelPool
from recall_merge.recall.representations import encode, format_texts, representation_tokenizer
from recall_merge.recall.samples import read_samples
from recall_merge.recall.streamed import StreamedDecoder, waves
from recall_merge.recall.typical import select_typical
args = json.loads(sys.argv[1])
config = load_config(args["config"])
torch.manual_seed(config.seed)
params = config.method_parameters()
dtype = getattr(torch, args["dtype"])
pool = ModelPool.open(config.base, config.models)
texts = read_samples(config.samples, min_count=params.num_typical)
tokenizer = representation_tokenizer(pool.base.folder)
# the streamed pass's waves (StreamedDecoder.pass_wave, from the weightless skeleton): batch_size
# samples for a model small enough to stay loaded, else as many as the activation budget allows
skeleton = StreamedDecoder(pool.base.folder, set(pool.base.tensors), device=torch.device("cpu"))
def wave_for(count):
    return skeleton.pass_wave(count, params.max_length, params.batch_size)
cut = dict(max_length=params.max_length, truncation_side=params.truncation_side)
timings = {"load_s": 0.0, "forward_s": 0.0}
state = {"model": None, "holds": None, "dirty": set()}

def model_for(k):
    begun = time.perf_counter()
    expert = pool.experts[k - 1] if k else None
    if expert is not None and not expert.is_lora:
        state["model"] = None  # one model in memory at a time
        state["model"] = AutoModelForCausalLM.from_pretrained(expert.folder, dtype=dtype).eval()
        state["holds"] = k
    else:
        if state["holds"] != "base":
            state["model"] = None
            state["model"] = AutoModelForCausalLM.from_pretrained(pool.base.folder, dtype=dtype).eval()
            state["holds"], state["dirty"] = "base", set()
        parameters = dict(state["model"].named_parameters())
        adapter = expert.adapter if expert is not None else None
        adapted = ({n for n in [*adapter.modules, *adapter.replacements] if n in parameters}
                   if adapter is not None else set())
        with torch.no_grad():  # base + this adapter's ΔW; the last adapter's weights back to the base
            for name in adapted | state["dirty"]:
                base = pool.base.get(name)
                parameters[name].copy_(adapter.apply(name, base) if name in adapted else base)
        state["dirty"] = adapted
    timings["load_s"] += time.perf_counter() - begun
    return state["model"]

@torch.no_grad()
def pooled(model, chosen):
    framed = format_texts(tokenizer, chosen, True)
    lengths = encode(tokenizer, framed, **cut)["attention_mask"].sum(dim=1)
    order = sorted(range(len(framed)), key=lambda i: int(lengths[i]))
    chunks = []
    begun = time.perf_counter()
    for start, stop in waves(len(framed), wave_for(len(framed))):
        batch = encode(tokenizer, [framed[i] for i in order[start:stop]], **cut)
        hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             output_hidden_states=True, use_cache=False).hidden_states
        mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
        chunks.append(torch.stack([(h.to(torch.float32) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                                   for h in hidden]))
    timings["forward_s"] += time.perf_counter() - begun
    states = torch.cat(chunks, dim=1)
    result = torch.empty_like(states)
    result[:, order] = states
    return result

ready = time.perf_counter()
newest = len(pool.experts)
kept = {f"pass1_model{newest}": pooled(model_for(newest), texts)}
chosen = select_typical(kept[f"pass1_model{newest}"][params.cluster_layer], params.num_typical,
                        seed=config.seed, selection=params.selection)
for k in range(newest):
    kept[f"pass2_model{k}"] = pooled(model_for(k), [texts[i] for i in chosen])
pass_s = time.perf_counter() - ready
save_file(kept, args["states"])
print(json.dumps({"pass_s": pass_s, **timings, "before_pass_s": ready - started,
                  "waves": [wave_for(len(texts)), wave_for(len(chosen))],
                  "threads": torch.get_num_threads()}))
"""


def meminfo_available_bytes(text: str) -> int | None:
    """MemAvailable of a /proc/meminfo text, in bytes (None without that line)."""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def available_memory_bytes() -> int | None:
    """The memory the kernel could give a new process now without swapping."""
    try:
        return meminfo_available_bytes(Path("/proc/meminfo").read_text())
    except OSError:
        return None


def plain_forward_plan(parameters: int, compute_dtype: str, available: int | None,
                       activation_bytes: int = 0) -> dict:
    """Which dtype the plain forward runs in: the merge's compute dtype where one whole model in it
    (its weights, the activations, PROCESS_OVERHEAD_BYTES) fits ``available`` bytes, else bfloat16
    where that fits, else none. Each dtype tried is listed with what it needs."""
    tried = []
    for dtype in dict.fromkeys([compute_dtype, "bfloat16"]):
        need = parameters * BYTES_PER[dtype] + activation_bytes + PROCESS_OVERHEAD_BYTES
        fits = available is None or need <= available
        tried.append({"dtype": dtype, "weights_gb": parameters * BYTES_PER[dtype] / GB,
                      "need_gb": need / GB, "fits": fits})
        if fits:
            break
    chosen = next((entry["dtype"] for entry in tried if entry["fits"]), None)
    return {"parameters": parameters, "available_gb": None if available is None else available / GB,
            "tried": tried, "dtype": chosen, "same_dtype_as_recall": chosen == compute_dtype}


def activation_bytes(config: dict, tokens: int, batch: int) -> int:
    """A wave's activations in float32, the streamed pass's estimate (StreamedDecoder.wave_size),
    plus every layer's hidden states, which output_hidden_states keeps until the wave ends."""
    hidden, intermediate = config["hidden_size"], config["intermediate_size"]
    per_sample = 4 * tokens * (8 * hidden + 3 * intermediate + config["num_attention_heads"] * tokens)
    return batch * (per_sample + 4 * tokens * hidden * (config["num_hidden_layers"] + 1))


def _best(runs: list[dict], arm: str) -> dict | None:
    mine = [run for run in runs if run["arm"] == arm]
    if not mine:
        return None
    return {key: min(run[key] for run in mine) for key in ("wall_s", "peak_rss_mb", "pass_s")}


def _states_difference(recall_states: Path, plain_states: Path) -> dict:
    from safetensors.torch import load_file

    ours, theirs = load_file(recall_states), load_file(plain_states)
    if set(ours) != set(theirs):
        raise RuntimeError(f"the two arms ran different passes: {sorted(ours)} vs {sorted(theirs)}")
    worst = max(float((ours[key] - theirs[key]).abs().max()) for key in ours)
    scale = max(float(theirs[key].abs().max()) for key in theirs)
    return {"max_abs_diff": worst, "max_abs_state": scale, "passes": sorted(ours)}


def scale_record(shape: str, case: str, args: argparse.Namespace, root: Path) -> dict:
    """RECALL's pass and the plain forward on SHAPE/CASE, alternating, ``args.repeats`` times."""
    import math

    import scale
    from run import drop_caches, measure

    from recall_merge.provenance import versions

    load_at_start = os.getloadavg()
    started = time.perf_counter()
    base, experts = scale.scale_inputs(root, shape, case)
    made_s = time.perf_counter() - started
    config = scale.SHAPES[shape]
    samples = scale.scale_samples(root, scale.TYPICAL)
    work = root / shape / f"representations_{case}"
    work.mkdir(parents=True, exist_ok=True)
    merge_config = scale.recall_config(base, experts, samples, work / "merged", typical=scale.TYPICAL,
                                       tokens=scale.TOKENS, compute_dtype=args.compute_dtype)
    from recall_merge.recall.method import RecallParameters

    batch_size = RecallParameters(**merge_config["parameters"]).batch_size
    parameters = sum(math.prod(s) for _, s, _ in scale.tensor_plan(config))
    memory = plain_forward_plan(parameters, args.compute_dtype, available_memory_bytes(),
                                activation_bytes(config, scale.TOKENS, batch_size))
    arms = {"recall": (_RECALL_CHILD, args.compute_dtype)}
    if memory["dtype"] is not None:
        arms["plain"] = (_PLAIN_CHILD, memory["dtype"])
    runs = []
    for repeat in range(args.repeats):
        for arm, (child, dtype) in arms.items():
            payload = {"config": merge_config, "dtype": dtype, "states": str(work / f"{arm}.safetensors")}
            if not args.keep_caches:
                drop_caches()
            measured = measure([sys.executable, "-c", child, json.dumps(payload)], env={"HF_HUB_OFFLINE": "1"})
            record = json.loads(measured.pop("stdout").strip().splitlines()[-1])
            record.update(measured, arm=arm, dtype=dtype, repeat=repeat)
            runs.append(record)
            print(json.dumps(record), flush=True)
    best = {arm: _best(runs, arm) for arm in ("recall", "plain")}
    ratios = None
    difference = None
    if best["plain"] is not None:
        ratios = {"wall": best["recall"]["wall_s"] / best["plain"]["wall_s"],
                  "pass": best["recall"]["pass_s"] / best["plain"]["pass_s"],
                  "peak_rss": best["recall"]["peak_rss_mb"] / best["plain"]["peak_rss_mb"]}
        difference = _states_difference(work / "recall.safetensors", work / "plain.safetensors")
    shutil.rmtree(work, ignore_errors=True)
    return {
        "shape": shape, "case": case, "experts": len(experts), "parameters": parameters,
        "model_bf16_gb": sum(f.stat().st_size for f in base.glob("*.safetensors")) / GB,
        "inputs_made_s": made_s, "compute_dtype": args.compute_dtype,
        "samples": scale.TYPICAL, "typical": scale.TYPICAL, "tokens": scale.TOKENS,
        "batch_size": batch_size, "device": "cpu", "repeats": args.repeats,
        "page_cache": "kept" if args.keep_caches else "dropped before each process",
        "threads": runs[0]["threads"], "plain_memory": memory, "runs": runs, "best": best,
        "ratios": ratios, "states": difference,
        "load_average": {"start": load_at_start, "end": os.getloadavg()},
        "machine": {"cpus": os.cpu_count(), "memory_gb": _total_memory_gb()},
        "versions": versions(), "seed": merge_config["seed"],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/merge_speed/representation_backends.py " + " ".join(sys.argv[1:]),
    }


def _total_memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return None


def scale_main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE))  # scale.py and run.py (measure, drop_caches)
    import scale

    unknown = sorted(set(args.shape) - set(scale.SHAPES))
    if unknown:
        sys.exit(f"unknown shape {unknown[0]!r}: one of {', '.join(sorted(scale.SHAPES))}")
    output = args.output or SCALE_RESULTS
    root = scale.scale_root()
    for shape in args.shape:
        for case in args.case:
            record = scale_record(shape, case, args, root)
            document = json.loads(output.read_text()) if output.exists() else {"records": []}
            key = (shape, case, args.compute_dtype)
            document["records"] = [r for r in document["records"]
                                   if (r["shape"], r["case"], r["compute_dtype"]) != key] + [record]
            document["records"].sort(key=lambda r: (list(SHAPE_NAMES).index(r["shape"]), r["case"] != "lora",
                                                    r["compute_dtype"]))
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(document, indent=2) + "\n")
            print(json.dumps({"shape": shape, "case": case, "ratios": record["ratios"], "best": record["best"]}),
                  flush=True)
        if not args.keep_inputs:
            shutil.rmtree(root / shape, ignore_errors=True)
    if output == SCALE_RESULTS:
        print("rewrote", rewrite_tables(SPEED_DOC, {"representation-scale": lambda: scale_table(
            json.loads(SCALE_RESULTS.read_text()))}))


def _plain_cell(record: dict) -> str:
    memory, best = record["plain_memory"], record["best"]["plain"]
    if best is None:
        needs = ", ".join(f"{t['dtype']} needs {t['need_gb']:.1f} GB" for t in memory["tried"])
        return f"does not fit ({needs}; {memory['available_gb']:.1f} GB available)"
    cell = f"{best['wall_s']:.1f} s / {best['peak_rss_mb'] / 1000:.2f} GB"
    if not memory["same_dtype_as_recall"]:
        refused = memory["tried"][0]
        cell += (f" in {memory['dtype']} ({refused['dtype']} does not fit: needs {refused['need_gb']:.1f} GB, "
                 f"{memory['available_gb']:.1f} GB available)")
    return cell


def scale_table(document: dict) -> str:
    """The representation-scale table of docs/speed.md, every figure from representation_scale.json."""
    header = ("| shape | case | pass | RECALL's pass (streamed): wall / peak RSS | plain forward: wall / peak RSS "
              "| RECALL / plain: wall (pass alone) | states max \\|diff\\| | threads, load average, page cache |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for record in document["records"]:
        ours, ratios, states = record["best"]["recall"], record["ratios"], record["states"]
        models = record["experts"] + 1
        load = record["load_average"]
        case = f"base + {record['experts']} {'LoRA' if record['case'] == 'lora' else 'full'}"
        cells = [SHAPE_NAMES.get(record["shape"], record["shape"]), case,
                 f"{models} models × {record['samples']} samples × {record['tokens']} tokens, "
                 f"{record['compute_dtype']}",
                 f"{ours['wall_s']:.1f} s / {ours['peak_rss_mb'] / 1000:.2f} GB", _plain_cell(record),
                 "—" if ratios is None else f"{ratios['wall']:.2f} ({ratios['pass']:.2f})",
                 "—" if states is None else f"{states['max_abs_diff']:.1e}" if states["max_abs_diff"] else "0",
                 f"{record['threads']}, {load['start'][0]:.1f} → {load['end'][0]:.1f}, "
                 f"{'warm' if record['page_cache'] == 'kept' else 'dropped'}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--typical", type=int, default=20, help="typical samples (--shape: 16, as scale.py)")
    parser.add_argument("--max-length", type=int, default=96, help="tokens per sample (--shape: 64, as scale.py)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, help=f"default: {RESULTS.name}, or {SCALE_RESULTS.name} with --shape")
    parser.add_argument("--shape", action="append", help="a shape of scale.py: RECALL's pass against the plain "
                        "forward on its checkpoints (smollm2-135m, tinyllama-1.1b, llama2-7b, qwen2-7b)")
    parser.add_argument("--case", choices=["lora", "full"], action="append")
    parser.add_argument("--compute-dtype", choices=sorted(BYTES_PER), default="float32",
                        help="--shape: the merge's compute_dtype")
    parser.add_argument("--keep-caches", action="store_true", help="--shape: do not drop the page cache")
    parser.add_argument("--keep-inputs", action="store_true", help="--shape: keep the generated checkpoints")
    parser.add_argument("--docs", action="store_true", help=f"rewrite docs/speed.md's table from {SCALE_RESULTS.name}")
    args = parser.parse_args()
    if args.docs:
        print(rewrite_tables(SPEED_DOC, {"representation-scale": lambda: scale_table(
            json.loads(SCALE_RESULTS.read_text()))}))
        return
    if args.shape or args.case:
        if not (args.shape and args.case):
            parser.error("--shape and --case go together")
        scale_main(args)
        return
    args.output = args.output or RESULTS

    from recall_merge.data.registry import load_task
    from recall_merge.io.cache import cache_dir
    from recall_merge.io.packaged import materialise_smollm2
    from recall_merge.provenance import versions
    from recall_merge.testing import make_tiny_lora

    base = materialise_smollm2(quiet=True)
    experts = []
    for seed in (1, 2):
        folder = cache_dir() / "benchmark_inputs" / f"smollm2_lora_{seed}"
        if not (folder / "adapter_config.json").exists():
            make_tiny_lora(folder, base, seed=seed, rank=8, scale=0.02,
                           target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                           "up_proj", "down_proj"))
        experts.append(str(folder))
    texts = load_task("bbc", seed=0, n_train=args.samples, n_dev=0, n_test=1).inputs("train")[: args.samples]
    runs = []
    for repeat in range(args.repeats):
        for backend in ("streamed", "fast", "transformers"):
            payload = {"base": str(base), "experts": experts, "texts": texts, "typical": args.typical,
                       "max_length": args.max_length, "batch_size": args.batch_size, "backend": backend}
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(payload)], capture_output=True,
                                  text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            record = json.loads(done.stdout.strip().splitlines()[-1])
            record.update(backend=backend, repeat=repeat, process_s=time.perf_counter() - started)
            runs.append(record)
            print(json.dumps(record), flush=True)
    best = {}
    for backend in ("streamed", "fast", "transformers"):
        mine = [run for run in runs if run["backend"] == backend]
        best[backend] = {key: min(run[key] for run in mine)
                         for key in ("clustering_s", "typical_s", "peak_rss_mb", "process_s")}
    document = {"command": "python benchmarks/merge_speed/representation_backends.py "
                + " ".join(sys.argv[1:]),
                "settings": {"model": "SmolLM2-135M-Instruct", "experts": "2 LoRA adapters, rank 8, every "
                             "linear layer (random, seeded)", "samples": args.samples,
                             "typical": args.typical, "max_length": args.max_length,
                             "batch_size": args.batch_size, "repeats": args.repeats},
                "seed": 0, "machine": {"cpus": os.cpu_count()}, "versions": versions(),
                "load_average_at_end": os.getloadavg(), "runs": runs, "best": best}
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(best, indent=2))


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
