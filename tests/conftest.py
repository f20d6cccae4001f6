"""Shared fixtures: tiny random Llama checkpoints (synthetic, for unit tests only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see cli.py)

from recall_merge.testing import make_tiny_llama, make_tiny_lora, write_samples  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A base and three experts (base + seeded noise), 2 blocks, hidden 64, plus a sample file."""
    root = tmp_path_factory.mktemp("tiny")
    base = make_tiny_llama(root / "base", seed=0)
    experts = [
        make_tiny_llama(root / f"expert{k}", seed=100 + k, tokenizer_from=base, perturb_from=base)
        for k in range(1, 4)
    ]
    samples = write_samples(root / "samples.jsonl")
    return {"root": root, "base": base, "e1": experts[0], "e2": experts[1], "e3": experts[2],
            "samples": samples}


@pytest.fixture(scope="session")
def tiny_loras(tiny_models) -> dict[str, Path]:
    root = tiny_models["root"]
    return {f"l{k}": make_tiny_lora(root / f"lora{k}", tiny_models["base"], seed=200 + k)
            for k in (1, 2)}


@pytest.fixture(scope="session")
def tiny_recall_merge(tiny_models, tmp_path_factory) -> Path:
    """A real RECALL merge of the tiny base and two experts (its output folder)."""
    from recall_merge import merge

    output = tmp_path_factory.mktemp("recall_merge") / "merged"
    config = {"method": "recall", "base": str(tiny_models["base"]),
              "models": [str(tiny_models["e1"]), str(tiny_models["e2"])],
              "samples": str(tiny_models["samples"]), "output": str(output), "seed": 0,
              "parameters": {"num_typical": 3}}
    return merge(config, quiet=True).output


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct folder (materialised by setup.sh), or a skip saying why."""
    from recall_merge.io.packaged import materialise_smollm2

    try:
        return materialise_smollm2(quiet=True)
    except Exception as error:  # the packaged wheel is installed by setup.sh
        pytest.skip(f"SmolLM2 not available: {error}")
