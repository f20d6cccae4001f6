"""Task sources that need no download: the packaged lexicons, and BIG-bench from a user's copy.

The BIG-bench tests build a synthetic task (made-up sentences, not BIG-bench data) inside a
synthetic archive or checkout; the lexicon parsers are checked on synthetic lines in each
package's format, and on the real packages where setup.sh installed them.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections import Counter

import pytest

from recall_merge.data.registry import load_task
from recall_merge.data.task import DataError
from recall_merge.errors import ConfigError

# --- BIG-bench from $RECALL_MERGE_BIGBENCH (synthetic task) ------------------------------------

TOY_TASK = {"description": "Synthetic: is the number even?", "task_prefix": "",
            "examples": [{"input": f"Number {i}.", "target_scores": {"even": int(i % 2 == 0),
                                                                      "odd": int(i % 2 == 1)}}
                         for i in range(40)]}


@pytest.fixture()
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECALL_MERGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RECALL_MERGE_BIGBENCH", raising=False)
    return tmp_path


def _write_tarball(path, prefix: str) -> None:
    data = json.dumps(TOY_TASK).encode()
    with tarfile.open(path, "w:gz") as tar:
        member = tarfile.TarInfo(f"{prefix}bigbench/benchmark_tasks/toy_parity/task.json")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))


@pytest.mark.parametrize("prefix", ["bigbench-1.0.0/", "BIG-bench-main/"])
def test_bigbench_from_a_user_archive(empty_cache, monkeypatch, prefix):
    archive = empty_cache / "copy.tar.gz"
    _write_tarball(archive, prefix)
    monkeypatch.setenv("RECALL_MERGE_BIGBENCH", str(archive))
    task = load_task("bigbench:toy_parity", seed=0, n_test=8)
    assert (task.kind, task.meta["labels"], len(task.test)) == ("classification", ["even", "odd"], 8)
    assert all(example.target in ("even", "odd") for example in task.test)
    from recall_merge.data.bigbench import task_index

    assert task_index() == ["toy_parity"]


def test_bigbench_from_a_user_checkout(empty_cache, monkeypatch):
    folder = empty_cache / "BIG-bench" / "bigbench" / "benchmark_tasks" / "toy_parity"
    folder.mkdir(parents=True)
    (folder / "task.json").write_text(json.dumps(TOY_TASK))
    monkeypatch.setenv("RECALL_MERGE_BIGBENCH", str(empty_cache / "BIG-bench"))
    assert len(load_task("bigbench:toy_parity", seed=0).test) == 8  # 20% of 40
    with pytest.raises(ConfigError, match="toy_parity"):  # the index names the closest task
        load_task("bigbench:toy_parity_x")


def test_bigbench_user_source_errors(empty_cache, monkeypatch):
    monkeypatch.setenv("RECALL_MERGE_BIGBENCH", str(empty_cache / "missing.tar.gz"))
    with pytest.raises(DataError, match="does not exist"):
        load_task("bigbench:toy_parity")
    (empty_cache / "not_bigbench").mkdir()
    monkeypatch.setenv("RECALL_MERGE_BIGBENCH", str(empty_cache / "not_bigbench"))
    with pytest.raises(DataError, match="benchmark_tasks"):
        load_task("bigbench:toy_parity")


def test_bigbench_without_archive_names_the_fix(empty_cache):
    with pytest.raises(DataError, match="not in the cache") as error:
        load_task("bigbench:toy_parity", download=False)
    assert "pip download --no-deps bigbench==1.0.0" in error.value.fix


# --- lexicon parsers on synthetic lines in each package's format -------------------------------

def test_word_sentiment_keeps_clear_plain_words(tmp_path):
    from recall_merge.data.lexicons import word_sentiment_examples

    path = tmp_path / "vader_lexicon.txt"
    path.write_text("good\t1.9\t0.9\t[2, 2]\nbad\t-2.5\t0.5\t[-2, -3]\nmeh\t-0.3\t0.4\t[0, -1]\n"
                    ":-)\t1.3\t0.4\t[1, 1]\nLove\t3.0\t0.1\t[3, 3]\n")
    examples = word_sentiment_examples(path)
    assert [(e.prompt.split("Word: ")[1].split("\n")[0], e.target) for e in examples] == [
        ("good", "positive"), ("bad", "negative")]
    assert examples[0].prompt.endswith("Sentiment:") and examples[0].choices == ("negative", "positive")


def test_syllables_from_stress_marks(tmp_path):
    from recall_merge.data.lexicons import syllable_count, syllables_examples

    assert syllable_count("B AH0 N AE1 N AH0".split()) == 3
    path = tmp_path / "cmudict.dict"
    path.write_text("banana B AH0 N AE1 N AH0\nbanana(2) B AH0 N AA1 N AH0\ncat K AE1 T # comment\n"
                    "a AH0\nunbelievably AH2 N B IH0 L IY1 V AH0 B L IY0\n")
    examples = syllables_examples(path)
    assert [e.target for e in examples] == ["3", "1"]  # 'a' too short, 6 syllables out of range


def test_past_tense_keeps_every_listed_form(tmp_path):
    from recall_merge.data.lexicons import past_tense_examples

    path = tmp_path / "infl_lu.csv.gz"
    with gzip.open(path, "wt") as rows:
        rows.write("walk,verb,walked,,walking,walks\ndream,verb,dreamed/dreamt,,dreaming,dreams\n"
                   "Bogart,verb,Bogarted,,Bogarting,Bogarts\ncat,noun,cats\n")
    examples = past_tense_examples(path)
    assert [(e.target, e.references) for e in examples] == [
        ("walked", ("walked",)), ("dreamed", ("dreamed", "dreamt"))]
    assert examples[0].choices is None and examples[0].prompt.endswith("Past tense:")


def test_plural_needs_a_changed_form(tmp_path):
    from recall_merge.data.lexicons import past_tense_examples, plural_examples

    path = tmp_path / "infl_lu.csv.gz"
    with gzip.open(path, "wt") as rows:
        rows.write("cat,noun,cats\nfish,noun,fish/fishes\nrice,noun,rice\nmouse,noun,mice\n"
                   "cut,verb,cut,,cutting,cuts\n")
    assert [(e.target, e.references) for e in plural_examples(path)] == [
        ("cats", ("cats",)), ("fishes", ("fishes",)), ("mice", ("mice",))]
    assert [e.target for e in past_tense_examples(path)] == ["cut"]  # a past may equal its lemma


def test_unknown_lexicon_task_and_options():
    with pytest.raises(ConfigError, match="lexicon:word_sentiment"):
        load_task("lexicon:sentiment")
    with pytest.raises(ConfigError, match="unknown option"):
        load_task("lexicon:word_sentiment", labels=["a"])


# --- the real packages (installed by setup.sh) ----------------------------------------------

def _installed(name: str) -> bool:
    from recall_merge.data.lexicons import lexicon_file

    try:
        return lexicon_file(name).is_file()
    except DataError:
        return False


@pytest.mark.parametrize("name, kind, records", [
    ("word_sentiment", "classification", 5552),
    ("syllables", "classification", 113064),
    ("past_tense", "generation", 6464),
    ("plural", "generation", 14604),
])
def test_real_lexicon_tasks(name, kind, records):
    if not _installed(name):
        pytest.skip(f"the package behind lexicon:{name} is not installed (setup.sh installs it)")
    task = load_task(f"lexicon:{name}", seed=0, n_train=50, n_test=40)
    assert (task.kind, task.meta["n_records"], len(task.train), len(task.test)) == (
        kind, records, 50, 40)
    assert load_task(f"lexicon:{name}", seed=0, n_test=40).test == task.test  # seeded
    assert not {e.prompt for e in task.train} & {e.prompt for e in task.test}
    if kind == "classification":
        assert len(Counter(e.target for e in task.test)) >= 2
