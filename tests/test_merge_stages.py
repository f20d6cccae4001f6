"""benchmarks/merge_speed/merge_stages.py times the engine's stages by wrapping its call sites by
name. On tiny SYNTHETIC models (random weights): every stage it names is called in a real merge,
and a merge that never reaches one of them (here: full experts down the LoRA case's path) stops
the script instead of recording a stage time of zero. Nothing here is timed against a limit."""

from __future__ import annotations

import sys

import pytest
from benchmark_scripts import load_script

from recall_merge.testing import make_tiny_llama, make_tiny_lora


@pytest.fixture(scope="module")
def stages():
    # merge_stages.py imports its siblings `run` and `scale` by those names; another benchmark's
    # run.py may already sit in sys.modules under "run"
    saved = {name: sys.modules.pop(name) for name in ("run", "scale") if name in sys.modules}
    try:
        yield load_script("merge_speed_stages", "merge_speed/merge_stages.py")
    finally:
        for name in ("run", "scale"):
            sys.modules.pop(name, None)
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    base = make_tiny_llama(root / "base", seed=0)
    full = [make_tiny_llama(root / f"e{k}", seed=k, tokenizer_from=base, perturb_from=base)
            for k in (1, 2)]
    lora = [make_tiny_lora(root / f"l{k}", base, seed=k) for k in (1, 2)]
    return root, base, full, lora


@pytest.mark.parametrize("case", ["full", "lora"])
def test_every_named_stage_is_called_in_a_merge(stages, family, case):
    root, base, full, lora = family
    record = stages.timed_merge(base, full if case == "full" else lora, root / f"out_{case}", case)
    assert (root / f"out_{case}" / "model.safetensors").exists()
    assert set(record["calls"]) == set(record["stages_s"])
    assert all(count > 0 for count in record["calls"].values())
    named = {"full": "main: merge arithmetic", "lora": "reader: product"}[case]
    assert named in record["calls"]


def test_a_stage_the_merge_never_reaches_stops_the_script(stages, family):
    root, base, full, _ = family
    with pytest.raises(SystemExit, match="never called .*reader: product"):
        stages.timed_merge(base, full, root / "out_wrong_path", "lora")
