"""``python -m recall_merge.data.fetch_debian``: fetch and unpack the Debian packages the packaged
task sources read (data/debian.py), reporting each failure; exit 1 if any failed."""

from __future__ import annotations

import sys

from recall_merge.data.debian import main

if __name__ == "__main__":
    sys.exit(main())
