"""Integration: two LoRA experts of the real SmolLM2, merged by `recall merge`, load and generate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

pytestmark = pytest.mark.integration


def _train_lora(base, task, folder, seed):
    from recall_merge.continual.config import TrainingConfig
    from recall_merge.continual.training import load_causal_lm, make_trainable, save_model, train
    from recall_merge.recall.representations import load_tokenizer

    training = TrainingConfig(mode="lora", max_steps=3, batch_size=4, learning_rate=1e-3,
                              max_length=64, lora_rank=4, lora_alpha=8, progress=False)
    tokenizer = load_tokenizer(base)
    model = make_trainable(load_causal_lm(base), training, seed=seed)
    loss = train(model, tokenizer, task.train, training, seed)
    assert loss == loss and loss > 0  # finite
    save_model(model, tokenizer, folder)
    return folder


def test_recall_merge_of_two_smollm2_lora_experts_loads_and_generates(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recall_merge.data.registry import load_task

    tasks = [load_task("bbc", seed=0, n_train=24, n_dev=4, n_test=4),
             load_task("lexicon:word_sentiment", seed=0, n_train=24, n_dev=4, n_test=4)]
    experts = [_train_lora(smollm2, task, tmp_path / f"expert{k}", seed=k) for k, task in enumerate(tasks)]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"text": p}) + "\n" for p in tasks[-1].inputs("train")))
    config = {"method": "recall", "base": "smollm2", "models": [str(e) for e in experts],
              "samples": str(samples), "output": str(tmp_path / "merged"), "seed": 0,
              "parameters": {"num_typical": 4, "max_length": 64}}
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "recall_merge.cli", "merge", str(tmp_path / "merge.yaml"),
                          "--quiet"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]

    report = json.loads((tmp_path / "merged" / "recall_report.json").read_text())
    assert report["model_kinds"] == ["base", "lora", "lora"]
    assert len(report["layers"]) == 30
    for layer in report["layers"]:
        assert sum(layer["alpha"]) == pytest.approx(1.0)

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(text.strip()) > 0
