"""Reading the newest task's samples: .jsonl with a "text" field, or .txt with one per line.

The file is read line by line, with stated caps, so that a wrong path (a device such as
/dev/zero, a pipe, a huge file) is refused rather than read into memory: RECALL clusters the
samples into ``num_typical`` typical ones, so a sample file is at most a few thousand lines.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

from recall_merge.errors import SampleError

MAX_SAMPLE_CHARS = 100_000  # a single line longer than this is almost surely not a sample
MAX_SAMPLES = 100_000  # RECALL runs every sample through the newest model: more is a mistake
MAX_LINE_BYTES = 1_000_000  # one line of the file, JSON escapes included
MAX_FILE_BYTES = 256_000_000  # the whole file

_FIX_PATH = "point `samples` to a .jsonl file (one {\"text\": ...} per line) or a .txt file (one sample per line)"


def _shown(path: Path) -> str:
    text = str(path)
    return repr(text) if len(text) <= 200 else repr(text[:197]) + "..."


def check_samples_file(path: Path) -> os.stat_result:
    """Refuse a sample path that is not a regular file of sane size, from its metadata alone:
    missing, a folder, a device (/dev/zero), a pipe or socket, a symbolic-link loop, a NUL byte,
    a name too long, or more than MAX_FILE_BYTES. Returns the file's stat."""
    path = Path(path)
    shown = _shown(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SampleError(f"sample file {shown} does not exist", "check `samples` in the config") from None
    except ValueError:  # a NUL byte or a character no file name can hold
        raise SampleError(f"sample path {shown} is not a valid file name", "check `samples` in the config") from None
    except OSError as exc:
        reasons = {errno.ELOOP: "runs into a loop of symbolic links",
                   errno.ENAMETOOLONG: "is too long for the file system",
                   errno.ENOTDIR: "goes through a file as if it were a folder",
                   errno.EACCES: "cannot be read (permission denied)"}
        reason = reasons.get(exc.errno or 0, f"cannot be read ({os.strerror(exc.errno or 0)})")
        raise SampleError(f"sample path {shown} {reason}", "check `samples` in the config") from None
    if stat.S_ISDIR(info.st_mode):
        raise SampleError(f"sample path {shown} is a folder", _FIX_PATH)
    if not stat.S_ISREG(info.st_mode):
        raise SampleError(f"sample path {shown} is not a regular file (a device, pipe or socket), "
                          "which could be endless", _FIX_PATH)
    if info.st_size > MAX_FILE_BYTES:
        raise SampleError(f"sample file {shown} has {info.st_size:,} bytes; at most {MAX_FILE_BYTES:,} "
                          "are read", f"use at most {MAX_SAMPLES:,} samples (a random subset keeps "
                          "RECALL's typical samples representative)")
    return info


def _lines(path: Path, shown: str):
    """(line number, text) of each line, read one at a time; a line over MAX_LINE_BYTES or one
    that is not UTF-8 is refused when reached."""
    with open(path, "rb") as handle:
        number = 0
        offset = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise SampleError(f"{shown}: line {number} is longer than {MAX_LINE_BYTES:,} bytes",
                                  f"split or shorten it to under {MAX_SAMPLE_CHARS:,} characters")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SampleError(f"sample file {shown} is not UTF-8 (line {number}, byte "
                                  f"{offset + exc.start} is invalid)", "re-encode the file as UTF-8") from None
            offset += len(raw)
            yield number, text


def read_samples(path: Path, *, min_count: int = 1, max_count: int | None = MAX_SAMPLES) -> list[str]:
    """The samples of ``path``, in file order: the "text" field of each JSON line of a .jsonl or
    .json file, or each non-blank line of any other file. Each at most MAX_SAMPLE_CHARS
    characters; fewer than ``min_count`` or more than ``max_count`` (None: no limit beyond the
    file's MAX_FILE_BYTES) is an error."""
    path = Path(path)
    check_samples_file(path)
    shown = _shown(path)
    json_lines = path.suffix in (".jsonl", ".json")
    texts: list[str] = []
    for number, line in _lines(path, shown):
        if json_lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise SampleError(f"{shown} line {number} is not JSON", "write one JSON object per line") from None
            except RecursionError:
                raise SampleError(f"{shown} line {number} nests too deeply", 'write lines like {"text": "..."}') from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise SampleError(f"{shown} line {number} has no string field \"text\"",
                                  'write lines like {"text": "..."}')
            found = [record["text"]]
        else:
            # str.splitlines as before: a lone \r (or another Unicode line break) still ends a sample
            found = [part for part in line.splitlines() if part.strip()]
        for sample in found:
            if len(sample) > MAX_SAMPLE_CHARS:
                raise SampleError(f"{shown}: sample {len(texts) + 1} has {len(sample)} characters",
                                  f"split or shorten it to under {MAX_SAMPLE_CHARS} characters")
            texts.append(sample)
            if max_count is not None and len(texts) > max_count:
                raise SampleError(f"sample file {shown} has more than {max_count:,} samples; RECALL runs "
                                  "each through the newest model and clusters them into num_typical",
                                  f"use at most {max_count:,} samples (a random subset keeps the typical "
                                  "samples representative)")
    if not texts:
        raise SampleError(f"sample file {shown} is empty", "add the newest task's inputs, one per line")
    if len(texts) < min_count:
        raise SampleError(f"sample file {shown} has {len(texts)} samples but {min_count} typical samples "
                          "were asked for", f"add samples or lower parameters.num_typical to ≤ {len(texts)}")
    return texts
