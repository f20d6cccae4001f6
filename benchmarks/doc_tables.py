"""Generated tables live in the docs between ``<!-- NAME-table ... -->`` and ``<!-- /NAME-table -->``
markers (docs/benchmarks.md, docs/speed.md, and the headline table in README.md); both benchmark
scripts rewrite them through this one helper. Standard library only, so the speed benchmark's
driver still never imports torch."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path


def replace_table(text: str, name: str, body: str) -> str | None:
    """``text`` with the lines between NAME's markers replaced by ``body``; None without markers.
    The opening marker (which names the command that makes the table) is kept as it is."""
    pattern = re.compile(rf"(<!-- {re.escape(name)}-table[^>]*-->\n)(.*?)(<!-- /{re.escape(name)}-table -->)",
                         re.S)
    replaced, count = pattern.subn(lambda match: match.group(1) + body + "\n" + match.group(3), text,
                                   count=1)
    return replaced if count else None


def rewrite_tables(path: Path, bodies: dict[str, Callable[[], str]]) -> list[str]:
    """Rewrite, in the file at ``path``, every table of ``bodies`` whose markers the file has; the
    names rewritten, in ``bodies``' order. A body is only built when its markers are there."""
    text = path.read_text(encoding="utf-8")
    done = []
    for name, body in bodies.items():
        if replace_table(text, name, "") is None:  # no markers in this file: not its table
            continue
        text = replace_table(text, name, body())
        done.append(name)
    path.write_text(text, encoding="utf-8")
    return done
