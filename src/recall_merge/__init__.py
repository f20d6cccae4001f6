"""recall-merge: RECALL and classic model merging for continual learning of LLMs."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import MergeConfig, load_config  # noqa: E402
from .engine import MergeResult, merge  # noqa: E402
from .errors import RecallError  # noqa: E402

__all__ = ["MergeConfig", "MergeResult", "RecallError", "load_config", "merge", "__version__"]
