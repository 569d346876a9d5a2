#!/usr/bin/env bash
# GPU checks in one run of at most ~8 minutes (docs/architecture.md "Running the GPU checks").
#
#   OUT=/some/dir scripts/gpu_check.sh             # on a CUDA machine
#   scripts/gpu_check.sh --dry-run                 # no GPU: the same steps on the CPU, tiny sizes
#
# Steps (each under its own time limit; output in $OUT/<step>.txt, rc per step in $OUT/summary.txt):
#   nvidia-smi            the card(s), driver, memory
#   checks                scripts/gpu_check.py: CUDA_VISIBLE_DEVICES respected (Dask workers and
#                         torchrun ranks), shared GPUs refused, a CPU worker fails a cuda run,
#                         saliency q.k / teacher head in fp32 under bf16 autocast, nvJPEG
#                         decoding (compute.decode: cuda) against PIL's
#   teacher-bf16/-fp32    bench teacher: DeiT-B masked forward, bf16 autocast and fp32 (TF32)
#   precompute            bench precompute --device cuda (GPU workers, bf16, pinned batches)
#   train                 bench train --device cuda (bf16 autocast, pinned non_blocking copies)
#   feed                  bench precompute --feed: the data path per core on this machine's CPUs
# Environment: OUT (default ./gpu-check-out), PYTHON (default python), MKD_FASHION_MNIST (the
# Fashion-MNIST .gz files, default /usr/share/datasets/fashion-mnist; without them the precompute
# and train benches are skipped), GPU_CHECK_BUDGET_S (default 480: later steps are skipped once
# it is spent). Exit status: 0 when every step that ran passed.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-./gpu-check-out}"
PY="${PYTHON:-python}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-480}"
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; fi

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_DEVICE_ORDER=PCI_BUS_ID  # CUDA numbers GPUs as nvidia-smi does
CLI=("$PY" -c "from pipeline.cli import main; main()")  # mkd-pipeline from this checkout
: > "$OUT/summary.txt"
START=$SECONDS
FAILED=0

# step NAME LIMIT_S COMMAND...: run with a time limit, keep its output, record its exit status
step() {
    local name=$1 limit=$2 left rc
    shift 2
    left=$((BUDGET_S - (SECONDS - START)))
    if ((left < 20)); then
        echo "SKIP $name (budget of ${BUDGET_S}s spent)" | tee -a "$OUT/summary.txt"
        return 0
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    rc=$?
    tail -n 25 "$OUT/$name.txt"
    echo "$name rc=$rc $((SECONDS - START))s" | tee -a "$OUT/summary.txt"
    if ((rc != 0)); then FAILED=$((FAILED + 1)); fi
}

skip() {
    echo "SKIP $1 ($2)" | tee -a "$OUT/summary.txt"
}

FMNIST="${MKD_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
have_fmnist=0
[[ -f "$FMNIST/train-images-idx3-ubyte.gz" ]] && have_fmnist=1

if ((DRY)); then
    echo "dry run: CPU, tiny sizes (checks the script, not the GPU)"
    step env 60 "$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    step checks 120 "$PY" scripts/gpu_check.py --dry-run --out "$OUT"
    step teacher-bf16 60 "${CLI[@]}" bench teacher --device cpu --dtype bf16 --model vit_tiny_patch16_224 --batch 2 --keep 196,98 --repeats 1 --json
    step teacher-fp32 60 "${CLI[@]}" bench teacher --device cpu --dtype fp32 --model vit_tiny_patch16_224 --batch 2 --keep 196,98 --repeats 1 --json
    if ((have_fmnist)); then
        step precompute 180 "${CLI[@]}" bench precompute --device cpu --samples 96 --shard-size 48 --img-size 28 --batch 32 --repeats 1 --json
        step train 180 "${CLI[@]}" bench train --device cpu --samples 64 --shard-size 32 --batch 16 --repeats 1 --no-loader --json
    else
        skip precompute "no Fashion-MNIST at $FMNIST (set MKD_FASHION_MNIST)"
        skip train "no Fashion-MNIST at $FMNIST (set MKD_FASHION_MNIST)"
    fi
else
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "error: torch sees no CUDA device; run '$0 --dry-run' to check the script on the CPU" >&2
        exit 2
    fi
    step nvidia-smi 30 bash -c "nvidia-smi && nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version --format=csv"
    step env 60 "$PY" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
    step checks 120 "$PY" scripts/gpu_check.py --out "$OUT"
    step teacher-bf16 60 "${CLI[@]}" bench teacher --device cuda --dtype bf16 --model deit_base_patch16_224 --batch 128 --keep 196,147,98,49 --repeats 5 --json
    step teacher-fp32 60 "${CLI[@]}" bench teacher --device cuda --dtype fp32 --model deit_base_patch16_224 --batch 128 --keep 196,98 --repeats 3 --json
    if ((have_fmnist)); then
        step precompute 120 "${CLI[@]}" bench precompute --device cuda --samples 1024 --shard-size 256 --batch 256 --repeats 2 --json
        step train 120 "${CLI[@]}" bench train --device cuda --samples 1024 --shard-size 256 --batch 64 --repeats 2 --json
    else
        skip precompute "no Fashion-MNIST at $FMNIST (set MKD_FASHION_MNIST)"
        skip train "no Fashion-MNIST at $FMNIST (set MKD_FASHION_MNIST)"
    fi
fi
# the data path needs no dataset: it makes its own ImageNet-like JPEGs
if ((DRY)); then
    step feed 120 "${CLI[@]}" bench precompute --feed --feed-images 16 --repeats 1
else
    step feed 90 "${CLI[@]}" bench precompute --feed --feed-images 128 --repeats 1
fi

echo "== done in $((SECONDS - START))s; $FAILED step(s) failed; outputs in $OUT"
cat "$OUT/summary.txt"
((FAILED == 0))
