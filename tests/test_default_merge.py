"""The default merge (methods/default.py): what a config without `method` runs in `recall merge`
and in `recall continual`, the refusal of RECALL-only keys without a method, and that the default
is the one the continual benchmark's development sequence chose (its committed per-item data).
Models here are the tiny synthetic fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from benchmark_scripts import load_script
from safetensors.torch import load_file

from recall_merge import merge
from recall_merge.cli import main as cli_main
from recall_merge.continual.config import ContinualConfig, expand_strategies
from recall_merge.methods.default import DEFAULT_METHOD, DEFAULT_PARAMETERS


def _merge_config(tiny, output: Path, **changes) -> dict:
    config = {"base": str(tiny["base"]), "models": [str(tiny["e1"]), str(tiny["e2"])],
              "output": str(output), "seed": 0}
    config.update(changes)
    return config


def _weights(folder: Path) -> dict:
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def test_a_config_without_method_runs_the_default_merge(tiny_models, tmp_path):
    default = merge(_merge_config(tiny_models, tmp_path / "default"), quiet=True)
    explicit = merge(_merge_config(tiny_models, tmp_path / "explicit", method=DEFAULT_METHOD,
                                   parameters=dict(DEFAULT_PARAMETERS)), quiet=True)
    assert default.report["method"] == DEFAULT_METHOD
    merged, expected = _weights(default.output), _weights(explicit.output)
    assert merged.keys() == expected.keys() and merged
    assert all(merged[name].equal(expected[name]) for name in merged)
    # and it is not the method's own default strength (λ 1): the chosen parameters are applied
    plain = merge(_merge_config(tiny_models, tmp_path / "plain", method=DEFAULT_METHOD), quiet=True)
    assert any(not merged[name].equal(tensor) for name, tensor in _weights(plain.output).items())


@pytest.mark.parametrize("changes, fragment", [
    ({"samples": "SAMPLES"}, "samples set but no method"),
    ({"parameters": {"temperature": 1.0}}, "parameters set but no method"),
])
def test_recall_keys_without_a_method_are_refused(changes, fragment, tiny_models, tmp_path, capsys):
    changes = {key: str(tiny_models["samples"]) if value == "SAMPLES" else value
               for key, value in changes.items()}
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(_merge_config(tiny_models, tmp_path / "out", **changes)))
    assert cli_main(["merge", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "method: recall" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def _continual(strategies: list, **changes) -> ContinualConfig:
    return ContinualConfig.model_validate({"model": "tiny-random", "tasks": ["synthetic:a"],
                                           "strategies": strategies, "run_dir": "/tmp/unused",
                                           **changes})


def test_a_continual_merge_without_method_is_the_default_merge():
    strategies = expand_strategies(_continual(["merge", {"kind": "merge", "name": "mine"}]))
    assert [(s.name, s.method, s.parameters) for s in strategies] == [
        ("merge", DEFAULT_METHOD, DEFAULT_PARAMETERS), ("mine", DEFAULT_METHOD, DEFAULT_PARAMETERS)]
    # the config's parameters for that method, and a strategy's own, still win
    own = {"lambda": 0.5}
    strategies = expand_strategies(_continual(
        ["merge", {"kind": "merge", "name": "mine", "parameters": {"lambda": 0.75}}],
        merge_parameters={DEFAULT_METHOD: own}))
    assert [s.parameters for s in strategies] == [own, {"lambda": 0.75}]


def test_the_default_is_the_development_sequences_choice():
    """methods/default.py is the merge the development sequence chose, by the rule in pooled.py,
    from the committed per-item results: a new result that changes the choice fails here until the
    default is changed with it."""
    sequences = load_script("benchmark_sequences", "continual/sequences.py")
    chosen = sequences.chosen_default()
    if chosen is None:
        pytest.skip("the development sequence has not chosen yet (a candidate lacks an order)")
    strategy = sequences.STRATEGIES[chosen]
    assert strategy["kind"] == "merge" and strategy.get("library", "experts") == "experts"
    assert strategy.get("finetune_from", "base") == "base" and strategy.get("deploy", "merge") == "merge"
    assert (strategy["method"], strategy["parameters"]) == (DEFAULT_METHOD, DEFAULT_PARAMETERS)
