"""Where downloaded and converted assets live, a lock for building them once, and files found
inside installed packages (the PyPI wheels that ship our real models and data)."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$RECALL_MERGE_CACHE`` if set, else ``~/.cache/recall-merge``."""
    override = os.environ.get("RECALL_MERGE_CACHE")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "recall-merge"


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` for the duration of the block."""
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def path_in_package(module: str, relative: str, folder: bool = False) -> Path | None:
    """``relative`` (a file, or a folder when ``folder``) inside the installed package
    ``module``, found without importing it: the packages that ship our real assets pull
    dependencies on import that we never install. None when the package or the path is missing."""
    spec = importlib.util.find_spec(module)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / relative
        if candidate.is_dir() if folder else candidate.is_file():
            return candidate
    return None
