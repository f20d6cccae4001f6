"""The RECALL merge engine on tiny random Llama checkpoints (synthetic; no network)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recall_merge import merge
from recall_merge.cli import main as cli_main
from recall_merge.io.lora import LoraAdapter
from recall_merge.io.pool import tensor_position
from recall_merge.io.reader import Checkpoint
from recall_merge.testing import make_tiny_llama


def _state(folder: Path) -> dict[str, torch.Tensor]:
    checkpoint = Checkpoint(folder)
    return {name: checkpoint.get(name).clone() for name in checkpoint.tensors}


def _recall_config(tiny, models, output, **parameters) -> dict:
    return {"method": "recall", "base": str(tiny["base"]), "models": [str(m) for m in models],
            "samples": str(tiny["samples"]), "output": str(output), "seed": 0,
            "parameters": {"num_typical": 4, **parameters}}


def _expected(alpha: list[float], tensors: list[torch.Tensor]) -> torch.Tensor:
    return sum(a * t for a, t in zip(alpha, tensors, strict=True))


def test_identical_models_return_the_same_weights_with_uniform_alpha(tiny_models, tmp_path):
    copies = []
    for k in range(2):
        copy = tmp_path / f"copy{k}"
        shutil.copytree(tiny_models["base"], copy)
        copies.append(copy)
    result = merge(_recall_config(tiny_models, copies, tmp_path / "out"), quiet=True)
    for layer in result.report["layers"]:
        assert layer["alpha"] == pytest.approx([1 / 3] * 3, abs=1e-12)
        assert layer["similarity"] == pytest.approx([1.0, 1.0, 1.0])
    base, merged = _state(tiny_models["base"]), _state(result.output)
    assert base.keys() == merged.keys()
    for name in base:
        assert (base[name] - merged[name]).abs().max() <= 1e-6, name


def test_every_tensor_is_the_alpha_weighted_sum(tiny_models, tmp_path):
    experts = [tiny_models["e1"], tiny_models["e2"], tiny_models["e3"]]
    result = merge(_recall_config(tiny_models, experts, tmp_path / "out"), quiet=True)
    report = json.loads((result.output / "recall_report.json").read_text())
    states = [_state(tiny_models["base"])] + [_state(e) for e in experts]
    merged = _state(result.output)
    num_layers = report["num_layers"]
    for name, tensor in merged.items():
        position = tensor_position(name, num_layers)
        if position.kind == "block":
            alpha = report["layers"][position.layer]["alpha"]
        elif position.kind == "embedding":
            alpha = report["layers"][0]["alpha"]
            assert alpha == report["embedding_alpha"]
        else:
            alpha = report["layers"][-1]["alpha"]
            assert alpha == report["head_alpha"]
        expected = _expected(alpha, [s[name] for s in states])
        assert (tensor - expected).abs().max() <= 1e-5, name
    for layer in report["layers"]:
        assert sum(layer["alpha"]) == pytest.approx(1.0, abs=1e-9)
        assert len(layer["alpha"]) == 4 and len(layer["similarity"]) == 4
        assert layer["similarity"][3] == pytest.approx(1.0)  # M_N with itself
        assert layer["bandwidth"] > 0
    assert len(report["typical_samples"]) == 4
    assert all({"index", "text"} <= set(s) for s in report["typical_samples"])
    assert report["seed"] == 0 and "torch" in report["versions"]
    assert {"plan_s", "merge_s", "total_s"} <= set(report["run"]["timings"])
    assert report["run"]["peak_rss_mb"]["total"] > 0


def test_tiny_temperature_concentrates_alpha_on_the_newest_model(tiny_models, tmp_path):
    experts = [tiny_models["e1"], tiny_models["e2"]]
    result = merge(_recall_config(tiny_models, experts, tmp_path / "out", temperature=1e-4), quiet=True)
    for layer in result.report["layers"]:
        assert layer["alpha"][-1] > 0.99


def test_same_seed_gives_a_bit_identical_report_and_tensors(tiny_models, tmp_path):
    experts = [tiny_models["e1"], tiny_models["e2"]]
    config = _recall_config(tiny_models, experts, tmp_path / "out")
    first = merge(config, quiet=True)
    first_report = (first.output / "recall_report.json").read_text()
    first_bytes = (first.output / "model.safetensors").read_bytes()
    second = merge(config, quiet=True, overwrite=True)
    second_report = json.loads((second.output / "recall_report.json").read_text())
    first_report = json.loads(first_report)
    first_report.pop("run"), second_report.pop("run")
    assert json.dumps(first_report, sort_keys=True) == json.dumps(second_report, sort_keys=True)
    assert (second.output / "model.safetensors").read_bytes() == first_bytes


def test_lora_experts_merge_their_dense_deltas(tiny_models, tiny_loras, tmp_path):
    adapters = [tiny_loras["l1"], tiny_loras["l2"]]
    result = merge(_recall_config(tiny_models, adapters, tmp_path / "out"), quiet=True)
    assert result.report["model_kinds"] == ["base", "lora", "lora"]
    base_checkpoint = Checkpoint(tiny_models["base"])
    base = _state(tiny_models["base"])
    expert_states = []
    for folder in adapters:
        adapter = LoraAdapter(folder, base_checkpoint)
        expert_states.append({name: adapter.apply(name, tensor) for name, tensor in base.items()})
    merged = _state(result.output)
    touched = 0
    for name, tensor in merged.items():
        position = tensor_position(name, result.report["num_layers"])
        layer = position.layer if position.kind == "block" else (0 if position.kind == "embedding" else -1)
        alpha = result.report["layers"][layer]["alpha"]
        expected = _expected(alpha, [base[name]] + [s[name] for s in expert_states])
        assert (tensor - expected).abs().max() <= 1e-5, name
        touched += int((tensor - base[name]).abs().max() > 1e-4)
    assert touched >= 4  # q_proj and v_proj of both blocks moved


def test_lora_delta_equals_peft_merge(tiny_models, tiny_loras):
    """B·A·scale from our reader equals what peft's merge_and_unload writes into the weight."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_models["base"], dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, tiny_loras["l1"]).merge_and_unload().state_dict()
    base_checkpoint = Checkpoint(tiny_models["base"])
    adapter = LoraAdapter(tiny_loras["l1"], base_checkpoint)
    for name in adapter.modules:
        ours = adapter.apply(name, base_checkpoint.get(name))
        assert (ours - merged[name]).abs().max() <= 1e-6, name


def test_lora_delta_made_in_row_blocks_is_the_whole_product_bit_for_bit(tiny_models, tiny_loras,
                                                                          monkeypatch):
    """ΔW is made a few rows of float64 at a time (memory); every byte equals the single float64
    product rounded once, and base + ΔW (made in place) equals the out-of-place sum."""
    import recall_merge.io.lora as lora

    base_checkpoint = Checkpoint(tiny_models["base"])
    adapter = LoraAdapter(tiny_loras["l1"], base_checkpoint)
    monkeypatch.setattr(lora, "DELTA_CHUNK_BYTES", 8 * 3)  # rows of ≤ 3 numbers: many blocks
    for name in adapter.modules:
        a_key, b_key = adapter.modules[name]
        b = adapter._get(b_key).to(torch.float64)
        a = adapter._get(a_key).to(torch.float64)
        whole = ((b @ a) * adapter._scale(name, a.shape[0])).to(torch.float32)
        assert torch.equal(adapter.delta(name), whole), name
        base = base_checkpoint.get(name)
        assert torch.equal(adapter.apply(name, base), base.to(torch.float32) + whole), name


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_rank_combination_in_row_blocks_is_the_whole_tensor_arithmetic(out_dtype, monkeypatch):
    """The factor merge goes through product, rounding, base and cast a few rows at a time (cache);
    every byte equals doing each step on the whole tensor: the float64 product rounded once to
    float32, plus the float32 base times its coefficient, cast to the output dtype. Synthetic
    tensors; the base in bfloat16 as a checkpoint file holds it."""
    import recall_merge.io.lora as lora

    generator = torch.Generator().manual_seed(0)
    base = torch.randn(37, 23, generator=generator).to(torch.bfloat16)
    terms = [(coefficient, torch.randn(37, rank, generator=generator, dtype=torch.float64) * 0.1,
              torch.randn(rank, 23, generator=generator, dtype=torch.float64) * 0.1)
             for coefficient, rank in [(0.3, 4), (-0.7, 2), (1.25, 3)]]
    left = torch.cat([coefficient * b for coefficient, b, _ in terms], dim=1)
    right = torch.cat([a for _, _, a in terms], dim=0)
    whole = (left @ right).to(torch.float32).add_(base.to(torch.float32), alpha=1.5).to(out_dtype)
    assert torch.equal(lora.low_rank_combination(base, 1.5, terms, out_dtype), whole)
    monkeypatch.setattr(lora, "DELTA_CHUNK_BYTES", 8 * 23 * 5)  # row blocks of 5: the last short
    blocked = lora.low_rank_combination(base, 1.5, terms, out_dtype)
    assert blocked.dtype == out_dtype and torch.equal(blocked, whole)
    assert torch.equal(lora.low_rank_combination(base, 1.5, [], out_dtype),
                       (base.to(torch.float32) * 1.5).to(out_dtype))


@pytest.mark.parametrize("variant", ["paper", "task_vector", "ties"])
def test_a_linear_merge_of_lora_experts_is_made_from_their_factors(variant, tiny_models, tiny_loras,
                                                                     tmp_path, monkeypatch):
    """RECALL's paper and task-vector forms are linear in the models: with LoRA experts the engine
    merges each adapted tensor from the factors in one product (no expert tensor is rebuilt), and
    the result equals the rebuilt experts' merge to float32 rounding, in any row blocks bit for
    bit. The TIES form is not linear and rebuilds the experts."""
    import recall_merge.engine as engine
    from recall_merge.recall.method import RecallMethod

    calls = []
    combine = engine.low_rank_combination
    monkeypatch.setattr(engine, "low_rank_combination",
                        lambda *args: calls.append(1) or combine(*args))
    adapters = [tiny_loras["l1"], tiny_loras["l2"]]

    def run(label: str, **extra) -> dict[str, torch.Tensor]:
        config = _recall_config(tiny_models, adapters, tmp_path / label)
        config["parameters"]["variant"] = variant
        config.update(extra)
        return _state(merge(config, quiet=True).output)

    from_factors = run("factors")
    assert bool(calls) == (variant != "ties")
    in_blocks = run("blocks", block_size="64B")  # every matrix cut into many row blocks
    for name, tensor in from_factors.items():
        assert torch.equal(tensor, in_blocks[name]), name
    monkeypatch.setattr(RecallMethod, "linear_coefficients", lambda self, position: None)
    rebuilt = run("rebuilt")
    for name, tensor in from_factors.items():
        torch.testing.assert_close(tensor, rebuilt[name], rtol=1e-6, atol=1e-7, msg=name)


def test_lora_representations_equal_the_merged_full_model(tiny_models, tiny_loras, tmp_path):
    """The shared-base LoRA pass sees exactly the weights of the expert merged into a full model."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    from recall_merge.io.pool import ModelPool
    from recall_merge.recall.representations import states_for_all_models

    model = LlamaForCausalLM.from_pretrained(tiny_models["base"], dtype=torch.float32)
    full = tmp_path / "full"
    PeftModel.from_pretrained(model, tiny_loras["l1"]).merge_and_unload().save_pretrained(full)
    shutil.copy(tiny_models["base"] / "tokenizer.json", full)
    shutil.copy(tiny_models["base"] / "tokenizer_config.json", full)
    texts = ["the cat sat on the mat", "play some jazz music"]
    options = dict(max_length=32, batch_size=2, use_chat_template=True)
    lora = states_for_all_models(ModelPool.open(tiny_models["base"], [tiny_loras["l1"]]), texts, **options)
    dense = states_for_all_models(ModelPool.open(tiny_models["base"], [full]), texts, **options)
    assert torch.allclose(lora[1], dense[1], atol=1e-5)
    assert torch.equal(lora[0], dense[0])


def test_sharded_input_and_sharded_output_load_with_transformers(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    sharded = make_tiny_llama(tmp_path / "sharded", seed=7, tokenizer_from=tiny_models["base"],
                              perturb_from=tiny_models["base"], max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").exists()
    config = _recall_config(tiny_models, [tiny_models["e1"], sharded], tmp_path / "out")
    config["shard_size"] = "150KB"
    result = merge(config, quiet=True)
    index = json.loads((result.output / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3
    loaded = {}
    for shard in shards:
        loaded.update(load_file(result.output / shard))
    assert loaded.keys() == _state(tiny_models["base"]).keys()
    model = AutoModelForCausalLM.from_pretrained(result.output)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded[name]), name
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                 "chat_template.jinja"):
        assert (result.output / name).exists(), name


def test_output_dtype_and_config_follow_the_requested_dtype(tiny_models, tmp_path):
    config = _recall_config(tiny_models, [tiny_models["e1"]], tmp_path / "out")
    config["dtype"] = "bfloat16"
    result = merge(config, quiet=True)
    tensors = load_file(result.output / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert json.loads((result.output / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_cli_merge_writes_output_and_refuses_to_overwrite(tiny_models, tmp_path, capsys):
    import yaml

    config_path = tmp_path / "merge.yaml"
    config_path.write_text(yaml.safe_dump(_recall_config(tiny_models, [tiny_models["e1"]], tmp_path / "out")))
    assert cli_main(["merge", str(config_path), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(summary["output"]).is_dir()
    assert cli_main(["merge", str(config_path), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["merge", str(config_path), "--quiet", "--overwrite"]) == 0
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert leftovers == []


@pytest.mark.parametrize("variant", ["task_vector", "ties"])
def test_task_vector_variants_with_uniform_alpha_equal_task_arithmetic_and_ties(variant, tiny_models, tmp_path):
    """With τ → ∞ (uniform α) the task-vector variants reduce to the classic methods exactly."""
    experts = [tiny_models["e1"], tiny_models["e2"]]
    recall = merge(_recall_config(tiny_models, experts, tmp_path / "recall", variant=variant,
                                  temperature=1e9, scale=0.7, density=0.3), quiet=True)
    classic_method = "task_arithmetic" if variant == "task_vector" else "ties"
    parameters = {"lambda": 0.7} if variant == "task_vector" else {"lambda": 0.7, "density": 0.3}
    classic = merge({"method": classic_method, "base": str(tiny_models["base"]),
                     "models": [str(e) for e in experts], "output": str(tmp_path / "classic"),
                     "parameters": parameters}, quiet=True)
    ours, theirs = _state(recall.output), _state(classic.output)
    for name in ours:
        assert (ours[name] - theirs[name]).abs().max() <= 1e-5, name


def test_newest_share_and_standardize_shape_the_weights():
    from recall_merge.recall.method import mean_expert_agreement, weights_from_row

    row = torch.tensor([0.90, 0.95, 1.0], dtype=torch.float64)
    shared = weights_from_row(row, 1.0, newest_share=0.5)
    assert shared[-1] == pytest.approx(0.5) and shared.sum() == pytest.approx(1.0)
    assert shared[1] > shared[0]  # the more similar old model gets more of the rest
    plain = weights_from_row(row, 1.0)
    standardized = weights_from_row(row, 1.0, standardize=True)
    assert standardized[-1] > plain[-1]  # z-scores spread tiny differences out
    similarity = torch.tensor([[1.0, 0.5, 0.4], [0.5, 1.0, 0.8], [0.4, 0.8, 1.0]], dtype=torch.float64)
    assert mean_expert_agreement(similarity) == pytest.approx(0.8)


def test_agreement_strength_averages_to_one_and_is_reported(tiny_models, tmp_path):
    experts = [tiny_models["e1"], tiny_models["e2"]]
    result = merge(_recall_config(tiny_models, experts, tmp_path / "out", variant="task_vector",
                                  strength="agreement", similarity_space="shifts"), quiet=True)
    strengths = [layer["strength"] for layer in result.report["layers"]]
    assert sum(strengths) / len(strengths) == pytest.approx(1.0)


def test_redundancy_strength_averages_copies_and_sums_orthogonal_shifts():
    """Synthetic shifts: N copies of one shift → 1/N; orthogonal → 1; opposed ones are not boosted."""
    from recall_merge.recall.method import redundancy_strength

    generator = torch.Generator().manual_seed(0)
    shift = torch.randn(1, 5, 16, generator=generator, dtype=torch.float64)
    assert redundancy_strength(shift.repeat(4, 1, 1)) == pytest.approx(0.25)
    assert redundancy_strength(2.0 * shift.repeat(3, 1, 1)) == pytest.approx(1 / 3)  # scale-free
    orthogonal = torch.eye(3, dtype=torch.float64).reshape(3, 1, 3)
    assert redundancy_strength(orthogonal) == pytest.approx(1.0)
    assert redundancy_strength(torch.cat([shift, -shift])) == pytest.approx(1.0)
    assert redundancy_strength(torch.zeros(3, 5, 16, dtype=torch.float64)) == 1.0  # nothing moved
    assert redundancy_strength(shift) == 1.0  # one expert: task arithmetic's own λ
    # one expert that did not move counts as orthogonal: two copies + one still → 3 / (4 + 1)
    still = torch.cat([shift, shift, torch.zeros_like(shift)])
    assert redundancy_strength(still) == pytest.approx(3 / 5)


def test_redundancy_strength_of_identical_experts_is_one_over_n_in_every_moved_layer(tiny_models,
                                                                                     tmp_path):
    """Two copies of one expert: the task-vector sum at λ_j = 1/2 is that expert again."""
    expert = tiny_models["e1"]
    result = merge(_recall_config(tiny_models, [expert, expert], tmp_path / "out",
                                  variant="task_vector", strength="redundancy"), quiet=True)
    strengths = [layer["strength"] for layer in result.report["layers"]]
    assert strengths == pytest.approx([0.5] * len(strengths))
    ours, theirs = _state(result.output), _state(expert)
    for name in ours:
        assert (ours[name] - theirs[name]).abs().max() <= 1e-5, name


def test_full_experts_swapped_into_one_model_match_separately_loaded_models(tiny_models):
    from recall_merge.io.pool import ModelPool
    from recall_merge.recall.representations import (
        format_texts,
        load_model,
        load_tokenizer,
        pooled_hidden_states,
        states_for_all_models,
    )

    texts = ["the cat sat on the mat", "book a table for two tonight", "rain is expected"]
    pool = ModelPool.open(tiny_models["base"], [tiny_models["e1"], tiny_models["e2"]])
    swapped = states_for_all_models(pool, texts, max_length=32, batch_size=2, use_chat_template=True,
                                    backend="transformers")
    tokenizer = load_tokenizer(tiny_models["base"])
    framed = format_texts(tokenizer, texts, True)
    for k, folder in enumerate([tiny_models["base"], tiny_models["e1"], tiny_models["e2"]]):
        alone = pooled_hidden_states(load_model(folder), tokenizer, framed, max_length=32, batch_size=2)
        assert torch.equal(swapped[k], alone), k


@pytest.mark.parametrize(("method", "parameters"), [("recall", {"num_typical": 4}), ("linear", {}),
                                                    ("task_arithmetic", {"lambda": 0.6}), ("magmax", {})])
def test_row_blocks_give_the_same_bytes_as_whole_tensors(method, parameters, tiny_models, tiny_loras, tmp_path):
    """Elementwise methods merge large tensors in row blocks; the output must not change."""
    outputs = []
    for block_size in ("2GB", "4KB"):
        config = {"method": method, "base": str(tiny_models["base"]),
                  "models": [str(tiny_models["e1"]), str(tiny_loras["l1"])],
                  "samples": str(tiny_models["samples"]), "output": str(tmp_path / f"out_{block_size}"),
                  "block_size": block_size, "parameters": parameters}
        outputs.append((merge(config, quiet=True).output / "model.safetensors").read_bytes())
    assert outputs[0] == outputs[1]


def test_typical_samples_that_share_a_long_instruction_are_counted_and_warned_about(tiny_models, tmp_path):
    """Synthetic samples: one instruction longer than max_length, then a different sentence each.
    Cut at the right (the default) every sample is the instruction alone: the merge warns, naming
    the fix, and the report counts one distinct sample; cut at the left each keeps its sentence."""
    import json
    import warnings

    from recall_merge.errors import RecallSampleWarning

    instruction = "Read the sentence below and answer with one word only please. " * 6
    endings = ["the cat sat on the mat", "book a table for two", "rain is expected today",
               "stocks fell on monday", "the train was late", "she plays the violin"]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"text": instruction + e}) + "\n" for e in endings))
    config = _recall_config(tiny_models, [tiny_models["e1"], tiny_models["e2"]], tmp_path / "right",
                            max_length=24)
    config["samples"] = str(samples)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        right = merge(config, quiet=True)
    assert right.report["distinct_typical_samples"] == 1
    ours = [w for w in caught if issubclass(w.category, RecallSampleWarning)]
    assert len(ours) == 1
    assert re.search("only 1 of the 4 typical samples.*truncation_side: left", str(ours[0].message))
    # one warning that names the fix, not sklearn's clustering warning about the same inputs too
    assert not [w for w in caught if "distinct clusters" in str(w.message)]
    config = {**config, "output": str(tmp_path / "left"),
              "parameters": {**config["parameters"], "truncation_side": "left"}}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecallSampleWarning)
        left = merge(config, quiet=True)
    assert left.report["distinct_typical_samples"] == 4
