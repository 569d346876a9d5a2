#!/usr/bin/env bash
# Download the wheels the GPU check needs on a bare GPU machine into the ignored .whl/ folder.
#
#   scripts/gpu_wheels.sh            # then carry .whl with the check (docs/architecture.md "Running the GPU checks")
#
# The GPU machine (python3 3.12, x86-64, no network) has torch, timm, pyarrow, pillow, click,
# safetensors, numpy, pyyaml, tqdm, matplotlib, psutil, msgpack, cloudpickle, toolz, fsspec,
# sortedcontainers, jinja2, attrs, typing-extensions... but not dask, distributed, webdataset,
# pydantic, jsonschema nor their own dependencies named below (read off each wheel's
# Requires-Dist against that image's package list). Versions are the ones the test suite runs
# with. scripts/gpu_check.sh installs them with `pip install --no-index --no-deps --target`.
# Environment: PYTHON (default python3), WHEELS (default .whl, relative to the repository root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
DEST="${WHEELS:-.whl}"
cd "$ROOT"

WHEELS=(
    dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2 tornado==6.6.1 zict==3.0.0
    webdataset==1.0.2 braceexpand==0.1.7
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    typing-extensions==4.16.0
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
)

mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two would stop the whole install there
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"

count=$(find "$DEST" -maxdepth 1 -type f -name '*.whl' | wc -l)
if ((count != ${#WHEELS[@]})); then
    echo "error: expected ${#WHEELS[@]} wheels in $DEST, found $count" >&2
    exit 1
fi
echo "$count wheels in $DEST, $(du -sk "$DEST" | cut -f1) KiB"
