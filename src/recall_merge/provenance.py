"""What every result file records about the software that made it."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

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


def machine() -> dict[str, object]:
    """The CPU a result was computed on: float32 kernels (matrix products, reductions) may round
    differently on another CPU make or instruction set, so a bit-for-bit comparison across
    machines names both."""
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count()}
