"""Continual-learning harness: strategies, durable runs, the accuracy matrix and its metrics."""

from recall_merge.continual.config import ContinualConfig, load_continual_config
from recall_merge.continual.runner import main, run_continual

__all__ = ["ContinualConfig", "load_continual_config", "main", "run_continual"]
