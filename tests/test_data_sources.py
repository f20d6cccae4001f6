"""Task sources: HF schema adapters on small local files in each real schema, seeded splits,
BBC News, local JSONL/CSV, the registry, and BIG-bench when its archive is cached."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recall_merge.data.common import SplitSizes, split_examples
from recall_merge.data.registry import load_task
from recall_merge.data.task import DataError, Example, Task
from recall_merge.errors import ConfigError

N = 40
WORDS = ["amber", "basil", "cedar", "delta", "ember", "fjord", "gamma", "harbor", "indigo",
         "juniper", "kelp", "lumen", "maple", "nectar", "onyx", "prism"]


def phrase(i: int) -> str:
    """A distinct short phrase per index."""
    return f"{WORDS[i % 16]} {WORDS[(i // 16) % 16]} number {i}"


# --- records in the exact schemas of the Hugging Face datasets --------------------------------

def sst2_record(i: int) -> dict:
    return {"idx": i, "sentence": f"the film was {phrase(i)}", "label": i % 2}


def ag_news_record(i: int) -> dict:
    return {"text": f"Report on {phrase(i)}", "label": i % 4}


def amazon_record(i: int) -> dict:
    return {"label": i % 2, "title": f"Item {i}", "content": f"The {phrase(i)} arrived"}


def yelp_record(i: int) -> dict:
    return {"label": i % 2, "text": f"Dinner at {phrase(i)}"}


def yelp_full_record(i: int) -> dict:
    return {"label": i % 5, "text": f"Lunch at {phrase(i)}"}


def dbpedia_record(i: int) -> dict:
    return {"label": i % 14, "title": f"Entity {i}", "content": f"{phrase(i)} is a thing"}


def yahoo_record(i: int) -> dict:
    return {"id": i, "topic": i % 10, "question_title": f"Why {phrase(i)}?",
            "question_content": "" if i % 3 else "More details here.",
            "best_answer": f"Because of {phrase(i + 1)}."}


def squad_record(i: int) -> dict:
    context = f"The {phrase(i)} was built in {1900 + i} by the river."
    return {"id": f"q{i}", "title": f"Topic_{i}", "context": context,
            "question": f"When was the {phrase(i)} built?",
            "answers": {"text": [str(1900 + i), f"in {1900 + i}"],
                        "answer_start": [context.index(str(1900 + i))] * 2}}


def iwslt_record(i: int) -> dict:
    return {"translation": {"de": f"Das ist {phrase(i)}.", "en": f"This is {phrase(i)}."}}


def race_record(i: int) -> dict:
    return {"example_id": f"high{i}.txt", "article": f"Tom saw {phrase(i)} today.",
            "question": "What did Tom see?", "answer": "ABCD"[i % 4],
            "options": [f"option {k} for {i}" for k in range(4)]}


def medmcqa_record(i: int) -> dict:
    return {"id": f"m{i}", "question": f"Which drug treats {phrase(i)}?", "exp": "Because.",
            "cop": i % 4, "opa": f"drug a{i}", "opb": f"drug b{i}", "opc": f"drug c{i}",
            "opd": f"drug d{i}", "choice_type": "single", "subject_name": "Pharmacology",
            "topic_name": "misc"}


SCHEMA_RECORDS = {
    "sst2": sst2_record, "ag_news": ag_news_record, "amazon_polarity": amazon_record,
    "yelp_polarity": yelp_record, "yelp_review_full": yelp_full_record,
    "dbpedia_14": dbpedia_record, "yahoo_answers_topics": yahoo_record, "squad": squad_record,
    "iwslt2017": iwslt_record, "race": race_record, "medmcqa": medmcqa_record,
}
EXPECTED_KIND = {"squad": ("generation", "f1"), "iwslt2017": ("generation", "bleu"),
                 "race": ("multiple_choice", "accuracy"),
                 "medmcqa": ("multiple_choice", "accuracy")}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_csv(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        for record in records:
            writer.writerow({key: json.dumps(value) if isinstance(value, (dict, list)) else value
                             for key, value in record.items()})
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def all_examples(task: Task) -> list[Example]:
    return task.train + task.dev + task.test


# --- schema adapters ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCHEMA_RECORDS))
def test_schema_adapter_on_local_jsonl(tmp_path, name):
    records = [SCHEMA_RECORDS[name](i) for i in range(N)]
    task = load_task({"source": "hf", "name": name, "path": write_jsonl(tmp_path / "d.jsonl",
                                                                          records)})
    kind, metric = EXPECTED_KIND.get(name, ("classification", "accuracy"))
    assert (task.kind, task.metric) == (kind, metric)
    examples = all_examples(task)
    assert len(examples) == N
    for example in examples:
        assert example.prompt == example.prompt.strip() and "\n" in example.prompt
        if kind == "generation":
            assert example.choices is None and example.target
        else:
            assert example.target in example.choices
            assert all(choice in example.prompt for choice in example.choices)
    if kind == "classification":
        assert task.meta["labels"] == list(examples[0].choices)
        assert len(set(task.meta["labels"])) == len(task.meta["labels"])


@pytest.mark.parametrize("writer", [write_parquet, write_csv], ids=["parquet", "csv"])
@pytest.mark.parametrize("name", ["squad", "race", "ag_news"])
def test_schema_adapter_on_parquet_and_csv(tmp_path, name, writer):
    records = [SCHEMA_RECORDS[name](i) for i in range(N)]
    suffix = ".parquet" if writer is write_parquet else ".csv"
    from_file = load_task(f"hf:{name}", path=writer(tmp_path / f"d{suffix}", records))
    from_jsonl = load_task(f"hf:{name}", path=write_jsonl(tmp_path / "d.jsonl", records))
    assert all_examples(from_file) == all_examples(from_jsonl)


def by_input(task: Task, needle: str) -> Example:
    return next(example for example in all_examples(task) if needle in example.prompt)


def test_schema_label_mappings(tmp_path):
    sst2 = load_task("hf:sst2", path=write_jsonl(tmp_path / "s.jsonl",
                                                  [sst2_record(i) for i in range(N)]))
    assert by_input(sst2, phrase(3) + "\n").target == "positive"
    assert by_input(sst2, phrase(4) + "\n").target == "negative"
    yahoo = load_task("hf:yahoo_answers_topics",
                      path=write_jsonl(tmp_path / "y.jsonl", [yahoo_record(i) for i in range(N)]))
    assert by_input(yahoo, f"Why {phrase(14)}?").target == "computers & internet"
    dbpedia = load_task("hf:dbpedia_14",
                        path=write_jsonl(tmp_path / "d.jsonl", [dbpedia_record(i) for i in range(N)]))
    assert by_input(dbpedia, f"Entity {13}\n").target == "written work"


def test_squad_keeps_every_answer(tmp_path):
    task = load_task("hf:squad", path=write_jsonl(tmp_path / "q.jsonl",
                                                   [squad_record(i) for i in range(N)]))
    example = by_input(task, f"When was the {phrase(7)} built?")
    assert example.target == "1907"
    assert example.references == ("1907", "in 1907")
    assert example.gold_answers() == ("1907", "in 1907")
    assert "Passage: The " in example.prompt and example.prompt.endswith("Answer:")


def test_squad_drops_unanswerable(tmp_path):
    records = [squad_record(i) for i in range(N)]
    records[0]["answers"] = {"text": [], "answer_start": []}
    task = load_task("hf:squad", path=write_jsonl(tmp_path / "q.jsonl", records))
    assert len(all_examples(task)) == N - 1


def test_race_and_medmcqa_answers(tmp_path):
    race = load_task("hf:race", path=write_jsonl(tmp_path / "r.jsonl",
                                                  [race_record(i) for i in range(N)]))
    example = by_input(race, f"Tom saw {phrase(6)} today.")
    assert example.target == "option 2 for 6" and len(example.choices) == 4
    medmcqa = load_task("hf:medmcqa", path=write_jsonl(tmp_path / "m.jsonl",
                                                        [medmcqa_record(i) for i in range(N)]))
    assert by_input(medmcqa, f"treats {phrase(7)}?").target == "drug d7"


def test_medmcqa_unlabelled_rows_are_dropped(tmp_path):
    records = [medmcqa_record(i) for i in range(N)]
    for record in records[:5]:
        record["cop"] = -1
    task = load_task("hf:medmcqa", path=write_jsonl(tmp_path / "m.jsonl", records))
    assert len(all_examples(task)) == N - 5


def test_iwslt_direction(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [iwslt_record(i) for i in range(N)])
    en_de = by_input(load_task("hf:iwslt2017", path=path), phrase(5) + ".")
    assert en_de.target == f"Das ist {phrase(5)}." and en_de.prompt.endswith("German:")
    de_en = load_task("hf:iwslt2017", path=path, source_lang="de", target_lang="en")
    assert by_input(de_en, f"Das ist {phrase(5)}.").target == f"This is {phrase(5)}."
    with pytest.raises(DataError):
        load_task("hf:iwslt2017", path=path, source_lang="en", target_lang="fr")


def test_wrong_schema_names_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [ag_news_record(i) for i in range(N)])
    with pytest.raises(DataError, match="sentence"):
        load_task("hf:sst2", path=path)


def test_official_splits_from_folder(tmp_path):
    folder = tmp_path / "sst2"
    write_jsonl(folder / "train.jsonl", [sst2_record(i) for i in range(60)])
    write_jsonl(folder / "validation.jsonl", [sst2_record(i) for i in range(100, 120)])
    # GLUE hides test labels (-1): the test split then comes from validation.
    write_jsonl(folder / "test.jsonl", [{**sst2_record(i), "label": -1}
                                        for i in range(200, 220)])
    task = load_task("hf:sst2", path=folder, seed=3)
    test_prompts = {example.prompt for example in task.test}
    assert test_prompts == {example.prompt for example in all_examples(
        load_task("hf:sst2", path=folder / "validation.jsonl", test_fraction=0.0,
                  dev_fraction=0.0))}
    assert len(task.train) + len(task.dev) == 60 and len(task.dev) == 6
    assert not test_prompts & {example.prompt for example in task.train + task.dev}


# --- splits -------------------------------------------------------------------------------------

def bbc_like(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "cls.jsonl",
                       [{"text": phrase(i), "label": ["neg", "pos"][i % 2]} for i in range(200)])


def prompts(examples: list[Example]) -> list[str]:
    return [example.prompt for example in examples]


def test_splits_are_deterministic_and_disjoint(tmp_path):
    spec = {"source": "local", "path": bbc_like(tmp_path), "input_field": "text",
            "target_field": "label", "labels": ["neg", "pos"]}
    first, again, other = (load_task(spec, seed=s) for s in (7, 7, 8))
    assert (first.train, first.dev, first.test) == (again.train, again.dev, again.test)
    assert prompts(first.test) != prompts(other.test)
    train, dev, test = (set(prompts(split)) for split in (first.train, first.dev, first.test))
    assert not (train & dev or train & test or dev & test)
    assert (len(train), len(dev), len(test)) == (140, 20, 40)


def test_caps_take_prefixes_without_moving_examples(tmp_path):
    spec = {"source": "local", "path": bbc_like(tmp_path), "input_field": "text",
            "target_field": "label", "labels": ["neg", "pos"]}
    full = load_task(spec, seed=1)
    capped = load_task(spec, seed=1, n_train=10, n_dev=5, n_test=7)
    assert capped.train == full.train[:10] and capped.dev == full.dev[:5]
    assert capped.test == full.test[:7]
    assert load_task(spec, seed=1, n_train=3).test == full.test


def test_duplicate_prompts_never_cross_splits(tmp_path):
    records = [{"text": phrase(i % 30), "label": "pos"} for i in range(120)]
    task = load_task({"source": "local", "path": write_jsonl(tmp_path / "d.jsonl", records),
                      "input_field": "text", "target_field": "label", "labels": ["neg", "pos"]})
    assert len(all_examples(task)) == 30
    assert len(set(prompts(all_examples(task)))) == 30


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), seed=st.integers(0, 10_000),
       dev=st.floats(0, 0.45), test=st.floats(0, 0.45))
def test_split_examples_partitions_the_pool(n, seed, dev, test):
    pool = [Example(prompt=f"p{i}", target="t") for i in range(n)]
    train_part, dev_part, test_part = split_examples(pool, seed, SplitSizes(dev_fraction=dev,
                                                                             test_fraction=test))
    together = prompts(train_part) + prompts(dev_part) + prompts(test_part)
    assert sorted(together) == sorted(prompts(pool))


def test_bad_split_options():
    with pytest.raises(ConfigError):
        SplitSizes.from_options({"n_train": -1})
    with pytest.raises(ConfigError):
        SplitSizes.from_options({"dev_fraction": 0.6, "test_fraction": 0.5})


# --- BBC News -----------------------------------------------------------------------------------

def test_bbc_headlines_and_labels():
    task = load_task("bbc", seed=0)
    labels = ["business", "entertainment", "politics", "sports", "tech"]
    assert task.kind == "classification" and task.meta["labels"] == labels
    assert task.meta["n_records"] == 2225
    examples = all_examples(task)
    assert 2000 < len(examples) <= 2225  # repeated headlines are kept once
    assert all(example.choices == tuple(labels) for example in examples)
    assert {example.target for example in examples} == set(labels)
    headline = next(line for line in examples[0].prompt.splitlines()
                    if line.startswith("Headline: "))
    assert 0 < len(headline.split()) < 25
    assert load_task("bbc", seed=0, n_test=50).test == task.test[:50]


def test_bbc_reads_files_in_sorted_order():
    from recall_merge.data.bbc import bbc_data_dir, bbc_examples, read_article

    first_business = sorted((bbc_data_dir() / "business").glob("*.txt"))[0]
    headline, _ = read_article(first_business)
    assert f"Headline: {headline}\n" in bbc_examples()[0].prompt


# --- local files --------------------------------------------------------------------------------

def test_local_csv_classification_with_integer_labels(tmp_path):
    rows = [{"review": phrase(i), "stars": str(i % 3)} for i in range(30)]
    path = write_csv(tmp_path / "reviews.csv", rows)
    task = load_task({"source": "local", "path": str(path), "input_field": "review",
                      "target_field": "stars", "labels": ["bad", "ok", "good"],
                      "instruction": "Rate the review."}, n_test=5)
    assert task.name == "reviews" and task.kind == "classification" and len(task.test) == 5
    example = by_input(task, phrase(4) + "\n")
    assert example.target == "ok"
    assert example.prompt.startswith("Rate the review.\n\n")
    assert "Options: bad, ok, good" in example.prompt


def test_local_jsonl_multiple_choice_and_generation(tmp_path):
    records = [{"q": f"Pick {i}", "options": [f"a{i}", f"b{i}"], "answer": f"b{i}",
                "context": phrase(i)} for i in range(20)]
    path = write_jsonl(tmp_path / "mc.jsonl", records)
    mc = load_task(f"local:{path}", input_field=["context", "q"], target_field="answer",
                   choices_field="options")
    example = by_input(mc, "Pick 3\n")
    assert mc.kind == "multiple_choice" and example.choices == ("a3", "b3")
    assert f"Context: {phrase(3)}\nQ: Pick 3" in example.prompt
    gen = load_task(f"local:{path}", input_field="q", target_field="answer", metric="f1")
    assert (gen.kind, gen.metric) == ("generation", "f1")
    assert all(example.choices is None for example in all_examples(gen))


def test_local_errors(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "label": "z"}])
    with pytest.raises(DataError, match="no field 'input'"):
        load_task(f"local:{path}")
    with pytest.raises(DataError, match="not one of labels"):
        load_task(f"local:{path}", input_field="text", target_field="label", labels=["p", "q"])
    with pytest.raises(ConfigError, match="unknown option"):
        load_task(f"local:{path}", input_field="text", target_field="label", colour="red")
    with pytest.raises(DataError, match="does not exist"):
        load_task(f"local:{tmp_path / 'missing.jsonl'}")


# --- registry -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "closest"), [
    ("bbcc", "'bbc'"), ("hf:sst", "'sst2'"), ("hf:agnew", "'ag_news'"), ("localx:a", "'local'"),
])
def test_unknown_names_suggest_the_closest(spec, closest):
    with pytest.raises(ConfigError) as caught:
        load_task(spec)
    assert closest in caught.value.fix


def test_hf_without_path_fails_clearly_offline(monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError) as caught:
        load_task("hf:ag_news")
    assert "path=" in caught.value.fix


# --- BIG-bench (only when the archive or the extracted tasks are cached) -----------------------

def bigbench_cached(*files: str) -> bool:
    """True when the archive, or every named extracted file, is in the cache (or the user
    named a copy in $RECALL_MERGE_BIGBENCH)."""
    from recall_merge.data.bigbench import ARCHIVE_NAME, SOURCE_VARIABLE, bigbench_dir

    if os.environ.get(SOURCE_VARIABLE):
        return True
    extracted = all((bigbench_dir() / "tasks" / file).is_file() for file in files)
    return bool(files) and extracted or (bigbench_dir() / ARCHIVE_NAME).is_file()


needs_bigbench = pytest.mark.skipif(
    not bigbench_cached("intent_recognition/task.json", "sports_understanding/task.json"),
    reason="BIG-bench archive not cached (python -m pip download --no-deps bigbench==1.0.0 "
           "-d ~/.cache/recall-merge/bigbench)")


@needs_bigbench
def test_bigbench_intent_recognition():
    task = load_task("bigbench:intent_recognition", seed=0, n_train=50)
    assert (task.kind, task.metric) == ("classification", "accuracy")
    assert len(task.meta["labels"]) == 7 and len(task.train) == 50
    assert task.meta["n_records"] == 693
    example = task.test[0]
    assert example.target in example.choices and example.prompt.endswith("Intent:")
    assert load_task("bigbench:intent_recognition", seed=0).test == task.test


@needs_bigbench
def test_bigbench_sports_understanding_and_bad_names():
    task = load_task("bigbench:sports_understanding", n_test=20)
    assert set(task.meta["labels"]) == {"plausible", "implausible"} and len(task.test) == 20
    with pytest.raises(ConfigError, match="intent_recognition"):
        load_task("bigbench:intent_recogniton")


@pytest.mark.skipif(not bigbench_cached("multiemo/hotels_sentence_en/task.json"),
                    reason="BIG-bench archive not cached")
def test_bigbench_multiemo_subtask():
    task = load_task("bigbench:multiemo/hotels_sentence_en", n_train=20, n_dev=5, n_test=10)
    assert set(task.meta["labels"]) == {"positive", "negative", "neutral", "ambivalent"}
    assert (len(task.train), len(task.dev), len(task.test)) == (20, 5, 10)


@pytest.mark.skipif(not bigbench_cached("squad_shifts/nyt_v1.0.json"),
                    reason="BIG-bench archive not cached")
def test_bigbench_squad_shifts_domain():
    task = load_task("bigbench:squad_shifts/nyt", n_train=10, n_test=10)
    assert (task.kind, task.metric) == ("generation", "f1")
    assert all(example.target in example.references or not example.references
               for example in task.test)
    assert "Question:" in task.test[0].prompt


# --- BIG-bench text targets read as classification (synthetic task JSON) -----------------------

def _text_target_task(targets: list) -> dict:
    return {"task_prefix": "Name the type of the answer.", "examples": [
        {"input": f"Question {i}: {phrase(i)}?", "target": target}
        for i, target in enumerate(targets)]}


def test_text_targets_read_as_classification():
    from recall_merge.data.bigbench import _task_kind, json_task_examples

    # synthetic targets in the shape of natural-instructions question typing: "Type." strings,
    # some lists naming one type twice, some naming two types (no single right class)
    content = _text_target_task(["Date.", "Humans.", ["Date.", "Date"], ["Entity.", "Humans."],
                                 "Quantity.", "Humans."])
    assert _task_kind(content["examples"], None) == "generation"
    assert _task_kind(content["examples"], "classification") == "classification"
    examples = json_task_examples(content, "classification", seed=0)
    assert [example.target for example in examples] == ["Date", "Humans", "Date", "Quantity",
                                                        "Humans"]
    assert all(example.choices == ("Date", "Humans", "Quantity") for example in examples)
    assert examples[0].prompt.endswith("Options: Date, Humans, Quantity\nAnswer:")


@pytest.mark.parametrize("targets, problem", [
    ([f"free text answer {i}" for i in range(40)], "has 40"),  # generation, not a label set
    (["Date."] * 5, "has 1"),
])
def test_text_targets_that_are_not_a_label_set_are_refused(targets, problem):
    from recall_merge.data.bigbench import _task_kind

    with pytest.raises(ConfigError, match=problem):
        _task_kind(_text_target_task(targets)["examples"], "classification")


@pytest.mark.skipif(not bigbench_cached(
    "natural_instructions/subtask046_miscellaenous_question_typing/task.json"),
    reason="BIG-bench archive not cached")
def test_bigbench_question_typing_as_classification():
    spec = {"source": "bigbench", "kind": "classification",
            "name": "natural_instructions/subtask046_miscellaenous_question_typing"}
    task = load_task(spec, seed=0, n_train=20, n_test=20)
    assert (task.kind, task.metric) == ("classification", "accuracy")
    assert {"Humans", "Date", "Entity", "Location", "Quantity"} <= set(task.meta["labels"])
    assert task.meta["n_records"] < 6500  # multi-type examples are left out
    assert all(example.target in example.choices for example in task.test)
