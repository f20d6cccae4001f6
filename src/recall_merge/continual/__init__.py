"""Continual-learning harness: strategies, durable runs, the accuracy matrix and its metrics."""

from .config import ContinualConfig, load_continual_config
from .runner import main, run_continual

__all__ = ["ContinualConfig", "load_continual_config", "main", "run_continual"]
