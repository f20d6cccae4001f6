"""A merge killed with SIGKILL leaves either no output or the previous output untouched."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            data = path.read_bytes()
            if path.name == "recall_report.json":  # timings differ run to run; the rest must not
                report = json.loads(data)
                report.pop("run")
                data = json.dumps(report, sort_keys=True).encode()
            digest.update(data)
    return digest.hexdigest()


def _config(tiny, tmp_path: Path, method: str = "recall") -> Path:
    config = {"method": method, "base": str(tiny["base"]), "models": [str(tiny["e1"]), str(tiny["e2"])],
              "samples": str(tiny["samples"]), "output": str(tmp_path / "out"), "seed": 0,
              "parameters": {"num_typical": 4} if method == "recall" else {}}
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# The kill points live here, in the test, not in the product: the merge runs in a child process
# whose driver wraps one library function so that it kills its own process with SIGKILL there.
_DRIVER = """
import os, signal, sys
point = sys.argv[1]
if point == "mid_stream":
    from recall_merge.io.writer import StreamingShardWriter
    original = StreamingShardWriter.write_part
    calls = [0]
    def write_part(self, name, part, last):
        calls[0] += 1
        if calls[0] == max(1, len(self.plan) // 2):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, name, part, last)
    StreamingShardWriter.write_part = write_part
elif point == "before_rename":
    from recall_merge.io import atomic
    def replace_folder(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    atomic.replace_folder = replace_folder
from recall_merge.cli import run
sys.argv = ["recall", *sys.argv[2:]]
run()
"""


def _run(config: Path, crash_at: str | None = None, overwrite: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    arguments = ["merge", str(config), "--quiet"] + (["--overwrite"] if overwrite else [])
    if crash_at:
        command = [sys.executable, "-c", _DRIVER, crash_at, *arguments]
    else:
        command = [sys.executable, "-m", "recall_merge.cli", *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _assert_clean(tmp_path: Path, expected_digest: str | None) -> None:
    output = tmp_path / "out"
    if expected_digest is None:
        assert not output.exists()
    else:
        assert _digest(output) == expected_digest


@pytest.mark.parametrize("point", ["mid_stream", "before_rename"])
def test_sigkill_at_fixed_points_never_leaves_a_partial_output(point, tiny_models, tmp_path):
    config = _config(tiny_models, tmp_path, "linear")
    killed = _run(config, crash_at=point)
    assert killed.returncode == -signal.SIGKILL
    _assert_clean(tmp_path, None)  # first run: nothing at the target

    assert _run(config).returncode == 0
    previous = _digest(tmp_path / "out")
    killed = _run(config, crash_at=point)  # overwrite run killed: previous output untouched
    assert killed.returncode == -signal.SIGKILL
    _assert_clean(tmp_path, previous)
    # the next run cleans what the killed one left and succeeds
    assert _run(config).returncode == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_sigkill_at_random_times(tiny_models, tmp_path):
    config = _config(tiny_models, tmp_path, "recall")
    assert _run(config).returncode == 0
    previous = _digest(tmp_path / "out")
    rng = random.Random(0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for _ in range(3):
        process = subprocess.Popen([sys.executable, "-m", "recall_merge.cli", "merge", str(config), "--quiet",
                                    "--overwrite"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 6.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        output = tmp_path / "out"
        assert output.exists()
        digest = _digest(output)
        # either the previous output, or (if the run had finished) a complete identical new one
        assert digest == previous


def test_command_line_exit_flushes_output_and_keeps_exit_codes(tiny_models, tmp_path):
    """What `python -m recall_merge.cli` printed into a pipe arrives, and the exit code is main()'s."""
    config = _config(tiny_models, tmp_path, "linear")
    done = _run(config)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(summary["output"]) == tmp_path / "out" and (tmp_path / "out" / "recall_report.json").exists()

    refused = _run(tmp_path / "missing.yaml")
    assert refused.returncode == 2
    assert "does not exist" in refused.stderr and "fix:" in refused.stderr
