#!/usr/bin/env bash
# Runs the rows of RESULTS.md (results v2, and the fine-tuned teachers' rows of issue 24), JOBS at a time
# (default 2: one per core), in priority order, writes each row's record after it, runs the probes, then
# regenerates RESULTS.md (its rows, comparisons and targets: stages/results/results.toml).
# Usage: [JOBS=2] [MKD=mkd-pipeline] [PY=python] stages/results/run_all.sh [ROW ...]
#        (default: all rows below; ROW ...: only these, e.g. ft1-mkd50-s0 ft2-mkd50-s0; finished rows are
#        cached, so a rerun only runs what is missing)
# Fine-tuned teachers: before the first row of ftN, teacher-v3-ftN.yaml is fine-tuned (--until
#   teacher-finetune, JOBS threads) and exported to stages/results/teachers/results-v3-teacher-ftN.*,
#   unless that file exists.
# Records: after each row that finished, stages/results/records/<row>.json (mkd-pipeline report
#   --record-to): commit them, RESULTS.md is regenerated from them where the run folders are gone.
# Probes: stages/results/records/probes/<teacher>-m<milestone>.json, from the MaskedKD 50% seed-0 row's
#   checkpoints at the first and the last milestone (0 and 4), for each teacher whose row ran.
# Logs: runs/logs/<row>.log, with `uptime` before and after each run (load average, for the table).
set -u
cd "$(dirname "$0")/../.."
MKD=${MKD:-mkd-pipeline}
PY=${PY:-python}
JOBS=${JOBS:-2}
RESULTS=stages/results
RECORDS=$RESULTS/records
# one intra-op thread per process: JOBS processes share the cores, and OpenMP spinning on an
# oversubscribed box slows tiny models badly
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
ROWS=("$@")
CHOSEN=$#
if [ ${#ROWS[@]} -eq 0 ]; then
  # issue 24 first: the fine-tuned teachers' rows seed by seed, then the plain teacher's full-teacher KD
  # rows their target is measured against
  ROWS=(ft1-mkd50-s0 ft2-mkd50-s0 ft1-random50-s0 ft2-random50-s0)
  for s in 1 2; do ROWS+=(ft1-mkd50-s$s ft2-mkd50-s$s); done
  ROWS+=(plain-full-s0 plain-full-s1 plain-full-s2)
  # then results v2: the CE-only lr sweep (it chose train.lr for every row), then three seeds of the rows
  # that need them, seed by seed, so a table cut short still has comparable rows
  ROWS+=(ce-s0 sweep-lr1.0e-3-s0 sweep-lr2.0e-3-s0 sweep-lr4.0e-3-s0 sweep-lr1.6e-2-s0)
  for s in 0 1 2; do
    [ $s -gt 0 ] && ROWS+=(ce-s$s)
    ROWS+=(plain-mkd50-s$s plain-auto95-s$s robust-full-s$s robust-mkd50-s$s robust-auto95-s$s)
  done
  ROWS+=(plain-random50-s0 robust-random50-s0 plain-auto90-s0 robust-auto90-s0)
fi
mkdir -p runs/logs runs/probes "$RECORDS/probes"

# the fine-tuned teachers the chosen rows load (the v2 teachers are committed weights)
for t in ft1 ft2; do
  case " ${ROWS[*]} " in *" $t-"*) ;; *) continue ;; esac
  [ -f "$RESULTS/teachers/results-v3-teacher-$t.safetensors" ] && continue
  log=runs/logs/teacher-v3-$t.log
  echo "$(date +%T) teacher-v3-$t fine-tune start"
  echo "# uptime before: $(uptime)" > "$log"
  OMP_NUM_THREADS=$JOBS MKL_NUM_THREADS=$JOBS $MKD run "$RESULTS/teacher-v3-$t.yaml" --until teacher-finetune >> "$log" 2>&1 \
    && $PY "$RESULTS/export_teacher.py" "$RESULTS/teacher-v3-$t.yaml" >> "$log" 2>&1
  rc=$?
  { echo "# uptime after: $(uptime)"; echo "# exit $rc"; } >> "$log"
  echo "$(date +%T) teacher-v3-$t fine-tune + export exit $rc"
done

run_row() {
  local r=$1 log=runs/logs/$1.log rc
  echo "# uptime before: $(uptime)" > "$log"
  $MKD run "$RESULTS/$r.yaml" >> "$log" 2>&1
  rc=$?
  { echo "# uptime after: $(uptime)"; echo "# exit $rc"; } >> "$log"
  # the row's record (lock numbers, these load averages): what RESULTS.md reads once runs/ is gone
  [ $rc -eq 0 ] && { $MKD report --results "$RESULTS/$r.yaml" --logs runs/logs --record-to "$RECORDS" >> "$log" 2>&1 || rc=$?; }
  echo "$(date +%T) $r exit $rc"
}

for r in "${ROWS[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  echo "$(date +%T) $r start"
  run_row "$r" &
done
wait
# the probe curves at the first and the last milestone (masks from the MaskedKD 50% row's checkpoints
# c0 and c4), for each teacher whose seed-0 MaskedKD row has its run folder here (and was chosen)
for t in ft1 ft2 plain robust; do
  [ -f "runs/results-$t-mkd50-s0/run.lock.json" ] || continue
  [ "$CHOSEN" -gt 0 ] && case " ${ROWS[*]} " in *" $t-mkd50-s0 "*) ;; *) continue ;; esac
  for m in 0 4; do
    out=$RECORDS/probes/$t-m$m.json
    $MKD probe "$RESULTS/$t-mkd50-s0.yaml" --milestone $m --samples 1000 --json \
      --out "runs/probes/$t-m$m.png" > "$out.tmp" 2>> runs/logs/probes.log \
      && mv "$out.tmp" "$out" && echo "$(date +%T) probe $t milestone $m" \
      || { rm -f "$out.tmp"; echo "$(date +%T) probe $t milestone $m failed: see runs/logs/probes.log"; }
  done
done
$MKD report --spec $RESULTS/results.toml --results $RESULTS/*.yaml --out RESULTS.md --notes $RESULTS/NOTES.md \
  --probes $RECORDS/probes
