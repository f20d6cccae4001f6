"""recall-merge: RECALL and classic model merging for continual learning of LLMs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recall_merge.provenance import __version__

__all__ = ["MergeConfig", "MergeResult", "RecallError", "load_config", "merge", "__version__"]

if TYPE_CHECKING:
    from recall_merge.config import MergeConfig, load_config
    from recall_merge.engine import MergeResult, merge
    from recall_merge.errors import RecallError

_LAZY = {"MergeConfig": "config", "load_config": "config", "MergeResult": "engine", "merge": "engine",
         "RecallError": "errors"}


def __getattr__(name: str) -> Any:
    # Lazy: `import recall_merge.data` or `recall --help` should not pay for importing torch.
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'recall_merge' has no attribute {name!r}")
