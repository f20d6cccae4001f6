"""RECALL's ``probes: generated``: each older expert writes probe texts itself (recall/probes.py),
every model runs on every probe set, and α is the mean of the rows read from each task's side.
Tiny random models (their texts are noise: only the mechanics are tested), SYNTHETIC samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from recall_merge import merge
from recall_merge.config import MergeConfig
from recall_merge.errors import ConfigError
from recall_merge.io.pool import ModelPool
from recall_merge.methods.registry import get_method
from recall_merge.recall import method as recall_method
from recall_merge.recall.probes import NEUTRAL_PROMPTS, generate_probes, prompt_plan
from recall_merge.recall.similarity import softmax_weights

SMALL = {"num_typical": 3, "max_length": 32}
FEW_PROBES = {"generated_samples": 4, "generated_tokens": 8}


def _merge(base: Path, experts: list[Path], samples: Path, output: Path, parameters: dict[str, Any],
           seed: int = 3):
    return merge({"method": "recall", "base": str(base), "models": [str(e) for e in experts],
                  "samples": str(samples), "output": str(output), "seed": seed,
                  "parameters": {**SMALL, **parameters}}, quiet=True)


def test_one_expert_gives_exactly_the_newest_probes_weights(tiny_models, tmp_path):
    args = (tiny_models["base"], [tiny_models["e1"]], tiny_models["samples"])
    newest = _merge(*args, tmp_path / "newest", {}).report
    generated = _merge(*args, tmp_path / "generated", {"probes": "generated"}).report
    assert generated["generated_probes"] == []  # no older expert to write any
    for ours, theirs in zip(generated["layers"], newest["layers"], strict=True):
        assert ours["alpha"] == theirs["alpha"]
        assert [row["task"] for row in ours["probe_rows"]] == [1]
    assert "probe_rows" not in newest["layers"][0] and "generated_probes" not in newest


def test_generated_probes_are_seeded_and_independent_of_the_visiting_order(tiny_models):
    pool = ModelPool.open(tiny_models["base"], [tiny_models["e1"], tiny_models["e2"]])
    options = {"count": 5, "new_tokens": 6}
    first = generate_probes(pool, [1, 2], seed=3, **options)
    assert generate_probes(pool, [2, 1], seed=3, **options) == first
    assert [len(first[k]) for k in (1, 2)] == [5, 5] and all(first[1])
    assert generate_probes(pool, [1], seed=4, **options)[1] != first[1]
    assert first[1] != first[2]  # the experts differ, so do their texts


def test_prompts_are_used_in_turn():
    assert prompt_plan(3) == [(0, 1), (1, 1), (2, 1)]
    assert prompt_plan(len(NEUTRAL_PROMPTS) + 2)[:3] == [(0, 2), (1, 2), (2, 1)]
    assert sum(repeats for _, repeats in prompt_plan(16)) == 16


def test_generated_texts_and_rows_are_in_the_report(tiny_models, tmp_path):
    experts = [tiny_models["e1"], tiny_models["e2"], tiny_models["e3"]]
    args = (tiny_models["base"], experts, tiny_models["samples"])
    report = _merge(*args, tmp_path / "generated", {"probes": "generated", **FEW_PROBES}).report
    again = _merge(*args, tmp_path / "again", {"probes": "generated", **FEW_PROBES}).report
    newest = _merge(*args, tmp_path / "newest", {}).report
    assert report["probes"] == "generated" and report["generated_prompts"] == list(NEUTRAL_PROMPTS)
    assert [entry["expert"] for entry in report["generated_probes"]] == [1, 2]  # M_3 is the newest
    for entry in report["generated_probes"]:
        assert len(entry["texts"]) == 4 and all(0 < len(text) <= 200 for text in entry["texts"])
    assert again["generated_probes"] == report["generated_probes"]  # same seed, same texts
    for layer, paper in zip(report["layers"], newest["layers"], strict=True):
        rows = {row["task"]: row["alpha"] for row in layer["probe_rows"]}
        assert sorted(rows) == [1, 2, 3]
        assert rows[3] == paper["alpha"]  # the newest task's view is the paper's row, unchanged
        mean = torch.tensor(list(rows.values()), dtype=torch.float64).mean(dim=0)
        assert layer["alpha"] == pytest.approx(mean.tolist(), abs=1e-15)
        assert sum(layer["alpha"]) == pytest.approx(1.0)
        assert layer["similarity"] == paper["similarity"]


# A constructed case: the states of probe set P_k are tagged with k, and the similarity of a
# tagged set is a matrix fixed here, so each row α^(k) = softmax(S^(k)[k, :]) is known.
SIMILARITY = {1: torch.tensor([[1.0, 0.3, 0.6], [0.2, 1.0, 0.5], [0.6, 0.5, 1.0]], dtype=torch.float64),
              2: torch.tensor([[1.0, 0.7, 0.1], [0.7, 1.0, 0.4], [0.1, 0.4, 1.0]], dtype=torch.float64)}


def test_alpha_is_the_mean_of_the_rows_read_from_each_task(tiny_models, tmp_path, monkeypatch):
    def fake_generate(pool, indices, *, count, **kwargs):
        return {k: [f"probe {k} {i}" for i in range(count)] for k in indices}

    def fake_states(pool, texts, *, model_indices=None, **kwargs):
        tag = 1.0 if texts[0].startswith("probe") else 2.0
        indices = model_indices if model_indices is not None else range(len(pool.experts) + 1)
        states = torch.zeros(pool.num_layers + 1, len(texts), 4)
        states[..., 0] = tag
        states[..., 1] = torch.arange(len(texts), dtype=torch.float32)  # distinct samples for K-means
        return {k: states.clone() for k in indices}

    def fake_similarity(layer_states, kernel, aggregation, bandwidth):
        return SIMILARITY[int(round(float(layer_states[0, 0, 0])))].clone(), 1.0

    monkeypatch.setattr("recall_merge.recall.probes.generate_probes", fake_generate)
    monkeypatch.setattr(recall_method, "states_for_all_models", fake_states)
    monkeypatch.setattr(recall_method, "similarity_matrix", fake_similarity)
    report = _merge(tiny_models["base"], [tiny_models["e1"], tiny_models["e2"]], tiny_models["samples"],
                    tmp_path / "constructed", {"probes": "generated", **FEW_PROBES}).report
    expected = (softmax_weights(SIMILARITY[1][1], 1.0) + softmax_weights(SIMILARITY[2][2], 1.0)) / 2
    for layer in report["layers"]:
        assert layer["alpha"] == pytest.approx(expected.tolist(), abs=1e-12)
        assert layer["probe_rows"][0]["similarity"] == SIMILARITY[1][1].tolist()
    assert report["generated_probes"] == [{"expert": 1, "texts": [f"probe 1 {i}" for i in range(4)]}]


def test_lora_experts_generate_with_their_adapter(tiny_models, tiny_loras, tmp_path):
    pool = ModelPool.open(tiny_models["base"], [tiny_loras["l1"], tiny_loras["l2"]])
    options = {"count": 3, "new_tokens": 8, "seed": 3}
    both = generate_probes(pool, [0, 1, 2], **options)
    assert both[1] != both[0] and both[2] != both[0]  # the adapters change what is written
    # each adapter is removed after its turn: l2 alone writes what it wrote after l1
    assert generate_probes(pool, [2], **options)[2] == both[2]
    report = _merge(tiny_models["base"], [tiny_loras["l1"], tiny_loras["l2"]], tiny_models["samples"],
                    tmp_path / "lora", {"probes": "generated", **FEW_PROBES}).report
    assert report["generated_probes"][0]["texts"] == [text[:200] for text in
                                                      generate_probes(pool, [1], count=4, new_tokens=8,
                                                                      seed=3)[1]]
    for layer in report["layers"]:
        assert all(weight > 0 for weight in layer["alpha"]) and sum(layer["alpha"]) == pytest.approx(1.0)


@pytest.mark.parametrize(("parameters", "words"), [
    ({"generated_samples": 8}, ("generated_samples", "probes: generated")),
    ({"generated_tokens": 8}, ("generated_tokens", "probes: generated")),
    ({"probes": "generated", "newest_share": 0.5}, ("newest_share", "probes: newest")),
])
def test_probe_option_refusals(parameters, words, tmp_path):
    samples = tmp_path / "samples.txt"
    samples.write_text("one sample\n")
    config = MergeConfig(method="recall", base="/b", models=["/x", "/y"], output=Path("/o"),
                         samples=samples, parameters=parameters)
    with pytest.raises(ConfigError) as error:
        get_method("recall")(config.method_parameters(), config, 2)
    message = error.value.problem + " " + error.value.fix
    assert all(word in message for word in words), message
