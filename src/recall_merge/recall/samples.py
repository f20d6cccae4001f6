"""Reading the newest task's samples: .jsonl with a "text" field, or .txt with one per line."""

from __future__ import annotations

import json
from pathlib import Path

from recall_merge.errors import SampleError

MAX_SAMPLE_CHARS = 100_000  # a single line longer than this is almost surely not a sample


def read_samples(path: Path, *, min_count: int = 1) -> list[str]:
    path = Path(path)
    if not path.exists():
        raise SampleError(f"sample file {str(path)!r} does not exist", "check `samples` in the config")
    if path.is_dir():
        raise SampleError(f"sample path {str(path)!r} is a folder", "point `samples` to a .jsonl or .txt file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SampleError(f"sample file {path} is not UTF-8 (byte {exc.start} is invalid)",
                          "re-encode the file as UTF-8") from None
    texts: list[str] = []
    if path.suffix == ".jsonl" or path.suffix == ".json":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise SampleError(f"{path} line {number} is not JSON", "write one JSON object per line") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise SampleError(f"{path} line {number} has no string field \"text\"",
                                  'write lines like {"text": "..."}')
            texts.append(record["text"])
    else:
        texts = [line for line in text.splitlines() if line.strip()]
    for number, sample in enumerate(texts, start=1):
        if len(sample) > MAX_SAMPLE_CHARS:
            raise SampleError(f"{path}: sample {number} has {len(sample)} characters",
                              f"split or shorten it to under {MAX_SAMPLE_CHARS} characters")
    if not texts:
        raise SampleError(f"sample file {path} is empty", "add the newest task's inputs, one per line")
    if len(texts) < min_count:
        raise SampleError(f"sample file {path} has {len(texts)} samples but {min_count} typical samples "
                          "were asked for", f"add samples or lower parameters.num_typical to ≤ {len(texts)}")
    return texts
