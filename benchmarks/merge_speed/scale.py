"""RECALL at model scale on this machine: random-weight checkpoints with real model configs.

    python benchmarks/merge_speed/scale.py --shape llama2-7b --case lora     # base + 3 LoRA experts
    python benchmarks/merge_speed/scale.py --shape llama2-7b --case full     # base + 2 full experts
    python benchmarks/merge_speed/scale.py --shape tinyllama-1.1b --case full --shape ...  (curve)
    python benchmarks/merge_speed/scale.py --shape tinyllama-1.1b --case lora --device cuda \
        --compare-device cpu --results OUT.json                          # benchmarks/gpu_check.sh

Checkpoints (synthetic, seeded) are written into the cache (``$RECALL_MERGE_CACHE/scale_inputs``),
bfloat16 safetensors in hub-sized shards (≤ 5 GB), with the shape's real ``config.json`` and a tiny
BPE tokenizer (its ids fit every vocabulary). Full experts are the base plus seeded noise; LoRA
experts have rank-16 adapters on every linear layer of every block. Each merge runs in its own
process; wall time and peak RSS come from ``wait4``, the stages from ``recall_report.json``, the
disk floor from reading every input once and writing one model's worth of bytes. Results append
to ``benchmarks/results/merge_scale.json`` (or ``--results``).

``--device`` / ``--compute-dtype`` set the merge's ``device`` and ``compute_dtype`` (one merge per
compute dtype given). ``--compare-device D`` merges once more on D in float32 and compares every
output tensor with it: the largest |difference| per tensor must stay within
``TOLERANCE[compute dtype]`` of the tensor's largest |weight| (the output is bfloat16, so a weight
whose float32 value moved by ~1e-6 may round one bfloat16 step the other way), and RECALL's
weights within ``ALPHA_TOLERANCE``; the command exits 1 when they do not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import FLOOR_SCRIPT, drop_caches, measure  # noqa: E402

RESULTS = HERE.parent / "results" / "merge_scale.json"
# Largest |difference| from the float32 reference merge, as a share of a tensor's largest |weight|:
# one bfloat16 rounding step (2^-7) for float32 arithmetic, ~six (2^-6 after the bf16 inputs and
# sums) for bfloat16 arithmetic (tests/test_compute_placement.py measures 0.0084 on tiny models).
TOLERANCE = {"float32": 2.0**-7, "bfloat16": 2.0**-6}
# RECALL's weights α: float32 forwards on two devices agree to ~1e-6; a bfloat16 forward moves the
# hidden states, hence α, more (5e-4 on SmolLM2-135M's shape, 30 blocks, on the CPU)
ALPHA_TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-2}

# The configs of the published models (hidden sizes, depths, heads, vocabularies).
SHAPES: dict[str, dict] = {
    "smollm2-135m": dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=576,
                         intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, rms_norm_eps=1e-5,
                         rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=8192),
    "tinyllama-1.1b": dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=2048,
                           intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, vocab_size=32000, rms_norm_eps=1e-5,
                           rope_theta=10000.0, tie_word_embeddings=False, max_position_embeddings=2048),
    "llama2-7b": dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096,
                      intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=False, max_position_embeddings=4096),
    "qwen2-7b": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=3584,
                     intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064, rms_norm_eps=1e-6,
                     rope_theta=1000000.0, tie_word_embeddings=False, max_position_embeddings=32768,
                     use_sliding_window=False),
}
# The merge's samples: as many as typical ones, each cut to TOKENS tokens.
TYPICAL, TOKENS = 16, 64
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tensor_plan(config: dict) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, shape, is_bias) of every tensor, in the order transformers saves them."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = hidden // heads
    qwen = config["model_type"] == "qwen2"
    plan: list[tuple[str, tuple[int, ...], bool]] = [("model.embed_tokens.weight",
                                                      (config["vocab_size"], hidden), False)]
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        shapes = {"q_proj": (heads * head_dim, hidden), "k_proj": (kv_heads * head_dim, hidden),
                  "v_proj": (kv_heads * head_dim, hidden), "o_proj": (hidden, heads * head_dim)}
        for proj, shape in shapes.items():
            plan.append((f"{prefix}self_attn.{proj}.weight", shape, False))
            if qwen and proj != "o_proj":
                plan.append((f"{prefix}self_attn.{proj}.bias", (shape[0],), True))
        plan += [(f"{prefix}mlp.gate_proj.weight", (inter, hidden), False),
                 (f"{prefix}mlp.up_proj.weight", (inter, hidden), False),
                 (f"{prefix}mlp.down_proj.weight", (hidden, inter), False),
                 (f"{prefix}input_layernorm.weight", (hidden,), True),
                 (f"{prefix}post_attention_layernorm.weight", (hidden,), True)]
    plan.append(("model.norm.weight", (hidden,), True))
    if not config["tie_word_embeddings"]:
        plan.append(("lm_head.weight", (config["vocab_size"], hidden), False))
    return plan


def _random(shape: tuple[int, ...], is_norm: bool, generator: torch.Generator) -> torch.Tensor:
    if is_norm:
        return torch.ones(shape) + 0.01 * torch.randn(shape, generator=generator)
    fan_in = shape[-1]
    return torch.randn(shape, generator=generator) / math.sqrt(fan_in)


def write_model(folder: Path, config: dict, tokenizer_from: Path, seed: int,
                noise_from: Path | None = None) -> Path:
    """A bf16 checkpoint in ≤ 5 GB shards, one tensor in memory at a time."""
    from recall_merge.io.reader import Checkpoint
    from recall_merge.io.writer import StreamingShardWriter

    if (folder / "config.json").exists():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    plan = tensor_plan(config)
    writer = StreamingShardWriter(partial, [(n, torch.bfloat16, s) for n, s, _ in plan], 5 * 10**9)
    generator = torch.Generator().manual_seed(seed)
    source = Checkpoint(noise_from) if noise_from is not None else None
    order = [name for shard in writer.shards for name in shard.names]
    shapes = {name: (shape, is_norm) for name, shape, is_norm in plan}
    for name in order:
        shape, is_norm = shapes[name]
        if source is None:
            tensor = _random(shape, is_norm, generator)
        else:  # an expert: the base plus noise at ~1 % of a weight's scale
            tensor = source.get(name).float() + 0.01 * _random(shape, False, generator) * (not is_norm)
        writer.write(name, tensor.to(torch.bfloat16))
        del tensor
    writer.finish()
    (partial / "config.json").write_text(json.dumps({**config, "torch_dtype": "bfloat16"}, indent=2))
    for extra in tokenizer_from.iterdir():
        if extra.name.startswith("tokenizer") or extra.name in ("chat_template.jinja", "special_tokens_map.json"):
            shutil.copy(extra, partial / extra.name)
    partial.rename(folder)
    return folder


def write_lora(folder: Path, config: dict, seed: int, rank: int = 16) -> Path:
    from safetensors.torch import save_file

    if (folder / "adapter_config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape, is_norm in tensor_plan(config):
        module = name.rsplit(".", 1)[0]
        if is_norm or module.rsplit(".", 1)[-1] not in LINEAR:
            continue
        out_features, in_features = shape
        key = f"base_model.model.{module}"
        tensors[f"{key}.lora_A.weight"] = (torch.randn(rank, in_features, generator=generator)
                                           / math.sqrt(in_features))
        tensors[f"{key}.lora_B.weight"] = 0.01 * torch.randn(out_features, rank, generator=generator)
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(LINEAR),
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "task_type": "CAUSAL_LM"}))
    return folder


def scale_root() -> Path:
    """Where the checkpoints, the tiny tokenizer and the samples live (in the cache)."""
    from recall_merge.io.cache import cache_dir
    from recall_merge.testing import make_tiny_tokenizer

    root = cache_dir() / "scale_inputs"
    tokenizer = root / "tokenizer"
    if not (tokenizer / "tokenizer.json").exists():
        tokenizer.mkdir(parents=True, exist_ok=True)
        make_tiny_tokenizer(tokenizer)
    return root


def scale_samples(root: Path, typical: int) -> Path:
    """As many samples as typical ones (RECALL's K-means then keeps them all), each long enough to
    fill TOKENS tokens of the tiny tokenizer: the pass is ``typical`` × ``--tokens`` per model."""
    from recall_merge.testing import write_samples

    sentence = "the team won the final match and parliament passed the budget bill "
    return write_samples(root / "samples.jsonl", [f"{k}: " + sentence * 6 for k in range(typical)])


def shape_config(shape: str, layers: int | None = None) -> dict:
    """SHAPE's config; ``layers``: cut to that many blocks (scale.py --layers, a memory probe)."""
    return SHAPES[shape] if layers is None else {**SHAPES[shape], "num_hidden_layers": layers}


def scale_inputs(root: Path, shape: str, case: str,
                 layers: int | None = None) -> tuple[Path, list[Path]]:
    """The base and the experts of SHAPE and CASE (lora: 3 adapters, full: 2 full experts),
    written once into ``root``; ``layers``: the shape cut to that many blocks."""
    config = shape_config(shape, layers)
    folder = root / (shape if layers is None else f"{shape}-{layers}blocks")
    base = write_model(folder / "base", config, root / "tokenizer", seed=0)
    if case == "full":
        return base, [write_model(folder / f"full{k}", config, root / "tokenizer", seed=k,
                                  noise_from=base) for k in (1, 2)]
    return base, [write_lora(folder / f"lora{k}", config, seed=k) for k in (1, 2, 3)]


def recall_config(base: Path, experts: list[Path], samples: Path, output: Path, *, typical: int,
                  tokens: int, device: str = "cpu", compute_dtype: str = "float32") -> dict:
    """The RECALL merge config of this benchmark (representation_backends.py --shape runs the
    same one's representation pass)."""
    return {"method": "recall", "base": str(base), "models": [str(e) for e in experts],
            "samples": str(samples), "output": str(output), "seed": 0, "dtype": "bfloat16",
            "device": device, "compute_dtype": compute_dtype,
            "parameters": {"num_typical": typical, "max_length": tokens}}


def merge_with(work: Path, base: Path, experts: list[Path], samples: Path, args: argparse.Namespace,
               device: str, compute_dtype: str, output: Path) -> dict:
    """One RECALL merge in its own process (page cache dropped first): wall time and peak RSS."""
    merge_config = recall_config(base, experts, samples, output, typical=args.typical,
                                 tokens=args.tokens, device=device, compute_dtype=compute_dtype)
    config_path = work / f"{output.name}.yaml"
    config_path.write_text(json.dumps(merge_config))
    drop_caches()
    return measure([sys.executable, "-m", "recall_merge.cli", "merge", str(config_path), "--quiet"],
                   env={"HF_HUB_OFFLINE": "1"})


def compare_outputs(folder: Path, reference: Path) -> dict:
    """Every tensor of two merge outputs, one at a time: the largest |difference| and its share
    of the tensor's largest |weight|, and the largest difference of RECALL's weights α."""
    from safetensors import safe_open

    worst = {"max_abs_diff": 0.0, "max_share_of_tensor_max": 0.0, "tensor": None}
    for shard in sorted(reference.glob("*.safetensors")):
        with safe_open(shard, "pt") as ours_ref, safe_open(folder / shard.name, "pt") as ours:
            for name in ours_ref.keys():
                expected = ours_ref.get_tensor(name).float()
                got = ours.get_tensor(name).float()
                difference = float((got - expected).abs().max()) if expected.numel() else 0.0
                share = difference / max(float(expected.abs().max()), 1e-30) if expected.numel() else 0.0
                if share > worst["max_share_of_tensor_max"]:
                    worst.update(max_share_of_tensor_max=share, tensor=name)
                worst["max_abs_diff"] = max(worst["max_abs_diff"], difference)
    alphas = [json.loads((path / "recall_report.json").read_text())["layers"] for path in (folder, reference)]
    worst["max_alpha_diff"] = max(abs(a - b) for ours, theirs in zip(*alphas, strict=True)
                                  for a, b in zip(ours["alpha"], theirs["alpha"], strict=True))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), action="append", required=True)
    parser.add_argument("--case", choices=["lora", "full"], action="append", required=True)
    parser.add_argument("--typical", type=int, default=TYPICAL)
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument("--keep-inputs", action="store_true", help="keep the generated checkpoints")
    parser.add_argument("--device", default="cpu", help="the merge's device (cpu, cuda, cuda:N, auto)")
    parser.add_argument("--compute-dtype", choices=sorted(TOLERANCE), action="append",
                        help="the merge's compute_dtype; given twice, one merge each (default float32)")
    parser.add_argument("--compare-device", help="also merge on this device in float32 and compare")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"JSON to append to ({RESULTS})")
    parser.add_argument("--label", help="a note kept in each record (which code, which change)")
    parser.add_argument("--layers", type=int, help="a memory probe: the shape with only this many "
                        "blocks (what peak RSS does not grow with depth is per-model or per-tensor)")
    args = parser.parse_args()
    compute_dtypes = args.compute_dtype or ["float32"]
    failures = []

    from recall_merge.provenance import versions

    root = scale_root()
    samples = scale_samples(root, args.typical)
    document = json.loads(args.results.read_text()) if args.results.exists() else {"runs": []}
    for shape in args.shape:
        config = shape_config(shape, args.layers)
        for case in args.case:
            started = time.perf_counter()
            base, experts = scale_inputs(root, shape, case, args.layers)
            made_s = time.perf_counter() - started
            work = base.parent / f"work_{case}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            drop_caches()
            floor = measure([sys.executable, "-c", FLOOR_SCRIPT, str(work / "floor.bin"), str(base),
                             *[str(e) for e in experts if case == "full"]])
            floor.update(json.loads(floor.pop("stdout").strip().splitlines()[-1]))
            (work / "floor.bin").unlink()
            reference = None
            if args.compare_device:
                reference = work / "reference"
                compared = merge_with(work, base, experts, samples, args, args.compare_device,
                                      "float32", reference)
            for compute_dtype in compute_dtypes:
                output = work / f"merged_{compute_dtype}"
                merged = merge_with(work, base, experts, samples, args, args.device, compute_dtype,
                                    output)
                report = json.loads((output / "recall_report.json").read_text())
                timings = report["run"]["timings"]
                model_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
                record = {
                    "shape": shape, "case": case, "experts": len(experts),
                    "blocks": config["num_hidden_layers"],
                    "parameters": sum(math.prod(s) for _, s, _ in tensor_plan(config)),
                    "model_bf16_gb": model_bytes / 1e9, "inputs_made_s": made_s,
                    "disk_floor_s": floor["total_s"], "wall_s": merged["wall_s"],
                    "peak_rss_mb": merged["peak_rss_mb"],
                    "peak_rss_after_planning_mb": report["run"]["peak_rss_mb"]["after_planning"],
                    "plan_s": timings.get("plan_s"), "merge_s": timings.get("merge_s"),
                    "merge_stage_over_floor": timings.get("merge_s", 0) / floor["total_s"],
                    "planning_timings": {k: v for k, v in timings.items()
                                         if k not in ("plan_s", "merge_s")},
                    "device": report["config"]["device"], "compute_dtype": compute_dtype,
                    "compute": report.get("compute"),
                    "typical": args.typical, "tokens": args.tokens,
                    "load_average": os.getloadavg(), "versions": versions(), "seed": 0,
                    "command": "python benchmarks/merge_speed/scale.py " + " ".join(sys.argv[1:]),
                    **({"label": args.label} if args.label else {}),
                }
                if reference is not None:
                    difference = compare_outputs(output, reference)
                    within = (difference["max_share_of_tensor_max"] <= TOLERANCE[compute_dtype]
                              and difference["max_alpha_diff"] <= ALPHA_TOLERANCE[compute_dtype])
                    record["comparison"] = {
                        "reference_device": args.compare_device, "reference_compute_dtype": "float32",
                        "reference_wall_s": compared["wall_s"], **difference,
                        "tolerance_share": TOLERANCE[compute_dtype],
                        "alpha_tolerance": ALPHA_TOLERANCE[compute_dtype], "within_tolerance": within}
                    if not within:
                        failures.append(f"{shape} {case} {compute_dtype}: {difference}")
                print(json.dumps(record), flush=True)
                document["runs"].append(record)
                args.results.parent.mkdir(parents=True, exist_ok=True)
                args.results.write_text(json.dumps(document, indent=2) + "\n")
            shutil.rmtree(work, ignore_errors=True)
        if not args.keep_inputs:
            shutil.rmtree(base.parent, ignore_errors=True)
    if failures:
        sys.exit("outside the tolerance: " + "; ".join(failures))


if __name__ == "__main__":
    main()
