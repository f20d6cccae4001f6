"""Adapters from Hugging Face ``datasets`` record schemas to Examples.

Each schema knows its hub id, its fields, its label names and how to frame a prompt. Records
come from ``datasets.load_dataset`` (when the hub is reachable) or from local JSONL / JSON /
CSV / Parquet files in exactly the same schema (``path=...``), which is how they are tested.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from recall_merge.data.common import (
    SPLIT_OPTIONS,
    SplitSizes,
    frame_prompt,
    make_task,
    reject_unknown,
)
from recall_merge.data.local import read_splits, to_examples
from recall_merge.data.task import DataError, Example, Metric, Task, TaskKind

Converter = Callable[[dict, "Schema", dict], "Example | None"]
LANGUAGES = {"en": "English", "de": "German", "fr": "French", "it": "Italian", "nl": "Dutch",
             "ro": "Romanian", "ar": "Arabic", "ja": "Japanese", "ko": "Korean",
             "zh": "Chinese"}
HUB_SPLITS = {"train": "train", "validation": "dev", "test": "test"}


@dataclass(frozen=True)
class Schema:
    """One dataset schema: where it lives on the hub and how a record becomes an Example."""

    name: str
    hub: tuple[str, str | None]
    kind: TaskKind
    metric: Metric
    instruction: str
    convert: Converter
    labels: tuple[str, ...] | None = None
    answer_cue: str = "Answer:"
    description: str = ""


def label_of(value, labels: tuple[str, ...]) -> str | None:
    """A label index (int or digit string) or name as label text; None when unlabelled (-1)."""
    if value is None:
        return None
    text = str(value).strip()
    if text in labels:
        return text
    if text.lstrip("-").isdigit():
        index = int(text)
        return labels[index] if 0 <= index < len(labels) else None
    raise DataError(f"label {value!r} is neither an index nor one of {list(labels)}",
                    "check that the file follows the dataset's schema")


def _classify(record: dict, schema: Schema, body: str, label_field: str) -> Example | None:
    """Shared tail of every classification schema: label lookup and prompt framing."""
    assert schema.labels is not None
    target = label_of(record.get(label_field), schema.labels)
    if target is None:
        return None
    prompt = frame_prompt(schema.instruction, body, schema.labels, schema.answer_cue)
    return Example(prompt, target, schema.labels)


def _need(record: dict, *fields: str) -> None:
    missing = [name for name in fields if name not in record]
    if missing:
        raise DataError(f"record lacks field(s) {missing} (has {sorted(record)})",
                        "give files in the dataset's own schema (see hf_schemas.SCHEMAS)")


def _sst2(record: dict, schema: Schema, options: dict) -> Example | None:
    _need(record, "sentence", "label")
    return _classify(record, schema, f"Sentence: {record['sentence'].strip()}", "label")


def _text_label(record: dict, schema: Schema, options: dict) -> Example | None:
    _need(record, "text", "label")
    return _classify(record, schema, f"Text: {record['text'].strip()}", "label")


def _title_content(record: dict, schema: Schema, options: dict) -> Example | None:
    _need(record, "title", "content", "label")
    body = f"Title: {record['title'].strip()}\nContent: {record['content'].strip()}"
    return _classify(record, schema, body, "label")


def _yahoo(record: dict, schema: Schema, options: dict) -> Example | None:
    _need(record, "question_title", "question_content", "best_answer", "topic")
    lines = [f"Question: {record['question_title'].strip()}"]
    if (record.get("question_content") or "").strip():
        lines.append(f"Details: {record['question_content'].strip()}")
    lines.append(f"Best answer: {(record.get('best_answer') or '').strip()}")
    return _classify(record, schema, "\n".join(lines), "topic")


def _maybe_json(value):
    """Nested fields arrive as JSON strings from CSV files."""
    return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value


def _squad(record: dict, schema: Schema, options: dict) -> Example | None:
    _need(record, "context", "question", "answers")
    answers = _maybe_json(record["answers"])
    texts = [text.strip() for text in (answers.get("text") or []) if text.strip()]
    if not texts:
        return None  # unanswerable (SQuAD 2.0 style): nothing to score against
    body = (f"Title: {str(record.get('title', '')).replace('_', ' ').strip()}\n"
            f"Passage: {record['context'].strip()}\nQuestion: {record['question'].strip()}")
    prompt = frame_prompt(schema.instruction, body, answer_cue=schema.answer_cue)
    return Example(prompt, texts[0], None, tuple(dict.fromkeys(texts)))


def _iwslt(record: dict, schema: Schema, options: dict) -> Example | None:
    _need(record, "translation")
    pair = _maybe_json(record["translation"])
    source, target = options.get("source_lang", "en"), options.get("target_lang", "de")
    if source not in pair or target not in pair:
        raise DataError(f"translation record has languages {sorted(pair)}, not {source}/{target}",
                        "set source_lang / target_lang to the pair the files hold")
    source_name, target_name = LANGUAGES.get(source, source), LANGUAGES.get(target, target)
    instruction = f"Translate the following {source_name} text into {target_name}."
    prompt = frame_prompt(instruction, f"{source_name}: {pair[source].strip()}",
                          answer_cue=f"{target_name}:")
    return Example(prompt, pair[target].strip())


def _mc_example(schema: Schema, body: str, options_text: list[str], index: int | None):
    if index is None or not 0 <= index < len(options_text):
        return None
    prompt = frame_prompt(schema.instruction, body, options_text, schema.answer_cue,
                          choices_on_lines=True)
    return Example(prompt, options_text[index], tuple(options_text))


def _letter_index(value) -> int | None:
    """'A'..'Z' → 0..25, an int (or digit string) → itself; -1 and blanks → None."""
    text = str(value).strip()
    if len(text) == 1 and text.isalpha():
        return ord(text.upper()) - ord("A")
    if text.lstrip("-").isdigit() and int(text) >= 0:
        return int(text)
    return None


def _race(record: dict, schema: Schema, options: dict) -> Example | None:
    _need(record, "article", "question", "options", "answer")
    choices = [str(option).strip() for option in _maybe_json(record["options"])]
    body = f"Article: {record['article'].strip()}\nQuestion: {record['question'].strip()}"
    return _mc_example(schema, body, choices, _letter_index(record["answer"]))


def _medmcqa(record: dict, schema: Schema, options: dict) -> Example | None:
    _need(record, "question", "opa", "opb", "opc", "opd", "cop")
    choices = [str(record[key]).strip() for key in ("opa", "opb", "opc", "opd")]
    body = f"Question: {record['question'].strip()}"
    return _mc_example(schema, body, choices, _letter_index(record["cop"]))


_SENTIMENT = ("negative", "positive")
SCHEMAS: dict[str, Schema] = {schema.name: schema for schema in (
    Schema("sst2", ("glue", "sst2"), "classification", "accuracy",
           "Is the sentiment of this movie review sentence positive or negative?", _sst2,
           _SENTIMENT, "Sentiment:", "SST-2 movie review sentiment (GLUE)"),
    Schema("ag_news", ("fancyzhx/ag_news", None), "classification", "accuracy",
           "Classify the topic of this news article.", _text_label,
           ("world", "sports", "business", "science/technology"), "Topic:", "AG News topics"),
    Schema("amazon_polarity", ("fancyzhx/amazon_polarity", None), "classification", "accuracy",
           "Is this product review positive or negative?", _title_content, _SENTIMENT,
           "Sentiment:", "Amazon review polarity"),
    Schema("yelp_polarity", ("fancyzhx/yelp_polarity", None), "classification", "accuracy",
           "Is this restaurant review positive or negative?", _text_label, _SENTIMENT,
           "Sentiment:", "Yelp review polarity"),
    Schema("yelp_review_full", ("Yelp/yelp_review_full", None), "classification", "accuracy",
           "How many stars does this review give?", _text_label,
           ("1 star", "2 stars", "3 stars", "4 stars", "5 stars"), "Rating:", "Yelp stars"),
    Schema("dbpedia_14", ("fancyzhx/dbpedia_14", None), "classification", "accuracy",
           "Classify the type of entity this Wikipedia article is about.", _title_content,
           ("company", "educational institution", "artist", "athlete", "office holder",
            "mean of transportation", "building", "natural place", "village", "animal",
            "plant", "album", "film", "written work"), "Type:", "DBpedia ontology classes"),
    Schema("yahoo_answers_topics", ("community-datasets/yahoo_answers_topics", None),
           "classification", "accuracy", "Classify the topic of this question and answer.",
           _yahoo, ("society & culture", "science & mathematics", "health",
                    "education & reference", "computers & internet", "sports",
                    "business & finance", "entertainment & music",
                    "family & relationships", "politics & government"),
           "Topic:", "Yahoo! Answers topics"),
    Schema("squad", ("rajpurkar/squad", None), "generation", "f1",
           "Answer the question with a short span copied from the passage.", _squad,
           description="SQuAD v1.1 extractive question answering"),
    Schema("iwslt2017", ("IWSLT/iwslt2017", "iwslt2017-en-de"), "generation", "bleu",
           "", _iwslt, description="IWSLT 2017 TED talk translation"),
    Schema("race", ("ehovy/race", "all"), "multiple_choice", "accuracy",
           "Read the article and choose the correct answer to the question.", _race,
           description="RACE reading comprehension"),
    Schema("medmcqa", ("openlifescienceai/medmcqa", None), "multiple_choice", "accuracy",
           "Choose the correct answer to this medical exam question.", _medmcqa,
           description="MedMCQA medical entrance exam questions"),
)}
ALIASES = {"glue/sst2": "sst2", "sst-2": "sst2", "yelp": "yelp_polarity", "dbpedia": "dbpedia_14",
           "yahoo": "yahoo_answers_topics", "yahoo_answers": "yahoo_answers_topics",
           "iwslt": "iwslt2017", "amazon": "amazon_polarity", "agnews": "ag_news"}
HF_OPTIONS = ("path", "hub", "hub_config", "source_lang", "target_lang")


def schema_names() -> list[str]:
    """Every accepted name (schemas and aliases)."""
    return sorted({*SCHEMAS, *ALIASES})


def get_schema(name: str) -> Schema:
    """The schema for ``name`` (aliases accepted); KeyError when unknown."""
    key = name.strip().lower()
    return SCHEMAS[ALIASES.get(key, key)]


def load_hub_splits(hub: tuple[str, str | None], seed: int, limit: int | None) -> dict:
    """Records per split through ``datasets.load_dataset``; ``limit`` keeps a seeded sample
    of each split so million-row datasets are not converted whole."""
    try:
        import datasets

        loaded = datasets.load_dataset(hub[0], hub[1])
    except Exception as error:  # noqa: BLE001 - any hub failure gets the same advice
        raise DataError(f"cannot load {hub[0]}{'/' + hub[1] if hub[1] else ''} from the "
                        f"Hugging Face hub: {type(error).__name__}: {error}",
                        "pass path=... pointing at local JSONL/Parquet/CSV files in the same "
                        "schema (a file, or a folder with train.*/validation.*/test.*)") from error
    splits = {}
    for split_name, dataset in loaded.items():
        if split_name in HUB_SPLITS:
            if limit is not None and len(dataset) > limit:
                dataset = dataset.shuffle(seed=seed).select(range(limit))
            splits[HUB_SPLITS[split_name]] = list(dataset)
    return splits


def load_hf(name: str, seed: int = 0, **options) -> Task:
    """A Task from a Hugging Face dataset schema, from the hub or from ``path=`` files.

    Options: ``path`` (local file, folder of split files, or {split: file}), ``hub`` /
    ``hub_config`` (override the hub id), ``source_lang`` / ``target_lang`` (IWSLT), and the
    split options n_train, n_dev, n_test, dev_fraction, test_fraction.
    """
    schema = get_schema(name)
    sizes = SplitSizes.from_options(options)
    path = options.pop("path", None)
    hub = (options.pop("hub", schema.hub[0]), options.pop("hub_config", schema.hub[1]))
    converter_options = {key: options.pop(key) for key in ("source_lang", "target_lang")
                         if key in options}
    reject_unknown(f"hf:{schema.name}", options, (*HF_OPTIONS, *SPLIT_OPTIONS))
    if path is not None:
        records, source = read_splits(path), f"local files {path}"
    else:
        records, source = load_hub_splits(hub, seed, _hub_limit(sizes)), f"hub {hub[0]}"
    examples = to_examples(records, lambda record: schema.convert(record, schema,
                                                                    converter_options))
    meta = {"schema": schema.name, **converter_options}
    if schema.labels:
        meta["labels"] = list(schema.labels)
    return make_task(schema.name, schema.kind, schema.metric, examples, seed, sizes,
                     description=schema.description, source=source, meta=meta)


def _hub_limit(sizes: SplitSizes) -> int | None:
    """Rows worth converting per hub split: twice what the caps ask for, with slack for
    duplicates and for dev carved out of train; None when any cap is open."""
    caps = (sizes.n_train, sizes.n_dev, sizes.n_test)
    return None if any(cap is None for cap in caps) else 2 * sum(caps) + 100

