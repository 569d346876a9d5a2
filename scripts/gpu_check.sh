#!/usr/bin/env bash
# The prepared GPU check: one run of at most GPU_CHECK_BUDGET_S (420) seconds that brings back
# every number in one archive (docs/architecture.md "Running the GPU checks").
#
#   scripts/gpu_wheels.sh                     # here, once: the wheels a bare GPU machine lacks, into .whl/
#   OUT=/some/dir scripts/gpu_check.sh        # there (python3, no network): installs .whl/*.whl, runs the steps
#   scripts/gpu_check.sh --dry-run            # no GPU: the same steps on the CPU at tiny sizes (CI runs it)
#
# Steps, most valuable first, each under its own time limit inside the budget (a step that fails
# does not stop the next; a failed preflight stops the run). Measurements: scripts/gpu_check.py.
#   preflight   nvidia-smi; the wheels installed with pip --target; every import, named if missing
#   data        synthetic ImageNet-shaped shards (~500x375 JPEGs, CMYK JPEGs, PNGs named .JPEG)
#   teacher     DeiT-B and DeiT-S masked teacher img/s at keep 196 / 98 / 49 (bf16, batch 256)
#   saliency    the saliency pass of DeiT-S and DeiT-Ti students, img/s
#   precompute  end-to-end labels/s (DeiT-B keep 98, DeiT-Ti masks), decode pil / cuda x
#               feed_workers 4 / 8 / 14, task seconds per phase
#   train       the trainer's DeiT-S steps/s and its data-wait share
#   syncs       CUDA syncs in a precompute task's batch loop (set_sync_debug_mode "warn")
#   nccl        a single-rank NCCL group (torchrun) and a DDP all-reduce
#   run         mkd-pipeline run --until train-0 with a weights teacher on CUDA
#   placement   scripts/gpu_placement.py: workers and ranks on their GPUs, refusals, fp32 saliency, nvJPEG
#   feed        mkd-pipeline bench precompute --feed: the data path per core on this machine's CPUs
# Output: $OUT/gpu-check.tar.gz, rewritten after every step (a run killed half-way still leaves what it
# did): summary.txt (exit status and seconds per step), STEP.txt (output), STEP.json (numbers),
# digest.txt (the key numbers; also printed at the end).
# Environment: OUT (default ./gpu-check-out), PYTHON (default python3), GPU_CHECK_BUDGET_S (420;
# the dry run's limits are 5x the GPU run's),
# GPU_CHECK_STEPS (a comma-separated subset of the steps after data, e.g. a rerun of
# precompute,run; preflight and data always run), GPU_CHECK_WORK (scratch folder, default a fresh
# temporary one, removed at the end), WHEELS (default .whl). Exit status 0 when every step that ran passed.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-./gpu-check-out}"
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
ONLY=",${GPU_CHECK_STEPS:-},"
DRY=()
SCALE=1  # of every step's limit
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY=(--dry-run)
    SCALE=5  # the dry run checks the code, not the speed: a loaded CI machine must not time it out
fi
BUDGET_S="${GPU_CHECK_BUDGET_S:-$((420 * SCALE))}"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT" || exit 2
if [[ -n "${GPU_CHECK_WORK:-}" ]]; then
    WORK="$GPU_CHECK_WORK"
    mkdir -p "$WORK"
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
fi
STAGE="$WORK/gpu-check"  # what the archive holds
SITE="$WORK/site"        # the carried wheels, installed
mkdir -p "$STAGE"
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export CUDA_DEVICE_ORDER=PCI_BUS_ID  # CUDA numbers GPUs as nvidia-smi does
CHECK=("$PY" scripts/gpu_check.py --out "$STAGE" --work "$WORK" "${DRY[@]}")
: > "$STAGE/summary.txt"
START=$SECONDS
FAILED=0

archive() {
    tar -czf "$OUT/gpu-check.tar.gz.tmp" -C "$WORK" gpu-check && mv "$OUT/gpu-check.tar.gz.tmp" "$OUT/gpu-check.tar.gz"
}

# step NAME LIMIT_S COMMAND...: run with a time limit inside the budget, keep its output and exit status
# (a shell function as COMMAND gets the limit as its first argument and applies it itself)
step() {
    local name=$1 limit=$2 left rc
    shift 2
    left=$((BUDGET_S - (SECONDS - START)))
    if ((left < 20)); then
        echo "SKIP $name (budget of ${BUDGET_S}s spent)" | tee -a "$STAGE/summary.txt"
        return 0
    fi
    limit=$((limit * SCALE))
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit}s)"
    if [[ "$(type -t "$1")" == function ]]; then
        "$1" "$limit" > "$STAGE/$name.txt" 2>&1
    else
        GPU_CHECK_STEP_LIMIT_S=$limit timeout --kill-after=10 "$limit" "$@" > "$STAGE/$name.txt" 2>&1
    fi
    rc=$?
    ((rc == 124 || rc == 137)) && echo "(killed at its limit of ${limit}s)" >> "$STAGE/$name.txt"
    tail -n 5 "$STAGE/$name.txt" | cut -c1-400
    echo "$name rc=$rc $((SECONDS - START))s" | tee -a "$STAGE/summary.txt"
    ((rc != 0)) && FAILED=$((FAILED + 1))
    archive
    return "$rc"
}

# wanted NAME: whether GPU_CHECK_STEPS (when set) names this step
wanted() {
    [[ "$ONLY" == ",," || "$ONLY" == *",$1,"* ]]
}

preflight() {  # LIMIT_S
    if ((${#DRY[@]} == 0)); then
        nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version,clocks.max.sm --format=csv || true
        if compgen -G "$WHEELS/*.whl" > /dev/null; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl || return 3
        fi
    fi
    timeout --kill-after=10 "$1" "${CHECK[@]}" preflight
}

echo "gpu check: $PY, budget ${BUDGET_S}s, work $WORK${DRY:+ (dry run: CPU, tiny sizes)}"
if ! step preflight 90 preflight; then
    echo "preflight failed: nothing else runs (see preflight.txt)"
    archive
    exit 1
fi
step data 60 "${CHECK[@]}" data
for spec in teacher:60 saliency:45 precompute:120 train:100 syncs:60 nccl:45 run:100; do
    name=${spec%%:*}
    wanted "$name" && step "$name" "${spec##*:}" "${CHECK[@]}" "$name"
done
if wanted placement; then
    step placement 90 "$PY" scripts/gpu_placement.py --out "$STAGE" --data "$WORK/data" "${DRY[@]}"
fi
if wanted feed; then
    if ((${#DRY[@]})); then images=8; else images=128; fi
    step feed 60 "$PY" -c "from pipeline.cli import main; main()" bench precompute --feed --feed-images "$images" \
        --feed-resize torch --feed-auto-augment rand-m9-mstd0.5-inc1 --repeats 1 --json
fi
"${CHECK[@]}" digest > "$STAGE/digest.txt" 2>&1
archive
echo "== done in $((SECONDS - START))s; $FAILED step(s) failed; $OUT/gpu-check.tar.gz"
cat "$STAGE/summary.txt" "$STAGE/digest.txt"
((FAILED == 0))
