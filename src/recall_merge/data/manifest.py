"""Seeded train/dev/test splits decided by item ids, recorded as a manifest.

Every item of a packaged task source has a stable id (a CSV row number, a word, an ISO code...).
An item's place in the shuffle is ``sha256(seed, id)``, so the same seed gives the same splits on
every machine and Python version, and an item keeps its place whatever other items the source
holds. Membership is decided by the shares alone and the caps (``n_train``, ``n_dev``,
``n_test``) take prefixes, so lowering a cap never moves an item into another split.

A balanced split takes the same number of dev and test items from every label and interleaves
them label by label, so any prefix of dev or test stays balanced; train keeps the rest in its
natural proportions, in a shuffle of its own, so any prefix of train keeps them too.

The ids that make up a loaded task are kept in ``task.meta["split_ids"]`` with a short digest;
:func:`write_manifest` saves them, and the option ``manifest=PATH`` loads exactly those items
again (the seed then plays no part).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from recall_merge.data.common import SplitSizes
from recall_merge.data.task import DataError, Example, Task
from recall_merge.errors import ConfigError

Item = tuple[str, Example]
SPLITS = ("train", "dev", "test")
MANIFEST_FORMAT = "recall-merge-split-manifest/1"


def order_key(seed: int, item_id: str) -> bytes:
    """The item's place in the seeded shuffle (independent of every other item)."""
    return hashlib.sha256(f"{seed}\x00{item_id}".encode()).digest()


def _ordered(items: Sequence[Item], seed: int) -> list[Item]:
    return sorted(items, key=lambda item: order_key(seed, item[0]))


def _cap(items: list[Item], limit: int | None) -> list[Item]:
    return items if limit is None else items[:limit]


def _interleave(groups: list[list[Item]]) -> list[Item]:
    """Round robin over the groups: one of each label, then the next of each..."""
    longest = max((len(group) for group in groups), default=0)
    return [group[index] for index in range(longest) for group in groups if index < len(group)]


def check_unique(items: Sequence[Item], source: str) -> None:
    """Ids and prompts must both be unique, or one item could sit in two splits."""
    for position, what in ((0, "id"), (1, "prompt")):
        seen: set = set()
        for item in items:
            key = item[0] if position == 0 else item[1].prompt
            if key in seen:
                raise DataError(f"{source}: the {what} {str(key)[:80]!r} occurs twice",
                                "the reader must drop repeated items before splitting")
            seen.add(key)


def split_items(items: Sequence[Item], seed: int, sizes: SplitSizes,
                balance: bool = False) -> dict[str, list[Item]]:
    """Seeded, disjoint train/dev/test by id (see the module docstring), caps applied."""
    total = len(items)
    n_test, n_dev = round(total * sizes.test_fraction), round(total * sizes.dev_fraction)
    if not balance:
        ordered = _ordered(items, seed)
        splits = {"test": ordered[:n_test], "dev": ordered[n_test:n_test + n_dev],
                  "train": ordered[n_test + n_dev:]}
    else:
        by_label: dict[str, list[Item]] = defaultdict(list)
        for item in items:
            by_label[item[1].target].append(item)
        groups = [_ordered(by_label[label], seed) for label in sorted(by_label)]
        per_test, per_dev = n_test // len(groups), n_dev // len(groups)
        # never take more than half of the rarest label away from training
        room = min(len(group) for group in groups) // 2
        if per_test + per_dev > room:
            per_test = round(room * per_test / (per_test + per_dev))
            per_dev = room - per_test
        # Train gets a shuffle of its own: under the key that picked dev and test, a label whose
        # group lost a larger share of its items to them starts later, so a train prefix
        # (n_train) would hold only the larger label (measured: the first 763 of Rotten
        # Tomatoes' train items were all positive, and experts trained on them collapsed).
        splits = {"test": _interleave([group[:per_test] for group in groups]),
                  "dev": _interleave([group[per_test:per_test + per_dev] for group in groups]),
                  "train": sorted((item for group in groups for item in group[per_test + per_dev:]),
                                  key=lambda item: order_key(seed, f"train\x00{item[0]}"))}
    return {"train": _cap(splits["train"], sizes.n_train), "dev": _cap(splits["dev"], sizes.n_dev),
            "test": _cap(splits["test"], sizes.n_test)}


def read_manifest(path: str | Path) -> dict:
    """A manifest file written by :func:`write_manifest`, checked for shape."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split manifest {str(path)[:200]} does not exist",
                        "give the path of a manifest written by write_manifest(task, path)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(f"split manifest {path.name[:80]} is not valid JSON: "
                        f"{str(error)[:120]}", "rewrite it with write_manifest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path.name[:80]} is not a split manifest (format "
                        f"{MANIFEST_FORMAT!r} expected)", "rewrite it with write_manifest")
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or any(
            not isinstance(splits.get(name, []), list)
            or not all(isinstance(item_id, str) for item_id in splits.get(name, []))
            for name in SPLITS):
        raise DataError(f"{path.name[:80]}: 'splits' must map train/dev/test to lists of ids",
                        "rewrite it with write_manifest")
    return manifest


def apply_manifest(items: Sequence[Item], manifest: dict, task_name: str,
                   sizes: SplitSizes) -> dict[str, list[Item]]:
    """The items a manifest names, split and ordered as it says, caps applied."""
    if manifest.get("task") not in (None, task_name):
        raise ConfigError(f"the split manifest is for task {str(manifest['task'])[:80]!r}, "
                          f"not {task_name!r}", "pass the manifest written for this task")
    by_id = dict(items)
    splits: dict[str, list[Item]] = {}
    seen: set[str] = set()
    for name in SPLITS:
        ids = manifest["splits"].get(name, [])
        missing = [item_id for item_id in ids if item_id not in by_id]
        if missing:
            raise DataError(f"the split manifest names {len(missing)} {name} id(s) that "
                            f"{task_name} does not hold, e.g. {missing[0][:60]!r}",
                            "the data changed since the manifest was written: install the "
                            "package version it records, or drop the manifest option")
        repeated = seen.intersection(ids)
        if repeated or len(set(ids)) != len(ids):
            raise DataError(f"the split manifest puts an id in two places "
                            f"({sorted(repeated)[:1] or 'within ' + name})",
                            "rewrite it with write_manifest")
        seen.update(ids)
        splits[name] = [(item_id, by_id[item_id]) for item_id in ids]
    return {"train": _cap(splits["train"], sizes.n_train), "dev": _cap(splits["dev"], sizes.n_dev),
            "test": _cap(splits["test"], sizes.n_test)}


def digest(split_ids: dict[str, list[str]]) -> str:
    """A short fingerprint of the split ids (same ids in the same order, same digest)."""
    canonical = json.dumps({name: split_ids.get(name, []) for name in SPLITS},
                           separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def manifest_of(task: Task) -> dict:
    """The manifest of a loaded packaged task: its name, source, seed and split ids."""
    split_ids = task.meta.get("split_ids")
    if not isinstance(split_ids, dict):
        raise ConfigError(f"task {task.name!r} records no split ids",
                          "manifests exist for the packaged task sources (see docs/data.md)")
    return {"format": MANIFEST_FORMAT, "task": task.name, "source": task.source,
            "seed": task.meta.get("seed"), "sha256_16": digest(split_ids),
            "splits": {name: list(split_ids.get(name, [])) for name in SPLITS}}


def write_manifest(task: Task, path: str | Path) -> Path:
    """Save the task's split ids (written atomically)."""
    from recall_merge.io.atomic import write_json

    return write_json(Path(path), manifest_of(task), sort_keys=False)
