"""The README's generated tables live between ``<!-- NAME-table ... -->`` and ``<!-- /NAME-table -->``
markers; both benchmark scripts rewrite them through this one helper (standard library only, so
the speed benchmark's driver still never imports torch)."""

from __future__ import annotations

import re


def replace_table(text: str, name: str, body: str) -> str | None:
    """``text`` with the lines between NAME's markers replaced by ``body``; None without markers.
    The opening marker (which names the command that makes the table) is kept as it is."""
    pattern = re.compile(rf"(<!-- {re.escape(name)}-table[^>]*-->\n)(.*?)(<!-- /{re.escape(name)}-table -->)",
                         re.S)
    replaced, count = pattern.subn(lambda match: match.group(1) + body + "\n" + match.group(3), text,
                                   count=1)
    return replaced if count else None
