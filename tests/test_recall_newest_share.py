"""RECALL's ``newest_share`` as a depth ramp: M_N gets ``start`` at block 0 and ``end`` at the last
block (linear between); the other models split the rest by their similarity to M_N. Tiny random
models and SYNTHETIC samples."""

from __future__ import annotations

import pytest

from recall_merge import merge
from recall_merge.testing import make_expert_family, write_samples

NUM_LAYERS = 3


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    models = make_expert_family(tmp_path_factory.mktemp("newest_share"), 2, NUM_LAYERS)
    models["samples"] = write_samples(models["root"] / "samples.jsonl")
    return models


def _merge(models, output, newest_share):
    return merge({"method": "recall", "base": str(models["base"]),
                  "models": [str(models["e1"]), str(models["e2"])], "samples": str(models["samples"]),
                  "output": str(output), "seed": 3,
                  "parameters": {"num_typical": 4, "max_length": 32, "newest_share": newest_share}},
                 quiet=True)


def test_a_ramped_newest_share_gives_m_n_start_to_end_across_depth(family, tmp_path):
    report = _merge(family, tmp_path / "ramp", {"start": 0.2, "end": 0.6}).report
    shares = [layer["alpha"][-1] for layer in report["layers"]]
    assert shares == pytest.approx([0.2, 0.4, 0.6])
    for layer in report["layers"]:
        assert sum(layer["alpha"]) == pytest.approx(1.0)  # the others split the rest
        assert all(weight > 0 for weight in layer["alpha"][:-1])


def test_a_constant_share_equals_a_flat_ramp(family, tmp_path):
    constant = _merge(family, tmp_path / "constant", 0.35).report["layers"]
    flat = _merge(family, tmp_path / "flat", {"start": 0.35, "end": 0.35}).report["layers"]
    for ours, theirs in zip(constant, flat, strict=True):
        assert ours["alpha"] == pytest.approx(theirs["alpha"], abs=1e-12)
        assert ours["alpha"][-1] == pytest.approx(0.35)
