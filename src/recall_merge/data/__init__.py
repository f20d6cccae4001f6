"""Task sources for merges and continual learning: BIG-bench, BBC News, local files, HF schemas."""

from recall_merge.data.registry import load_task
from recall_merge.data.task import DataError, Example, Task

__all__ = ["DataError", "Example", "Task", "load_task"]
