"""What RECALL's representation pass sees of each benchmark task's samples at its max_length.

For every task of every sequence: the merge samples the continual runs hand to RECALL (the first
``merge_samples`` train prompts at seed 0), framed as a user turn of SmolLM2's chat template and
tokenised as the representation pass does. Reports their token lengths, how many leading tokens
all of them share (chat frame plus the task's instruction), and how many are still distinct when
cut to RECALL_PAPER's max_length from the right (the default: the start is kept) and from the
left (the end is kept). Tokeniser only, no model: seconds.

    python benchmarks/continual/sample_truncation.py

Writes ``benchmarks/results/sample_truncation.json`` (seed, versions, command).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import RESULTS, continual_config  # noqa: E402
from sequences import RECALL_PAPER, SEQUENCES  # noqa: E402

# the held-out sequences run with fewer test items; the train prompts do not depend on it
MAX_TEST = {"domain": 40, "task": 30, "paper": 24}


def main() -> None:
    from recall_merge.continual.config import load_continual_config
    from recall_merge.continual.runner import load_any_task
    from recall_merge.engine import versions
    from recall_merge.io.packaged import resolve_model_ref
    from recall_merge.recall.representations import (
        distinct_inputs,
        encode,
        format_texts,
        representation_tokenizer,
    )

    seed, max_length = 0, RECALL_PAPER["max_length"]
    tokenizer = representation_tokenizer(resolve_model_ref("smollm2"))
    out: dict[str, dict] = {}
    for sequence, spec in SEQUENCES.items():
        raw = continual_config(sequence, list(range(len(spec["tasks"]))), ["expert"],
                               MAX_TEST[sequence], "summary", seed)
        config = load_continual_config(raw)
        for task_spec in spec["tasks"]:
            task = load_any_task(task_spec, config)
            if task.name in out:
                continue
            texts = task.inputs("train")[: config.merge_samples]
            framed = format_texts(tokenizer, texts, True)
            # uncut: the representation pass's own encoding, with a bound no sample reaches
            batch = encode(tokenizer, framed, max_length=1 << 20)
            rows = [ids[mask.bool()].tolist()
                    for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
            lengths = [len(row) for row in rows]
            out[task.name] = {
                "sequences": [s for s, other in SEQUENCES.items() if task_spec in other["tasks"]],
                "samples": len(texts),
                "median_tokens": statistics.median(lengths),
                "max_tokens": max(lengths),
                "shared_prefix_tokens": len(os.path.commonprefix(rows)),
                "longer_than_max_length": sum(length > max_length for length in lengths),
                "distinct_cut_right": distinct_inputs(tokenizer, texts, max_length=max_length,
                                                      use_chat_template=True, truncation_side="right"),
                "distinct_cut_left": distinct_inputs(tokenizer, texts, max_length=max_length,
                                                     use_chat_template=True, truncation_side="left"),
            }
            print(f"{task.name:60s} {out[task.name]}", flush=True)
    path = RESULTS / "sample_truncation.json"
    path.write_text(json.dumps({"max_length": max_length, "tasks": out, "seed": seed,
                                "versions": versions(),
                                "command": "python benchmarks/continual/sample_truncation.py"},
                               indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
