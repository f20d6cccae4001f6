"""``python -m recall_merge.continual CONFIG.yaml [--quiet]`` (the same as ``recall continual``)."""

from __future__ import annotations

import sys

from recall_merge.continual.runner import main
from recall_merge.errors import RecallError

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--quiet"]
    if len(args) != 1:
        print("usage: python -m recall_merge.continual CONFIG.yaml [--quiet]", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(main(args[0], quiet="--quiet" in sys.argv))
    except RecallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
