"""A continual run's folders on disk: durable stages, what killed runs left behind, the config
stamp, folder names, and models whose weights were removed once scored.

A stage (a model folder, a samples file, a scores file) appears at its path only when complete:
a folder is built in a marked temporary folder beside it (``io.atomic``) and renamed into place,
a file is written atomically. A stage whose path exists is skipped, so re-running the same
command after a crash or Ctrl-C continues where it stopped. The sweep of what a killed run left
removes only marked temporaries (and atomic-write temporary files) of processes that are gone:
never a user's folder that merely looks like one, never a live run's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recall_merge.continual.config import ContinualConfig
from recall_merge.errors import ConfigError, excerpt
from recall_merge.io.atomic import (
    remove_marked_folder,
    remove_stale_temporaries,
    replace_folder,
    temporary_folder_for,
    write_json,
    write_text,
)
from recall_merge.reports.html import slug  # the one copy of the folder-name rule

__all__ = ["WEIGHTS_REMOVED", "ModelState", "RunStore", "comparable_config", "refuse_removed_weights",
           "remove_intermediate_weights", "remove_model_weights", "slug", "stable_seed",
           "stamp_or_refuse"]

# what may differ between runs of one folder: where it lives, what is kept once scored, and what
# the results compare with (it builds nothing)
_UNCOMPARED = ("run_dir", "expert_cache", "keep_weights", "reference_strategy")

# Written where a model's weights were removed after it was scored (``keep_weights``).
WEIGHTS_REMOVED = "WEIGHTS_REMOVED.json"

# io.atomic's temporaries: folders .NAME.tmp-PID / .NAME.old-PID, files .NAME.recall-partial-PID
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old|recall-partial)-\d+$")


@dataclass(frozen=True)
class ModelState:
    """A model on disk: a full HF folder, or a base folder plus a PEFT adapter folder."""

    folder: Path
    adapter: Path | None = None

    @property
    def merge_ref(self) -> str:
        """What the merge engine is given for this model (adapters are read against the base)."""
        return str(self.adapter or self.folder)


def stable_seed(seed: int, key: str) -> int:
    return zlib.crc32(f"{seed}:{key}".encode()) & 0x7FFFFFFF


@contextlib.contextmanager
def _building(final: Path) -> Iterator[None]:
    """Hold an exclusive lock on building ``final`` across processes: two benchmark lanes (or Ray
    workers on shared storage) that need the same expert of the expert cache then train it once,
    the second waiting and finding it built. The lock file stays (an empty ``.NAME.lock``): removing
    it would let a third process lock a different inode while the second still holds the old one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class RunStore:
    """Durable stages under ``root`` (absolute stage paths, such as the expert cache's, are
    allowed); counts the stages it builds and logs each."""

    def __init__(self, root: Path, log: Callable[[str], None]) -> None:
        self.root = root
        self.log = log
        self.new_stages = 0

    def finished(self, name: str | Path, started: float) -> None:
        self.new_stages += 1
        self.log(f"done: {name} ({time.perf_counter() - started:.1f} s)")

    def folder_stage(self, relative: str | Path, build: Callable[[Path], None]) -> Path:
        """``root/relative``, built by ``build(temporary_folder)`` unless it already exists. A build
        that fails or is interrupted leaves nothing at the path (a kill leaves a marked temporary
        that the next run removes)."""
        final = self.root / relative
        if final.exists():
            return final
        with _building(final):
            if final.exists():  # another process built it while this one waited
                return final
            started = time.perf_counter()
            temporary = temporary_folder_for(final)
            try:
                build(temporary)
                replace_folder(temporary, final)
            except BaseException:
                remove_marked_folder(temporary)
                raise
        self.finished(relative, started)
        return final

    def text_stage(self, relative: str | Path, make: Callable[[], str]) -> Path:
        path = self.root / relative
        if not path.exists():
            started = time.perf_counter()
            write_text(path, make())
            self.finished(relative, started)
        return path

    def json_stage(self, relative: str | Path, compute: Callable[[], Any]) -> Any:
        path = self.root / relative
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))
        started = time.perf_counter()
        data = compute()
        write_json(path, data)
        self.finished(relative, started)
        return data


def discard_temporaries(folder: Path | None) -> None:
    """Remove what killed runs left under ``folder``: this tool's marked temporary folders and
    temporary files, of processes that are gone (io.atomic checks the marker and the process)."""
    if folder is None or not folder.is_dir():
        return
    targets = {path.parent / match["name"] for path in folder.rglob(".*")
               if (match := _TEMPORARY.match(path.name))}
    for target in sorted(targets, key=lambda path: len(path.parts), reverse=True):
        remove_stale_temporaries(target)


def stamp_or_refuse(path: Path, current: dict[str, Any], problem: str, fix: str) -> None:
    """Write ``current`` to ``path`` the first time; afterwards refuse anything else, naming the
    keys that differ."""
    if not path.exists():
        write_json(path, current)
        return
    stored = json.loads(path.read_text(encoding="utf-8"))
    if stored != current:
        changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
        raise ConfigError(f"{problem} (differs in: {', '.join(changed)})", fix)


def comparable_config(config: ContinualConfig) -> dict[str, Any]:
    """The config without what may change between runs of one folder (path, progress bars)."""
    data = config.model_dump(mode="json", exclude=set(_UNCOMPARED))
    data["training"].pop("progress", None)
    if data["evaluation"].get("backend") == "builtin":  # added later: absent at its default
        data["evaluation"].pop("backend")
    for entry in data["strategies"]:
        if isinstance(entry, dict):
            entry.get("training", {}).pop("progress", None)
            # added after run folders existed: left out at its default so that they still match
            if not entry.get("steps_per_task"):
                entry.pop("steps_per_task", None)
            if entry.get("deploy") == "merge":
                entry.pop("deploy")
            if entry.get("ema_beta") is None:
                entry.pop("ema_beta", None)
    return data


def check_run_folders(config: ContinualConfig) -> None:
    """Refuse to mix two configs in one run folder, or experts of other settings in one expert
    cache (their stages would not match); stamp both the first time."""
    stamp_or_refuse(config.run_dir / "config.json", comparable_config(config),
                    f"run folder {excerpt(str(config.run_dir))} holds a run of another config",
                    "use a new run_dir, or delete the old folder to start over")
    cache = config.expert_cache
    if cache is not None:
        shared = ("model", "seed", "max_train", "max_dev", "max_test", "task_options", "evaluation",
                  "device")
        current = {key: value for key, value in comparable_config(config).items() if key in shared}
        stamp_or_refuse(cache / "manifest.json", current,
                        f"expert_cache {excerpt(str(cache))} holds experts of other settings",
                        "use another expert_cache folder for these settings")


# --- models whose weights were removed once scored ------------------------------------------

def _full_model_weight_files(folder: Path) -> list[Path]:
    """A full HF model's weight files in ``folder`` (shards and index included); a PEFT adapter's
    ``adapter_model.safetensors`` and an EWC state are not among them (both are small)."""
    return sorted(path for pattern in ("model*.safetensors", "model.safetensors.index.json",
                                       "pytorch_model*.bin", "pytorch_model.bin.index.json")
                  for path in folder.glob(pattern))


def remove_model_weights(folder: Path, reason: str) -> int:
    """Delete the full-model weights in ``folder`` once the model was scored, leaving its config,
    tokenizer and merge report, and a ``WEIGHTS_REMOVED.json`` that says what went and why.
    Returns the bytes freed (0 where there were none)."""
    files = _full_model_weight_files(folder)
    if not files:
        return 0
    freed = sum(path.stat().st_size for path in files)
    write_json(folder / WEIGHTS_REMOVED, {"files": [path.name for path in files],
                                          "bytes": freed, "reason": reason})
    for path in files:
        path.unlink()
    return freed


def remove_intermediate_weights(folder: Path) -> None:
    """Once every row of a strategy is scored, remove the full-model weights of its stages in
    ``folder`` but the final model's (``keep_weights: final``). The folders stay, with their
    configs and merge reports, so a rerun skips them and reads the scores it kept."""
    if not folder.is_dir():
        return
    # the final model is the last step's, or an earlier one where guard_newest left the newest
    # experts out (no folder is made for those steps); a merge deployed as an EMA
    # (strategies.Merge) also keeps its final deployed model, deployI/
    final = {stage for prefix in ("step", "deploy") if (stage := _last_stage(folder, prefix))}
    for stage in sorted(folder.iterdir()):
        if stage.is_dir() and stage not in final and not stage.name.startswith("."):
            remove_model_weights(stage, "keep_weights: final (set keep_weights: all to keep "
                                        "every step's model)")


def _last_stage(folder: Path, prefix: str) -> Path | None:
    """``folder/PREFIXn`` of the highest step n, or None where there is none."""
    steps = [int(stage.name[len(prefix):]) for stage in folder.glob(f"{prefix}*")
             if stage.name[len(prefix):].isdigit()]
    return folder / f"{prefix}{max(steps)}" if steps else None


def refuse_removed_weights(state: ModelState) -> None:
    """A model whose weights were removed cannot be scored again: say so before loading it."""
    for folder in (state.folder, state.adapter):
        if folder is not None and (folder / WEIGHTS_REMOVED).exists():
            reason = json.loads((folder / WEIGHTS_REMOVED).read_text(encoding="utf-8"))["reason"]
            raise ConfigError(f"the weights of {excerpt(str(folder))} were removed after it was "
                              f"scored ({reason}), and a score is missing for it",
                              f"delete {excerpt(str(folder))} so that it is built again, and set "
                              "keep_weights: all if later runs need it")
