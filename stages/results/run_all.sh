#!/usr/bin/env bash
# Runs every row of RESULTS.md, JOBS at a time (default 2: one per core), in priority order, then
# regenerates RESULTS.md.
# Usage: [JOBS=2] [MKD=mkd-pipeline] stages/results/run_all.sh [ROW ...]
#        (default: all rows below; finished rows are cached, so a rerun only runs what is missing)
# Logs: runs/logs/<row>.log, with `uptime` before and after each run (load average, for the table).
set -u
cd "$(dirname "$0")/../.."
MKD=${MKD:-mkd-pipeline}
JOBS=${JOBS:-2}
# one intra-op thread per process: JOBS processes share the cores, and OpenMP spinning on an
# oversubscribed box slows tiny models badly
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
ROWS=("$@")
if [ ${#ROWS[@]} -eq 0 ]; then
  # offline-mkd50-s0 comes early: tol4-s0 and the sweep rows start from the same c0 and reuse
  # its milestone-0 labels from the shared store when it has finished before them
  ROWS=(ce-s0 online-full-s0 offline-mkd50-s0 offline-full-s0
        online-mkd50-s0 offline-random50-s0 offline-inverse50-s0 offline-mkd75-s0 offline-mkd25-s0
        ce-s1 online-full-s1 offline-mkd50-s1 online-mkd50-s1
        ce-s2 online-full-s2 offline-mkd50-s2 online-mkd50-s2
        spacing1-s0 spacing5-s0 tol4-s0 pool2-tol0-s0 pool2-tol4-s0
        sweep-lr1e-3-s0 sweep-lr3e-3-s0 sweep-lr5e-3-s0
        offline-full-s1 offline-random50-s1 warm1-mkd50-s0)
fi
mkdir -p runs/logs
OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 $MKD run stages/results/teacher.yaml --until teacher >> runs/logs/teacher.log 2>&1 \
  || { echo "teacher failed: see runs/logs/teacher.log"; exit 1; }

run_row() {
  local r=$1 log=runs/logs/$1.log rc
  echo "# uptime before: $(uptime)" > "$log"
  $MKD run "stages/results/$r.yaml" >> "$log" 2>&1
  rc=$?
  { echo "# uptime after: $(uptime)"; echo "# exit $rc"; } >> "$log"
  echo "$(date +%T) $r exit $rc"
}

for r in "${ROWS[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  echo "$(date +%T) $r start"
  run_row "$r" &
done
wait
$MKD report --results stages/results/*.yaml --out RESULTS.md --notes stages/results/NOTES.md
