"""recall-merge: RECALL and classic model merging for continual learning of LLMs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["MergeConfig", "MergeResult", "RecallError", "load_config", "merge", "__version__"]

if TYPE_CHECKING:
    from .config import MergeConfig, load_config
    from .engine import MergeResult, merge
    from .errors import RecallError

_LAZY = {"MergeConfig": "config", "load_config": "config", "MergeResult": "engine", "merge": "engine",
         "RecallError": "errors"}


def __getattr__(name: str) -> Any:
    # Lazy: `import recall_merge.data` or `recall --help` should not pay for importing torch.
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'recall_merge' has no attribute {name!r}")
