"""Every shipped example config validates (no untested configs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recall_merge.config import load_config
from recall_merge.continual.config import expand_strategies, load_continual_config
from recall_merge.demo import demo_config
from recall_merge.methods.registry import available_methods

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", ["merge_recall.yaml", "merge_ties.yaml"])
def test_merge_examples_validate(name):
    config = load_config(EXAMPLES / name)
    assert config.method in available_methods()
    assert config.output.is_absolute()


@pytest.mark.parametrize("name", ["continual_tiny.yaml", "continual_smollm2.yaml"])
def test_continual_examples_validate(name):
    config = load_continual_config(EXAMPLES / name)
    assert expand_strategies(config, merge_methods=available_methods())


def test_demo_config_validates(tmp_path):
    config = load_continual_config(demo_config(tmp_path / "demo"))
    names = [s.name for s in expand_strategies(config, merge_methods=available_methods())]
    assert "expert" in names and any("recall" in n for n in names)
