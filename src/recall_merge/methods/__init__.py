"""Merge methods: the interface (:mod:`.base`), pure tensor ops (:mod:`.ops`), the classic methods
(:mod:`.classic`) and the table of every method by name (:mod:`.registry`). RECALL itself lives in
:mod:`recall_merge.recall`."""

from recall_merge.methods.base import MergeMethod, TensorPosition

__all__ = ["MergeMethod", "TensorPosition"]
