"""Peak memory is the measured process's own, not the peak of the process that started it.

exec records the old address space's high-water mark in ru_maxrss, so a child spawned by a driver
that once held a lot (a benchmark that generated a checkpoint) would report the driver's peak.
Here the driver holds ~800 MB while it starts small children.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_scripts import load_script

REPO = Path(__file__).resolve().parents[1]
HELD_MB = 800


@pytest.fixture(scope="module")
def held():
    block = b"\x01" * (HELD_MB * 2**20)  # touched pages: resident in this process
    yield block
    del block


@pytest.fixture(scope="module")
def speed_run():
    return load_script("merge_speed_run_benchmark", "merge_speed/run.py")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork/exec accounting is Linux's")
def test_measure_reports_the_tools_peak_not_the_drivers(held, speed_run):
    assert len(held) == HELD_MB * 2**20
    small = speed_run.measure([sys.executable, "-c", "pass"])
    assert small["peak_rss_mb"] < 100
    grown = speed_run.measure([sys.executable, "-c", "block = b'x' * (300 * 2**20)"])
    assert 300 < grown["peak_rss_mb"] < 400


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_the_merge_report_peak_is_the_process_own(held):
    child = ("from recall_merge.io.output import peak_rss_mb\n"
             "before = peak_rss_mb()\n"
             "block = b'x' * (200 * 2**20)\n"
             "print(before, peak_rss_mb())")
    before, after = map(float, subprocess.run([sys.executable, "-c", child], check=True,
                                              capture_output=True, text=True).stdout.split())
    assert before < HELD_MB  # torch imported, nothing of the parent's 800 MB
    assert after - before == pytest.approx(200, abs=30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_recall_merge_fixes_the_mmap_threshold_unless_the_user_set_one():
    """``recall merge`` has glibc serve ≥ 1 MB allocations by mmap (a streamed model's freed
    blocks then go back to the system instead of fragmenting the heap); a threshold the user set
    in the environment stays theirs."""
    import os

    child = "from recall_merge.io.output import fix_mmap_threshold; print(fix_mmap_threshold())"

    def run(**extra: str) -> str:
        env = {key: value for key, value in os.environ.items()
               if key not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
        return subprocess.run([sys.executable, "-c", child], check=True, capture_output=True,
                              text=True, env={**env, **extra}).stdout.strip()

    assert run() == "True"
    assert run(MALLOC_MMAP_THRESHOLD_="65536") == "False"
    assert run(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536") == "False"
    source = (REPO / "src" / "recall_merge" / "cli.py").read_text()
    merge_branch = source.split('if args.command == "merge":')[1].split("if args.command")[0]
    assert "fix_mmap_threshold()" in merge_branch
