#!/usr/bin/env bash
# Runs every row of RESULTS.md sequentially, in priority order, then regenerates RESULTS.md.
# Usage: stages/results/run_all.sh [ROW ...]     (default: all rows below; finished rows are cached)
# Logs: runs/logs/<row>.log, with `uptime` before and after each run (load average on a shared box).
set -u
cd "$(dirname "$0")/../.."
MKD=${MKD:-mkd-pipeline}
# one intra-op thread per process: on a loaded 2-core box OpenMP spinning slows tiny models badly
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
ROWS=("$@")
if [ ${#ROWS[@]} -eq 0 ]; then
  ROWS=(ce-s0 offline-full-s0 offline-mkd50-s0 online-full-s0
        offline-random50-s0 offline-inverse50-s0 offline-mkd75-s0 offline-mkd25-s0 online-mkd50-s0
        ce-s1 offline-mkd50-s1 online-full-s1 tol4-s0 pool2-tol0-s0 pool2-tol4-s0 spacing5-s0 spacing1-s0
        ce-s2 offline-mkd50-s2 online-full-s2 online-mkd50-s1 online-mkd50-s2
        sweep-lr1e-3-s0 sweep-lr3e-3-s0 sweep-lr5e-3-s0
        offline-full-s1 offline-random50-s1)
fi
mkdir -p runs/logs
$MKD run stages/results/teacher.yaml --until teacher >> runs/logs/teacher.log 2>&1 || { echo "teacher failed"; exit 1; }
for r in "${ROWS[@]}"; do
  log=runs/logs/$r.log
  { echo "# uptime before: $(uptime)"; } > "$log"
  $MKD run "stages/results/$r.yaml" >> "$log" 2>&1
  rc=$?
  { echo "# uptime after: $(uptime)"; echo "# exit $rc"; } >> "$log"
  echo "$(date +%T) $r exit $rc"
done
$MKD report --results stages/results/*.yaml --out RESULTS.md --notes stages/results/NOTES.md
