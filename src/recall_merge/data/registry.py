"""One entry point for every task source: ``load_task("bigbench:intent_recognition")``.

Spec strings are ``SOURCE[:NAME]``: ``bigbench:multiemo/hotels_sentence_en``, ``bbc``,
``lexicon:word_sentiment``, ``local:data/reviews.jsonl``, ``hf:sst2``. The dict form carries options as well::

    {"source": "hf", "name": "sst2", "path": "data/sst2/", "n_train": 200}
    {"source": "local", "name": "reviews", "path": "reviews.csv", "input_field": "text",
     "target_field": "label", "labels": ["negative", "positive"]}

A local task is called by its ``name`` (without one: the file or folder name).

Keyword arguments to :func:`load_task` are merged over the dict's options.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from recall_merge.data.packaged_tasks import PACKAGED_SOURCES
from recall_merge.data.packaged_tasks import loaders as packaged_loaders
from recall_merge.data.task import Task
from recall_merge.errors import ConfigError

SOURCES = ("bigbench", "bbc", "lexicon", "local", "hf", *PACKAGED_SOURCES)


def _closest(name: str, candidates: list[str], canonical: dict[str, str] | None = None) -> str:
    """'did you mean X?' with X the nearest candidate (an alias shown as its canonical name)."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.4)
    if not close:
        return f"valid names: {', '.join(candidates)}"
    return f"did you mean {(canonical or {}).get(close[0], close[0])!r}?"


def parse_spec(spec: str | dict) -> tuple[str, str | None, dict]:
    """(source, name, options) from a spec string or dict; the dict is not modified."""
    if isinstance(spec, dict):
        options = dict(spec)
        source = str(options.pop("source", "")).strip().lower()
        name = options.pop("name", None)
        if not source and isinstance(name, str) and ":" in name:
            source, _, name = name.partition(":")
    elif isinstance(spec, str):
        source, _, name = spec.strip().partition(":")
        source, name, options = source.lower(), name or None, {}
    else:
        raise ConfigError(f"a task spec must be a string or a dict, got {type(spec).__name__}",
                          "write e.g. 'bigbench:intent_recognition' or {'source': 'bbc'}")
    if source not in SOURCES:
        raise ConfigError(f"unknown task source {source!r} in {spec!r}",
                          f"{_closest(source, list(SOURCES))} Sources: {', '.join(SOURCES)}")
    return source, name, options


def _load_bigbench(name: str | None, seed: int, options: dict) -> Task:
    from recall_merge.data.bigbench import load_bigbench

    if not name:
        raise ConfigError("a bigbench spec needs a task name",
                          "write e.g. 'bigbench:intent_recognition'")
    return load_bigbench(name, seed=seed, **options)


def _load_bbc(name: str | None, seed: int, options: dict) -> Task:
    from recall_merge.data.bbc import load_bbc

    if name and name.lower() not in ("news", "bbc", "headline", "headlines"):
        raise ConfigError(f"unknown bbc variant {name!r}", "write just 'bbc'")
    return load_bbc(seed=seed, **options)


def _load_lexicon(name: str | None, seed: int, options: dict) -> Task:
    from recall_merge.data.lexicons import load_lexicon_task

    return load_lexicon_task(name, seed=seed, **options)


def _load_local(name: str | None, seed: int, options: dict) -> Task:
    from recall_merge.data.local import load_local

    path = options.pop("path", None)
    if not path:
        # 'local:PATH' (or a dict without `path`): the name is the path, the task is named after it
        path, name = name, None
    if not path:
        raise ConfigError("a local spec needs a path",
                          "write 'local:PATH' or {'source': 'local', 'path': PATH, ...}")
    if name:  # {'source': 'local', 'name': N, 'path': P}: the task is called N
        options.setdefault("name", name)
    return load_local(path, seed=seed, **options)


def _load_hf(name: str | None, seed: int, options: dict) -> Task:
    from recall_merge.data.hf_schemas import ALIASES, load_hf, schema_names

    names = schema_names()
    if not name or name.strip().lower() not in names:
        raise ConfigError(f"unknown Hugging Face schema {name!r}",
                          _closest((name or "").lower(), names, ALIASES))
    return load_hf(name, seed=seed, **options)


LOADERS: dict[str, Callable[[str | None, int, dict], Task]] = {
    "bigbench": _load_bigbench, "bbc": _load_bbc, "lexicon": _load_lexicon, "local": _load_local,
    "hf": _load_hf,
}
LOADERS.update(packaged_loaders())  # rt, geo, lemma, names, cldr, emoji, afinn


def load_task(spec: str | dict, seed: int = 0, **options) -> Task:
    """Load a task from any source with seeded, disjoint train/dev/test splits.

    ``options`` (caps such as ``n_train=200, n_dev=50, n_test=100`` and source options) are
    merged over those of a dict spec. Unknown sources, names and options raise ConfigError.
    """
    source, name, spec_options = parse_spec(spec)
    return LOADERS[source](name, seed, {**spec_options, **options})
