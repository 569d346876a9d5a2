#!/usr/bin/env bash
# Runs every row of RESULTS.md (results v2), JOBS at a time (default 2: one per core), in priority order, then
# regenerates RESULTS.md (its rows, comparisons and targets: stages/results/results.toml).
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
  # the CE-only lr sweep first (it chose train.lr for every row), then three seeds of the rows that
  # need them, seed by seed, so a table cut short still has comparable rows
  ROWS=(ce-s0 sweep-lr1.0e-3-s0 sweep-lr2.0e-3-s0 sweep-lr4.0e-3-s0 sweep-lr1.6e-2-s0)
  for s in 0 1 2; do
    [ $s -gt 0 ] && ROWS+=(ce-s$s)
    for t in plain robust; do ROWS+=($t-full-s$s $t-mkd50-s$s $t-auto95-s$s); done
  done
  ROWS+=(plain-random50-s0 robust-random50-s0 plain-auto90-s0 robust-auto90-s0)
fi
mkdir -p runs/logs
# the teachers are committed weights (stages/results/teachers/); nothing to train here

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
# the probe curves of both teachers at the first and the last milestone (masks from the MaskedKD
# 50% row's checkpoints c0 and c4), read by `mkd-pipeline report` from runs/probes/
mkdir -p runs/probes
for t in plain robust; do
  for m in 0 4; do
    $MKD probe "stages/results/$t-mkd50-s0.yaml" --milestone $m --samples 1000 --json \
      --out "runs/probes/$t-m$m.png" > "runs/probes/$t-m$m.json" 2>> runs/logs/probes.log \
      && echo "$(date +%T) probe $t milestone $m" || echo "$(date +%T) probe $t milestone $m failed: see runs/logs/probes.log"
  done
done
$MKD report --spec stages/results/results.toml --results stages/results/*.yaml --out RESULTS.md --notes stages/results/NOTES.md
