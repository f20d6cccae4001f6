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
# first: the development sequence, where the default is chosen, one candidate at a time over its
# three orders (so a stopped grid leaves whole candidates, not every candidate with one order; the
# two lanes split them, each lane's slowest last), then each held-out sequence at seed 0, then seed
# 1 of the main strategies. Both lanes may start at once: an expert both need is trained by one,
# the other waiting on its lock (continual/store.py).
set -uo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
LOGS="${RECALL_MERGE_CACHE:-$HOME/.cache/recall-merge}/benchmark_runs/logs"
mkdir -p "$LOGS"
run() { python benchmarks/continual/run.py --quiet "$@" >> "$LOGS/$LANE.log" 2>&1; }
LANE=${1:?lane A or B}
# the development candidates, alternately to A and B; WUDI and DOP (minutes per merge) go last
CANDIDATES=$(python benchmarks/continual/run.py --list --strategies candidates | grep -vx 'wudi\|dop')
half() { echo "$CANDIDATES" | awk -v r="$1" 'NR % 2 == r'; }
held_out_candidates() {
  python benchmarks/continual/run.py --list --strategies tuned protocol \
    | grep -vxF "$(python benchmarks/continual/run.py --list --strategies main)"
}
# the choice reads AP alone: a candidate's generalisation scores (about half a merge cell's time)
# wait until every candidate has its three orders, its final models kept on disk until then
development() { for name in "$@"; do run --sequence development --strategies "$name" --orders 0 1 2 --seed 0 --defer-generalisation; done; }
generalisation() { run --sequence development --strategies candidates --orders 0 1 2 --seed 0 --generalisation; }
# a held-out sequence's main strategies at seed 0: the merges the default is compared with first, in
# all three orders (a merge cell is quicker than a training baseline's), then the rest
held_out_main() {
  run --sequence "$1" --strategies expert recall task_arithmetic ties --orders 0 1 2 --seed 0
  run --sequence "$1" --strategies main --orders 0 1 2 --seed 0
}
case "$LANE" in
A)
  run --sequence development --strategies main --orders 0 1 2 --seed 0
  development $(half 1) wudi
  generalisation
  for sequence in task_incremental paper_shaped; do
    held_out_main "$sequence"
  done
  run --sequence development --strategies main --orders 0 1 2 --seed 1
  run --sequence task_incremental --strategies main --orders 0 1 2 --seed 1
  run --sequence paper_shaped --strategies main --orders 0 1 2 --seed 1
  ;;
B)
  development $(half 0) dop
  held_out_main paper_shaped_gemma
  # the other default candidates on the held-out sequences: AP and BWT only (their comparison
  # reads nothing else; ~11 min of generalisation saved per cell here, and with --cells ap_bwt one
  # task scored at each step but the last instead of two); the main strategies keep their
  # generalisation and FWT
  for sequence in task_incremental paper_shaped; do
    run --sequence "$sequence" --strategies $(held_out_candidates) --orders 0 1 2 --seed 0 \
      --cells ap_bwt --skip-generalisation
  done
  ;;
*)
  echo "grid.sh: lane A or B" >&2; exit 2 ;;
esac
