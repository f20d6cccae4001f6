"""The paper-shaped benchmark tasks built from offline data: ``geo:facts_qa`` (extractive QA over
a passage of GeoNames facts), ``geo:country_mc`` and ``wordnet:definition_mc`` (lettered multiple
choice), and the chrF metric that a translation task can be scored by (``metric=chrf``)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml

from recall_merge.continual.scoring import (
    generation_scores,
    item_metric,
    score_task,
    sentence_chrf,
)
from recall_merge.data import geo, wordnet
from recall_merge.data.lettered import LETTERS, Question, lettered_items, options_of
from recall_merge.data.packaged_tasks import CLDR, GEO, WORDNET, load_items, score_predictions
from recall_merge.data.registry import load_task
from recall_merge.data.task import DataError, Example, Task
from recall_merge.errors import ConfigError

PAPER_TASKS = ("geo:facts_qa", "geo:country_mc", "wordnet:definition_mc", "geo:country_choice",
               "wordnet:definition_choice")


def _folder(spec: str) -> Path:
    data = {"geo": GEO, "wordnet": WORDNET, "cldr": CLDR}[spec.partition(":")[0]]
    if not data.available():  # never fetched or installed from a test: that is setup's job
        pytest.skip(f"{data.pip} is not available (setup.sh installs and fetches it)")
    return data.locate(spec)


def _passage(prompt: str) -> str:
    return prompt.split("Passage: ", 1)[1].split("\nQuestion: ", 1)[0]


def _question(prompt: str) -> str:
    return prompt.split("\nQuestion: ", 1)[1].split("\n", 1)[0]


# --- splits -----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", PAPER_TASKS)
def test_splits_are_disjoint_seeded_and_reproducible(spec: str):
    _folder(spec)
    first, again, other = load_task(spec, seed=0), load_task(spec, seed=0), load_task(spec, seed=1)
    assert first.meta["split_ids"] == again.meta["split_ids"]
    assert (first.train, first.dev, first.test) == (again.train, again.dev, again.test)
    assert other.meta["split_ids"]["test"] != first.meta["split_ids"]["test"]
    ids = first.meta["split_ids"]
    assert not (set(ids["train"]) & set(ids["dev"]) or set(ids["train"]) & set(ids["test"])
                or set(ids["dev"]) & set(ids["test"]))
    prompts = [ex.prompt for split in (first.train, first.dev, first.test) for ex in split]
    assert len(set(prompts)) == len(prompts)
    assert len(first.test) >= 300
    # an item is fixed by its id, not by the seed: the same id has the same prompt and answer
    by_id = dict(zip(ids["test"], first.test, strict=True))
    for item_id, example in zip(other.meta["split_ids"]["train"], other.train, strict=True):
        if item_id in by_id:
            assert by_id[item_id] == example


# --- geo:facts_qa -------------------------------------------------------------------------------

def test_facts_qa_answers_are_spans_of_real_facts():
    """Every acceptable answer is a span of the passage; the asked fact is the GeoNames value;
    every kind of question occurs and the answer's place in the passage varies."""
    folder = _folder("geo:facts_qa")
    items = load_items("geo", "facts_qa")[2]
    cities = {str(city["geonameid"]): (city, country) for city, country in geo.kept_cities(folder)}
    countries = {str(country["geonameid"]): country for country in geo.countries(folder).values()}
    asked, places = Counter(), Counter()
    for item_id, example in items:
        passage, question = _passage(example.prompt), _question(example.prompt)
        assert all(answer in passage for answer in example.gold_answers()), item_id
        assert example.target == example.gold_answers()[0]
        asked[question.split(" ")[3 if question.startswith("What is") else 0]] += 1
        places[10 * passage.index(example.target) // len(passage)] += 1
        if question.startswith("How many inhabitants does"):
            record = cities[item_id][0] if item_id in cities else countries[item_id]
            assert example.target == f"{record['population']:,}"
            # the passage names a second population (another place): the answer is not the
            # only number of its kind
            assert len(re.findall(r"[\d,]+ inhabitants", passage)) == 2, passage
        elif question.startswith("In which country is"):
            assert example.target == cities[item_id][1]["name"]
        elif question.startswith("What is the capital of") and item_id in countries:
            assert example.target == countries[item_id]["capital"].strip()
    assert len(items) == 6013 and {item_id for item_id, _ in items} >= set(cities)
    assert asked.keys() >= {"In", "On", "How", "capital", "currency", "internet", "telephone"}
    assert len(places) == 10 and max(places.values()) < 0.3 * len(items), places


def test_facts_qa_is_scored_by_token_f1():
    _folder("geo:facts_qa")
    task = load_task("geo:facts_qa", n_test=300)
    assert (task.kind, task.metric) == ("generation", "f1")
    golds = [example.target for example in task.test]
    assert score_predictions(task.test, golds, task.kind, task.metric)["f1"] == 1.0
    # a population without its thousands separator is the same answer after normalisation
    population = next(ex for ex in task.test if _question(ex.prompt).startswith("How many"))
    assert score_predictions([population], [population.target.replace(",", "")], "generation",
                             "f1")["f1"] == 1.0
    # SQuAD token F1: "472,317 inhabitants" against "472,317" is P = 1/2, R = 1, F1 = 2/3
    partial = score_predictions([Example("p", "472,317")], ["472,317 inhabitants"],
                                "generation", "f1")
    assert partial["f1"] == pytest.approx(2 / 3) and partial["exact_match"] == 0.0


# --- lettered multiple choice -------------------------------------------------------------------

def _check_lettered(items: list, truth, pool_of) -> None:
    """One correct option per item (``truth(id, prompt)``), three real, distinct distractors
    (``pool_of(id, prompt)`` holds every real candidate), gold letters balanced over the pool."""
    letters = Counter()
    for item_id, example in items:
        options = options_of(example.prompt)
        assert tuple(options) == LETTERS and example.choices == LETTERS, item_id
        assert example.prompt.endswith("\nAnswer:")
        right = truth(item_id, example.prompt)
        assert [letter for letter, text in options.items() if text == right] == [example.target]
        texts = list(options.values())
        assert len({text.casefold() for text in texts}) == 4, texts
        pool = pool_of(item_id, example.prompt)
        assert all(text in pool for text in texts if text != right), (texts, item_id)
        letters[example.target] += 1
    assert max(letters.values()) - min(letters.values()) <= 1, letters


def test_country_mc_has_one_correct_option_and_real_distractors():
    folder = _folder("geo:country_mc")
    items = load_items("geo", "country_mc")[2]
    kept = {str(city["geonameid"]): (city, country) for city, country in geo.kept_cities(folder)}
    by_id = {str(country["geonameid"]): country for country in geo.countries(folder).values()}

    def continent(country: dict) -> str:
        return country["continentcode"]

    def truth(item_id: str, prompt: str) -> str:
        if item_id in kept:
            city, country = kept[item_id]
            assert f"City: {city['name']}\n" in prompt
            return country["name"]
        assert f"Country: {by_id[item_id]['name']}\n" in prompt
        return by_id[item_id]["capital"].strip()  # one capital is stored as " Willemstad"

    # the same continent: countries with a city of 100,000+, or capitals
    with_cities, capitals = defaultdict(set), defaultdict(set)
    for _, country in kept.values():
        with_cities[continent(country)].add(country["name"])
    for country in by_id.values():
        capitals[continent(country)].add(country["capital"].strip())

    def pool_of(item_id: str, prompt: str) -> set[str]:
        if item_id in kept:
            return with_cities[continent(kept[item_id][1])]
        return capitals[continent(by_id[item_id])]

    _check_lettered(items, truth, pool_of)
    assert len(items) == 6013


def test_definition_mc_has_one_correct_option_and_real_distractors():
    folder = _folder("wordnet:definition_mc")
    items = load_items("wordnet", "definition_mc")[2]
    synsets, nouns = wordnet.noun_synsets(folder), wordnet.noun_index(folder)

    def truth(item_id: str, prompt: str) -> str:
        # the definition is the WordNet definition of the noun's first sense
        first = synsets[nouns[item_id].senses[0]]
        assert f"Definition: {first.definition}\n" in prompt
        return item_id

    def pool_of(item_id: str, prompt: str) -> set[str]:
        # real nouns of the same lexicographer file, never a member of the defined synset
        first = nouns[item_id].senses[0]
        home = synsets[first].lexicographer_file
        options = set(options_of(prompt).values()) - {item_id}
        return {noun for noun in options
                if synsets[nouns[noun].senses[0]].lexicographer_file == home
                and first not in nouns[noun].senses}

    _check_lettered(items, truth, pool_of)
    assert len(items) == 7276


def _wordnet_files(folder: Path, senses: dict[str, tuple[int, str, str, list[str]]],
                   index: dict[str, tuple[list[str], int]]) -> Path:
    """data.noun and index.noun of ``senses`` (key → lexicographer file, written word,
    definition, hypernym keys) and ``index`` (noun → sense keys, tagged count)."""
    offsets = {key: 1000 + 100 * k for k, key in enumerate(senses)}
    lines = ["  1 licence header line"]
    for key, (lexfile, word, gloss, hypernyms) in senses.items():
        pointers = " ".join(f"@ {offsets[up]:08d} n 0000" for up in hypernyms)
        lines.append(f"{offsets[key]:08d} {lexfile:02d} n 01 {word} 0 {len(hypernyms):03d} "
                     f"{pointers} | {gloss}; \"an example naming {word}\"")
    (folder / "data.noun").write_text("\n".join(lines) + "\n")
    rows = [f"{noun} n {len(keys)} 0 {len(keys)} {tagged} "
            + " ".join(f"{offsets[key]:08d}" for key in keys)
            for noun, (keys, tagged) in sorted(index.items())]
    (folder / "index.noun").write_text("  1 licence header line\n" + "\n".join(rows) + "\n")
    return folder


def test_definition_mc_reader_keeps_near_meanings_out_of_the_distractors(tmp_path: Path):
    """Synthetic WordNet: a hypernym, a hyponym, a sibling and a noun the definition names are
    never distractors; names, plurals of other nouns, rare nouns and definitions naming their
    own noun give no item; quoted examples are not part of the definition."""
    senses = {"canine": (5, "canine", "a carnivore of the family Canidae", []),
              "dog": (5, "dog", "a domesticated carnivore that barks", ["canine"]),
              "wolf": (5, "wolf", "a wild carnivore that howls", ["canine"]),
              "puppy": (5, "puppy", "a young dog", ["dog"]),
              "cat": (5, "cat", "a small feline that purrs", []),
              "horse": (5, "horse", "a hoofed mammal that people ride", []),
              "cow": (5, "cow", "a bovine kept for milk", []),
              "eel": (5, "eel", "a long snakelike fish", []),
              "gnu": (5, "gnu", "a large gnu of Africa", []),
              "okapi": (5, "okapi", "a rare giraffid", []),
              "state": (15, "Alabama", "a state in the southeastern United States", []),
              "shoes": (26, "shoes", "a particular situation", []),
              "shoe": (6, "shoe", "footwear shaped to fit the foot", []),
              "hammer": (6, "hammer", "a hand tool with a heavy head", []),
              "saw": (6, "saw", "a hand tool with a toothed blade", []),
              "nail": (6, "nail", "a thin pointed piece of metal", [])}
    index = {key: ([key], 1) for key in senses if key != "state"}
    index.update({"alabama": (["state"], 1), "okapi": (["okapi"], 0)})
    items = dict(wordnet.definition_mc_items(_wordnet_files(tmp_path, senses, index)))
    assert sorted(items) == ["canine", "cat", "cow", "dog", "eel", "hammer", "horse", "nail",
                             "puppy", "saw", "shoe", "wolf"]
    for noun, example in items.items():
        assert "an example" not in example.prompt
        options = options_of(example.prompt)
        assert options[example.target] == noun and len(set(options.values())) == 4
    # dog: not its hypernym (canine), sibling (wolf), hyponym (puppy) or a rare noun (okapi);
    # gnu, whose own definition names it, is still a real noun to choose from
    assert set(options_of(items["dog"].prompt).values()) <= {"dog", "cat", "horse", "cow", "eel",
                                                             "gnu"}
    assert "dog" not in options_of(items["puppy"].prompt).values()  # named, and its hypernym
    assert set(options_of(items["saw"].prompt).values()) == {"saw", "shoe", "hammer", "nail"}
    # data.noun damaged: a clear DataError with the fix
    (tmp_path / "data.noun").write_text("00001000 xx n 01 dog 0 000 | a dog\n")
    with pytest.raises(DataError, match="malformed synset line"):
        wordnet.definition_mc_items(tmp_path)


@pytest.mark.parametrize("spec", ["geo:country_mc", "wordnet:definition_mc"])
def test_gold_letters_are_balanced_in_every_four_item_prefix(spec: str):
    _folder(spec)
    task = load_task(spec, seed=4)
    assert task.kind == "multiple_choice" and task.metric == "accuracy"
    for split in (task.dev, task.test):
        for start in range(0, len(split) - 3, 4):
            assert sorted(ex.target for ex in split[start:start + 4]) == list(LETTERS)
    assert score_predictions(task.test, [ex.target for ex in task.test], task.kind) == {
        "accuracy": 1.0}


def test_lettered_items_balance_and_refuse_repeated_options():
    questions = [Question(f"q{k}", "Which?", f"Item: {k}", f"right{k}",
                          (f"a{k}", f"b{k}", f"c{k}")) for k in range(41)]
    items = lettered_items(questions, "toy")
    assert items == lettered_items(questions, "toy")
    counts = Counter(example.target for _, example in items)
    assert sorted(counts.values()) == [10, 10, 10, 11]
    for (item_id, example), question in zip(items, questions, strict=True):
        assert item_id == question.item_id
        assert options_of(example.prompt)[example.target] == question.answer
    with pytest.raises(DataError, match="distinct distractors"):
        lettered_items([Question("x", "Which?", "Item", "same", ("Same", "b", "c"))], "toy")
    with pytest.raises(DataError, match="distinct distractors"):
        lettered_items([Question("x", "Which?", "Item", "a", ("b", "c"))], "toy")


@pytest.mark.parametrize("source, lettered, text", [("geo", "country_mc", "country_choice"),
                                                    ("wordnet", "definition_mc", "definition_choice")])
def test_text_answer_form_asks_the_same_questions_with_the_option_texts(
        source: str, lettered: str, text: str):
    _folder(f"{source}:{lettered}")
    letter_items, text_items = load_items(source, lettered)[2], load_items(source, text)[2]
    assert [item_id for item_id, _ in letter_items] == [item_id for item_id, _ in text_items]
    for (_, by_letter), (_, by_text) in zip(letter_items, text_items, strict=True):
        options = options_of(by_letter.prompt)
        assert by_text.choices == tuple(options[letter] for letter in LETTERS)
        assert by_text.target == options[by_letter.target]
        assert by_text.prompt.splitlines()[-6:-1] == ["Options:"] + [
            f"- {option}" for option in by_text.choices]


def test_lettered_items_text_form_keeps_the_answer_among_the_choices():
    questions = [Question(f"q{k}", "Which?", f"Item: {k}", f"right{k}",
                          (f"a{k}", f"b{k}", f"c{k}")) for k in range(9)]
    items = lettered_items(questions, "toy", answer_with="text")
    for (_, example), question in zip(items, questions, strict=True):
        assert example.target == question.answer and example.target in example.choices
        assert sorted(example.choices) == sorted([question.answer, *question.distractors])
        assert "letter" not in example.prompt


# --- chrF -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("hypothesis, reference", [
    ("le chat est sur le tapis", "le chat est sur le tapis"),
    ("le chien est sur le tapis", "le chat est sur le tapis"),
    ("Allemagne", "allemand"),
    ("", "Espagnol"),
    ("Sprache der Zeichen", "Gebärdensprache"),
])
def test_chrf_per_item_matches_sacrebleu(hypothesis: str, reference: str):
    import sacrebleu

    expected = sacrebleu.sentence_chrf(hypothesis, [reference]).score / 100.0
    assert sentence_chrf(hypothesis, [reference]) == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= sentence_chrf(hypothesis, [reference]) <= 1.0


def test_chrf_takes_the_best_reference_and_its_mean_is_the_task_score():
    import sacrebleu

    best = max(sacrebleu.sentence_chrf("flamme", [ref]).score for ref in ("feu", "flamme")) / 100
    assert sentence_chrf("flamme", ("feu", "flamme")) == pytest.approx(best) == pytest.approx(1.0)
    predictions, references = ["allemand", "anglais"], [("allemand",), ("espagnol", "castillan")]
    scores = generation_scores(predictions, references, with_bleu=False, with_chrf=True)
    items = [sentence_chrf(p, refs) for p, refs in zip(predictions, references, strict=True)]
    assert scores["chrf"] == pytest.approx(sum(items) / 2)
    assert "chrf" not in generation_scores(predictions, references, with_bleu=False)
    task = Task("t", "generation", "chrf", [], [], [])
    assert item_metric(task) == "chrf"


def test_a_translation_task_can_be_scored_by_chrf():
    _folder("cldr:language")
    plain = load_task("cldr:language", n_test=20)
    scored = load_task({"source": "cldr", "name": "language", "metric": "chrf"}, n_test=20)
    assert (plain.metric, scored.metric) == ("exact_match", "chrf")
    assert scored.test == plain.test and scored.meta["split_ids"] == plain.meta["split_ids"]
    assert load_task("cldr:language", metric="CHRF", n_test=1).metric == "chrf"
    golds = [example.target for example in scored.test]
    assert score_predictions(scored.test, golds, scored.kind, scored.metric)["chrf"] == \
        pytest.approx(1.0)


def test_score_task_keeps_sentence_chrf_per_item(tiny_models):
    from recall_merge.continual.training import load_causal_lm
    from recall_merge.recall.representations import load_tokenizer

    _folder("cldr:language")
    task = load_task({"source": "cldr", "name": "language", "metric": "chrf"}, n_test=4)
    model = load_causal_lm(tiny_models["base"])
    scores = score_task(model, load_tokenizer(tiny_models["base"]), task, task.test, 4, 48, 3)
    assert scores["items_metric"] == "chrf" and len(scores["items"]) == 4
    assert all(0.0 <= value <= 1.0 for value in scores["items"])
    assert scores["score"] == scores["chrf"] == pytest.approx(sum(scores["items"]) / 4)


# --- bad options --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, problem", [
    ({"source": "cldr", "name": "language", "metric": "bleurt"}, "metric='bleurt' is not a metric"),
    ({"source": "geo", "name": "country_mc", "metric": "chrf"}, "a multiple-choice task"),
    ({"source": "geo", "name": "facts_qa", "metric": ["f1"]}, "is not a metric for geo:facts_qa"),
    ({"source": "geo", "name": "facts_qa", "answer": "letter"}, "unknown option(s)"),
    ("geo:facts_q", "did you mean 'geo:facts_qa'"),
])
def test_bad_options_are_refused_with_the_fix(spec, problem: str):
    _folder("cldr:language")
    with pytest.raises(ConfigError) as raised:
        load_task(spec)
    assert problem in str(raised.value) and raised.value.fix


def test_the_cli_refuses_a_bad_metric_with_exit_2(tiny_models, tmp_path, capsys):
    from recall_merge.cli import main as cli_main

    _folder("cldr:language")
    config = {"model": str(tiny_models["base"]), "run_dir": str(tmp_path / "run"),
              "strategies": ["sequential"],
              "tasks": [{"source": "cldr", "name": "language", "metric": "blue"}]}
    path = tmp_path / "continual.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert cli_main(["continual", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "metric='blue' is not a metric for cldr:language" in err
    assert "fix: use metric=exact_match or" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
