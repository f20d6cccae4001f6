"""What every result file records about the software that made it."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """recall-merge, Python and the libraries whose behaviour a result depends on."""
    import torch

    found = {"recall_merge": __version__, "python": platform.python_version(), "torch": torch.__version__}
    # numpy draws the task splits and the bootstrap; tokenizers turns every prompt into ids
    for package in ("transformers", "tokenizers", "safetensors", "peft", "numpy", "scikit-learn",
                    "sacrebleu"):
        try:  # metadata, not import: importing transformers alone costs ~2 s
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found
