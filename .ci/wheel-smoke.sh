#!/usr/bin/env bash
# Installs-anywhere check: build a wheel, install it into a clean venv outside the checkout, and use
# it there as a user would (config check, the JSON schemas, a data import, a tiny two-stage run).
# Catches anything read at run time that is not package data. Needs the checkout's .venv (make venv).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$root/.venv/bin/pip" wheel -q --no-deps --no-build-isolation -w "$tmp/dist" "$root" 2>&1 | grep -v '^WARNING: Location' || true
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "$tmp"/dist/mkd_pipeline-*.whl 2>&1 | grep -v '^WARNING: Location' || true
cd "$tmp"   # nothing of the checkout on sys.path from here on
mkd="$tmp/venv/bin/mkd-pipeline"
"$tmp/venv/bin/python" - <<'PY'
import pipeline, maskedkd
from pipeline._schemas import SCHEMAS, schema
assert "site-packages" in pipeline.__file__, pipeline.__file__
print("wheel", pipeline.__version__, "schemas:", ", ".join(f"{n} ({len(schema(n)['properties'])} fields)" for n in SCHEMAS))
PY
"$mkd" config check --no-files "$root/stages/fashion-mnist-demo.yaml" > /dev/null
"$mkd" data import fashion-mnist --out data > /dev/null
cat > tiny.yaml <<'YAML'
# wheel smoke test: a teacher for one epoch on 512 images, one student segment with auto keep.
name: tiny
data: {root: data, train: train, val: test, subset: 512, val_subset: 256, num_classes: 10, mean: [0.286], std: [0.353]}
teacher:
  model: vit_tiny_patch16_224
  kwargs: {img_size: 28, patch_size: 7, in_chans: 1, num_classes: 10, embed_dim: 32, depth: 1, num_heads: 2}
  train: {epochs: 1, warmup_epochs: 0, batch_size: 64}
student:
  model: vit_tiny_patch16_224
  kwargs: {img_size: 28, patch_size: 7, in_chans: 1, num_classes: 10, embed_dim: 32, depth: 1, num_heads: 2}
schedule: {epochs: 1, milestones: [0]}
masking: {policy: student, keep: auto, budget: {agreement: 0.5}, probe_samples: 64}
labels: {store: store, topk: 5}
compute: {workers: 1, device: cpu}
train: {warmup_epochs: 0, batch_size: 64}
YAML
OMP_NUM_THREADS=1 "$mkd" run tiny.yaml > run.log 2>&1 || { cat run.log; exit 1; }
grep -q "done: " run.log && grep -q "probe-0" run.log || { cat run.log; exit 1; }
"$mkd" labels verify store --lock runs/tiny/run.lock.json > /dev/null
"$mkd" status tiny.yaml > /dev/null
echo "wheel smoke test: ok (installed wheel, outside the checkout: config check, data import, run with keep: auto, labels verify, status)"
