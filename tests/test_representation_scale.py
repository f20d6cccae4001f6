"""The pure logic of ``benchmarks/merge_speed/representation_backends.py --shape``: which dtype the
plain forward may run in on this machine's memory (decided before anything is loaded), and the
docs/speed.md table generated from the committed JSON. Nothing is loaded, merged or timed here."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from benchmark_scripts import load_script

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
# parameter counts of scale.py's shapes (its tensor_plan; lm_head counted where untied)
LLAMA2_7B, QWEN2_7B, SMOLLM2_135M = 6_738_415_616, 7_615_616_512, 134_515_008


@pytest.fixture(scope="module")
def bench():
    return load_script("representation_backends_benchmark", "merge_speed/representation_backends.py")


def test_a_7b_model_runs_its_plain_forward_in_bfloat16_on_a_24_gib_machine(bench):
    plan = bench.plain_forward_plan(LLAMA2_7B, "float32", 22 * GIB)
    assert plan["dtype"] == "bfloat16" and not plan["same_dtype_as_recall"]
    refused, chosen = plan["tried"]
    assert refused == {"dtype": "float32", "weights_gb": pytest.approx(26.95, abs=0.01),
                       "need_gb": pytest.approx((4 * LLAMA2_7B + bench.PROCESS_OVERHEAD_BYTES) / 1e9),
                       "fits": False}
    assert chosen["dtype"] == "bfloat16" and chosen["fits"]
    assert plan["available_gb"] == pytest.approx(22 * GIB / 1e9)


def test_small_models_run_in_the_merges_dtype_and_nothing_runs_where_nothing_fits(bench):
    small = bench.plain_forward_plan(SMOLLM2_135M, "float32", 22 * GIB)
    assert small["dtype"] == "float32" and small["same_dtype_as_recall"] and len(small["tried"]) == 1
    # activations count: a model that fits alone no longer fits beside a wave's activations
    need = 2 * SMOLLM2_135M + bench.PROCESS_OVERHEAD_BYTES
    assert bench.plain_forward_plan(SMOLLM2_135M, "bfloat16", need)["dtype"] == "bfloat16"
    assert bench.plain_forward_plan(SMOLLM2_135M, "bfloat16", need, activation_bytes=1)["dtype"] is None
    nothing = bench.plain_forward_plan(QWEN2_7B, "float32", 12 * GIB)
    assert nothing["dtype"] is None
    assert [(t["dtype"], t["fits"]) for t in nothing["tried"]] == [("float32", False), ("bfloat16", False)]
    # a bfloat16 merge tries bfloat16 only; an unknown amount of memory does not stop the run
    assert [t["dtype"] for t in bench.plain_forward_plan(QWEN2_7B, "bfloat16", GIB)["tried"]] == ["bfloat16"]
    assert bench.plain_forward_plan(QWEN2_7B, "float32", None)["dtype"] == "float32"


def test_activation_estimate_keeps_every_layers_hidden_states(bench):
    config = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
              "num_hidden_layers": 32}
    per_sample = 4 * 64 * (8 * 4096 + 3 * 11008 + 32 * 64) + 4 * 64 * 4096 * 33
    assert bench.activation_bytes(config, tokens=64, batch=8) == 8 * per_sample


def test_meminfo_available_is_read_in_bytes(bench):
    text = "MemTotal:       24683772 kB\nMemFree:        15257368 kB\nMemAvailable:   21689332 kB\n"
    assert bench.meminfo_available_bytes(text) == 21689332 * 1024
    assert bench.meminfo_available_bytes("MemTotal: 1 kB\n") is None


def test_representation_scale_table_is_the_generated_one(bench, tmp_path):
    """docs/speed.md's table equals what ``--docs`` writes from the committed JSON; every record
    states its seed, versions, load average and command, and compares the two arms' states."""
    document = json.loads(bench.SCALE_RESULTS.read_text())
    page = REPO / "docs" / "speed.md"
    assert bench.SPEED_DOC == page
    copied = tmp_path / "speed.md"
    copied.write_text(page.read_text(encoding="utf-8"), encoding="utf-8")
    assert bench.rewrite_tables(copied, {"representation-scale": lambda: bench.scale_table(document)}) == [
        "representation-scale"]
    assert copied.read_text(encoding="utf-8") == page.read_text(encoding="utf-8"), (
        "docs/speed.md's representation-scale table is stale: run "
        "`python benchmarks/merge_speed/representation_backends.py --docs`")
    rows = bench.scale_table(document).splitlines()[2:]
    assert len(rows) == len(document["records"])
    for row, record in zip(rows, document["records"], strict=True):
        assert {"seed", "versions", "load_average", "command", "threads", "page_cache"} <= set(record)
        assert len(record["load_average"]["start"]) == len(record["load_average"]["end"]) == 3
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        if record["ratios"] is not None:
            assert float(cells[5].split()[0]) == pytest.approx(record["ratios"]["wall"], abs=5e-3)
            assert record["states"]["passes"]  # both arms ran the same passes


def test_table_says_when_the_plain_forward_does_not_fit_or_ran_in_bfloat16(bench):
    record = copy.deepcopy(json.loads(bench.SCALE_RESULTS.read_text())["records"][0])
    record.update(shape="llama2-7b", best={**record["best"], "plain": None}, ratios=None, states=None,
                  plain_memory=bench.plain_forward_plan(LLAMA2_7B, "float32", 10 * GIB))
    row = bench.scale_table({"records": [record]}).splitlines()[2]
    assert "Llama-2-7B" in row and "does not fit (float32 needs 28.6 GB, bfloat16 needs 15.1 GB; " \
                                    "10.7 GB available)" in row
    assert row.split("|")[6].strip() == "—"
    record["plain_memory"] = bench.plain_forward_plan(LLAMA2_7B, "float32", 22 * GIB)
    record["best"]["plain"] = {"wall_s": 10.0, "peak_rss_mb": 15000.0, "pass_s": 8.0}
    row = bench.scale_table({"records": [record]}).splitlines()[2]
    assert "in bfloat16 (float32 does not fit: needs 28.6 GB, 23.6 GB available)" in row
