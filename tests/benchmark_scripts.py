"""Load a script of ``benchmarks/`` as a module for a test.

The scripts are not a package: each is imported under a name of its own (several are called
``run.py``, and their helpers share names), with its folder on ``sys.path`` while it imports, so
that its sibling modules (``sequences``, ``pooled``) resolve as they do when it runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str, relative: str) -> ModuleType:
    """``benchmarks/relative`` imported as module ``name``."""
    path = BENCHMARKS / relative
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module
