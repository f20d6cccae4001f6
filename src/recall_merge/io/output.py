"""What every merge output shares, whichever path wrote it (the engine, or a mergekit plan merged
per tensor): the checks on the output path, the finite check after the cast, the support files
copied from the base, the result type and the peak-memory reading of the report."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from recall_merge.errors import OutputError, os_problem
from recall_merge.io import atomic
from recall_merge.io.pool import is_code_file
from recall_merge.io.reader import all_finite
from recall_merge.io.writer import REPORT_NAME
from recall_merge.methods.base import MERGE_STATE_NAME

if TYPE_CHECKING:
    from recall_merge.config import MergeConfig

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
SKIP_FILES = {"model.safetensors.index.json", "pytorch_model.bin.index.json", REPORT_NAME,
              MERGE_STATE_NAME}


@dataclass
class MergeResult:
    output: Path
    report: dict[str, Any]


def check_output_finite(name: str, merged: torch.Tensor, config: MergeConfig) -> None:
    """A model with NaN/Inf weights must never be written with exit 0. Checked after the cast, so
    a float16/bfloat16 overflow is caught too; the temporary folder is then removed. The sum is
    tried first (``io.reader.all_finite``: the check took 2.3 s instead of 39.8 s of a Qwen2-7B
    LoRA merge, docs/speed.md footnote 6)."""
    if all_finite(merged):
        return
    bad = int((~torch.isfinite(merged)).sum())
    raise OutputError(
        f"the merged tensor {name} has {bad} non-finite value(s) (NaN/Inf) in {config.dtype}; "
        "nothing was written at the output path",
        "check the method's parameters (weights, lambda, scale) for extreme values"
        + (", or merge in float32 (dtype: float32)" if config.dtype != "float32" else ""))


def output_os_error(exc: OSError, output: Path) -> Exception:
    """The operating system refused a write: say which and what to do (nothing was left behind)."""
    known = os_problem(exc)
    if known is None:
        return exc
    problem, fix = known
    return OutputError(f"writing the merge next to {output} failed: {problem}; nothing was "
                       "written at the output path", fix)


def check_output(output: Path, config: MergeConfig, overwrite: bool) -> None:
    """Refuse an output that would overlap an input or replace a folder this tool did not write.

    ``--overwrite`` swaps the new output in and deletes the old folder, so an output that holds an
    input (``output: proj`` with the models under ``proj/``) or is not a previous merge would lose
    the user's files.
    """
    from recall_merge.config import check_output_path

    check_output_path(output)
    resolved = output.resolve()
    inputs = [config.base, *config.models] + ([config.samples] if config.samples else [])
    for ref in inputs:
        if not Path(ref).exists():
            continue  # a packaged model name such as "smollm2"
        source = Path(ref).resolve()
        if resolved == source or source in resolved.parents:
            raise OutputError(f"output {output} lies inside input {ref}",
                              "choose an output folder outside every input folder")
        if resolved in source.parents:
            raise OutputError(f"output {output} contains input {ref}: replacing it would delete that input",
                              "choose an output folder that holds none of the inputs")
    if output.exists() and not output.is_dir():
        raise OutputError(f"output path {output} is a file", "choose a folder path for the output")
    if output.exists() and not overwrite:
        raise OutputError(f"output folder {output} already exists",
                          "choose a new output path, or pass --overwrite (merge(..., overwrite=True))")
    if output.exists() and any(output.iterdir()) and not (output / REPORT_NAME).is_file():
        raise OutputError(f"output folder {output} is not empty and holds no {REPORT_NAME}: it is not "
                          "an earlier recall-merge output, and --overwrite would delete it",
                          "choose a new output path; --overwrite only replaces an earlier merge's folder")


def copy_support_files(source: Path, target: Path, config: MergeConfig) -> None:
    """Tokenizer, generation config and the like from the base; never its weights, its model card
    (the merge writes its own) or, unless remote code is trusted, Python files."""
    for path in sorted(source.iterdir()):
        if (not path.is_file() or path.name in SKIP_FILES or path.name.endswith(WEIGHT_SUFFIXES)
                or path.name.lower() == "readme.md"
                or (is_code_file(path) and not config.trust_remote_code)):
            continue
        if path.name == "config.json":
            model_config = json.loads(path.read_text())
            model_config["torch_dtype"] = config.dtype
            if "dtype" in model_config:
                model_config["dtype"] = config.dtype
            (target / path.name).write_text(json.dumps(model_config, indent=2))
        else:
            shutil.copy2(path, target / path.name)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB. Linux: VmHWM, the high-water mark of this
    process's own address space; ru_maxrss would also hold the peak of the process that spawned
    it (exec keeps the old address space's mark), e.g. a benchmark driver's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


# glibc's mallopt parameter for the size from which malloc serves a request with its own mmap
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def fix_mmap_threshold() -> bool:
    """Have glibc serve every allocation of ≥ 1 MB with its own mmap, returned to the system when
    freed, for the rest of this process; True where it was set.

    By default glibc raises that threshold each time such a block is freed (up to 32 MB), after
    which blocks of that size come from the heap, which fragments and does not shrink. A streamed
    merge frees a block's weights and activations block after block, so its resident memory grew
    with the number of blocks: on Qwen2-7B's shape cut to 8 blocks, RECALL of base + 2 full experts
    peaked at 1,948 MB with glibc's default and at 1,477 MB with the threshold fixed at 1 MB, at
    the same wall time (docs/speed.md, "RECALL at model scale"). Set by ``recall merge`` only (a
    process that does nothing else); a user's own ``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES``
    is left alone. Elsewhere than glibc, nothing happens."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "GLIBC_TUNABLES" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def removed_on_failure(temp: Path, output: Path) -> Iterator[None]:
    """Whatever fails inside, the temporary folder goes and nothing stays at the output path; an
    operating-system refusal becomes an OutputError that says which and what to do."""
    try:
        yield
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise output_os_error(exc, output) from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def publish(temp: Path, output: Path, report: dict[str, Any], card: str, *, overwrite: bool,
            state: dict[str, Any] | None = None, emit_mergekit: Path | None = None,
            mergekit_document: dict[str, Any] | None = None) -> None:
    """Finish a merge: the report (and a method's state for the next step), the model card and an
    asked-for mergekit YAML, then the complete folder renamed into place (call it inside
    :func:`removed_on_failure`)."""
    (temp / REPORT_NAME).write_text(json.dumps(report, indent=2, allow_nan=False))
    if state is not None:
        (temp / MERGE_STATE_NAME).write_text(json.dumps(state, indent=2, allow_nan=False))
    (temp / "README.md").write_text(card, encoding="utf-8")
    if emit_mergekit is not None:
        import yaml

        atomic.write_text(Path(emit_mergekit), yaml.safe_dump(mergekit_document, sort_keys=False))
    if output.exists() and not overwrite:
        raise OutputError(f"output folder {output} appeared during the merge", "choose another path")
    atomic.replace_folder(temp, output)


def check_free_space(output: Path, needed: int) -> None:
    """Refuse early when ``needed`` bytes cannot fit beside the output, rather than fail after
    gigabytes were written (5 % slack for shard headers and the report)."""
    existing = output.parent
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed * 1.05:
        raise OutputError(f"not enough free disk space for the output: {needed / 1e6:.1f} MB needed, "
                          f"{free / 1e6:.1f} MB free at {existing}", "free space or choose another output folder")
