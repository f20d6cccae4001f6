#!/usr/bin/env bash
# The continual benchmark's remaining grid (docs/benchmarks.md#running-the-whole-grid), in two
# lanes, one per core; each line is a durable run.py call that skips what is on disk and writes
# its sequence's results after every (order, strategy) cell, so a stopped lane loses at most the
# cell in flight. What committed results already hold is rerun only where its run folder is gone
# (another machine): run.py then retrains the experts and rebuilds those cells (same seed, same
# R rows: benchmarks/results/continual_reproduce.json).
#
#   nohup bash benchmarks/continual/grid.sh A > /dev/null 2>&1 &
#   nohup bash benchmarks/continual/grid.sh B > /dev/null 2>&1 &
#
# Logs: $RECALL_MERGE_CACHE/benchmark_runs/logs/LANE.log. The order follows what the issues need
# first: the development sequence's three orders (the default is chosen there), then each held-out
# sequence at seed 0, then seed 1 of the main strategies.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
LOGS="${RECALL_MERGE_CACHE:-$HOME/.cache/recall-merge}/benchmark_runs/logs"
mkdir -p "$LOGS"
run() { python benchmarks/continual/run.py --quiet "$@" >> "$LOGS/$LANE.log" 2>&1; }
LANE=${1:?lane A or B}
case "$LANE" in
A)
  run --sequence development --strategies main --orders 0 1 2 --seed 0
  run --sequence development --strategies tuned --orders 0 1 2 --seed 0
  run --sequence task_incremental --strategies main --orders 0 1 2 --seed 0
  run --sequence paper_shaped --strategies main --orders 0 1 2 --seed 0
  run --sequence development --strategies main --orders 0 1 2 --seed 1
  run --sequence task_incremental --strategies main --orders 0 1 2 --seed 1
  run --sequence paper_shaped --strategies main --orders 0 1 2 --seed 1
  ;;
B)
  run --sequence development --strategies protocol --orders 0 1 2 --seed 0
  run --sequence paper_shaped_gemma --strategies main --orders 0 1 2 --seed 0
  run --sequence task_incremental --strategies tuned protocol --orders 0 1 2 --seed 0
  run --sequence paper_shaped --strategies tuned protocol --orders 0 1 2 --seed 0
  ;;
*)
  echo "grid.sh: lane A or B" >&2; exit 2 ;;
esac
