"""Every write that must never be seen half-done, in one place.

Files: written to a hidden temporary beside the target, then renamed over it (``os.replace`` is
atomic on one filesystem). Folders: built in a *marked* temporary folder — a marker file is the
first thing written into it — and renamed (or atomically exchanged) into place. Cleanup of what a
killed run left behind removes only temporaries that carry this tool's name pattern **and** its
marker, so a user's file or folder that merely looks like one is never deleted.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

MARKER = ".recall-merge-temporary"
_FILE_TAG = ".recall-partial-"  # temporary files: .NAME.recall-partial-PID


# ------------------------------------------------------------------------------------- files
def _temporary_file(path: Path) -> Path:
    return path.with_name(f".{path.name}{_FILE_TAG}{os.getpid()}")


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open`` for writing whose result appears at ``path`` only when the block ends normally."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_file(path)
    try:
        with open(temporary, mode, **kwargs) as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def write_bytes(path: Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def write_json(path: Path, data: Any, *, sort_keys: bool = True) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, allow_nan=False) + "\n")


def is_temporary_file(path: Path) -> bool:
    """A temporary file this module made (``.NAME.recall-partial-PID``)."""
    name = path.name
    return (name.startswith(".") and _FILE_TAG in name and name.rsplit("-", 1)[-1].isdigit()
            and path.is_file() and not path.is_symlink())


# ----------------------------------------------------------------------------------- folders
def _write_marker(folder: Path) -> None:
    (folder / MARKER).write_text(json.dumps({"created_by": "recall-merge", "pid": os.getpid()}))


def make_marked_folder(folder: Path) -> Path:
    """Create ``folder`` and write the marker into it before anything else."""
    folder.mkdir()
    _write_marker(folder)
    return folder


def is_marked_folder(candidate: Path) -> bool:
    """True only for a real folder (not a link) holding this tool's marker file."""
    marker = candidate / MARKER
    if candidate.is_symlink() or not candidate.is_dir() or marker.is_symlink() or not marker.is_file():
        return False
    try:
        record = json.loads(marker.read_text(encoding="utf-8", errors="replace")[:1000])
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("created_by") == "recall-merge"


def unmark(folder: Path) -> None:
    """Remove the marker just before the folder becomes a result (it must not travel with it)."""
    (folder / MARKER).unlink()


def remove_marked_folder(folder: Path) -> bool:
    """Delete ``folder`` if, and only if, it is one of this tool's marked temporaries."""
    if is_marked_folder(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return True
    return False


def _pid_is_gone(pid_text: str) -> bool:
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def remove_stale_temporaries(target: Path) -> None:
    """Delete what killed runs of this tool left beside ``target``: folders named
    ``.NAME.tmp-PID`` / ``.NAME.old-PID`` holding the marker, and files ``.NAME.recall-partial-PID``,
    whose process is gone. A user's ``.NAME.backup-2024…`` is never touched."""
    parent = target.parent
    if not parent.exists():
        return
    escaped = glob.escape(target.name)
    for kind in ("tmp", "old"):
        for candidate in parent.glob(f".{escaped}.{kind}-*"):
            if _pid_is_gone(candidate.name.rsplit("-", 1)[-1]):
                remove_marked_folder(candidate)
    for candidate in parent.glob(f".{escaped}{_FILE_TAG}*"):
        if is_temporary_file(candidate) and _pid_is_gone(candidate.name.rsplit("-", 1)[-1]):
            candidate.unlink(missing_ok=True)


def temporary_folder_for(target: Path) -> Path:
    """A fresh marked temporary folder beside ``target`` (same filesystem, so renames are atomic)."""
    remove_stale_temporaries(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if temporary.exists():
        if not remove_marked_folder(temporary):
            from recall_merge.errors import OutputError

            raise OutputError(f"{temporary} exists and was not made by recall-merge",
                              "move it away and run again")
    return make_marked_folder(temporary)


def replace_folder(temporary: Path, target: Path, *, before_rename: Any = None) -> None:
    """Put the finished marked folder ``temporary`` at ``target`` atomically.

    A new target is a plain rename. An existing one is swapped with the new folder in one
    ``renameat2(RENAME_EXCHANGE)`` call, so a crash at any instant leaves either the old folder or
    the new one at the target, never neither and never a partial one; the old one is then removed.
    Where the exchange is unavailable the old folder is renamed aside (and marked) first.
    """
    unmark(temporary)
    if not target.exists():
        os.replace(temporary, target)
        return
    if _exchange(temporary, target):
        shutil.rmtree(temporary, ignore_errors=True)  # it now holds the previous folder
        return
    trash = target.parent / f".{target.name}.old-{os.getpid()}"
    os.replace(target, trash)
    _write_marker(trash)
    os.replace(temporary, target)
    shutil.rmtree(trash, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False where the call is unavailable."""
    if sys.platform != "linux":
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = libc.renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    return result == 0
