"""Errors a user can act on: each names the problem and the fix.

Every error raised for bad input derives from :class:`RecallError`; the CLI turns it into a
message on stderr and exit status 2, so scripts can tell bad input from a crash.
"""

from __future__ import annotations

import errno
import reprlib
from typing import Any

MAX_QUOTED_CHARS = 200  # no message quotes more of a user's value than this


class RecallError(Exception):
    """Bad input or an unsafe request. ``problem`` says what is wrong, ``fix`` what to do."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}" + (f"\n  fix: {fix}" if fix else ""))


class ConfigError(RecallError):
    """The configuration file or its values are invalid."""


class ConfigValueError(ConfigError, ValueError):
    """A :class:`ConfigError` that is also a ``ValueError``, so that a pydantic validator may raise
    it: the config loader then reports the key it belongs to with this error's problem and fix,
    and code outside pydantic can raise and catch it as any other ConfigError."""


class CheckpointError(RecallError):
    """A checkpoint is missing, unreadable, unsafe, or incompatible with the others."""


class SampleError(RecallError):
    """The sample file is missing, empty, undecodable or too small."""


class OutputError(RecallError):
    """The output path cannot be written safely."""


class RecallSampleWarning(UserWarning):
    """RECALL's representation pass sees fewer distinct samples than it was given."""


_REPR = reprlib.Repr()
_REPR.maxstring = MAX_QUOTED_CHARS
_REPR.maxother = MAX_QUOTED_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxlevel = 3
_REPR.maxlong = 60


def excerpt(value: Any, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr(value)`` cut to at most ``limit`` characters. reprlib stops at a few items and levels,
    so the cost is bounded too: a value built from YAML aliases can be astronomically large once
    expanded, and a message must never try to spell it out."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# What the operating system refuses that a user can fix: the problem and its fix, by errno.
_OS_PROBLEMS = {
    errno.EROFS: ("the file system is read-only", "write to a folder on a writable disk"),
    errno.EFBIG: ("a file grew past the file-size limit (ulimit -f)",
                  "raise the limit (ulimit -f unlimited), or use a smaller shard_size"),
    errno.ENOSPC: ("the disk is full", "free space, or write somewhere else"),
    errno.EDQUOT: ("the disk quota is exhausted", "free space, or write somewhere else"),
    errno.EACCES: ("permission denied", "check the path's permissions"),
    errno.EPERM: ("operation not permitted", "check the path's permissions"),
    errno.ELOOP: ("a symbolic link loops", "fix or remove the link"),
    errno.ENAMETOOLONG: ("a path is too long", "use a shorter path"),
    errno.ENOTDIR: ("a path goes through a file as if it were a folder", "check the path"),
    errno.EISDIR: ("a folder was given where a file is needed", "give a file path"),
    errno.ENOENT: ("a file or folder does not exist", "check the path"),
}


def os_problem(error: OSError) -> tuple[str, str] | None:
    """(problem naming the path, fix) for an OSError a user can act on; None for anything else."""
    if error.errno not in _OS_PROBLEMS:
        return None
    problem, fix = _OS_PROBLEMS[error.errno]
    where = f" at {excerpt(str(error.filename))}" if error.filename else ""
    return problem + where, fix
