"""scripts/gpu_check.sh, gpu_check.py, gpu_placement.py and gpu_wheels.sh stay runnable without a GPU."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
STEPS = ("preflight", "data", "teacher", "saliency", "precompute", "train", "syncs", "nccl", "run", "placement", "feed")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["gpu_check.sh", "gpu_wheels.sh"])
def test_shell_scripts_parse(name):
    subprocess.run(["bash", "-n", str(SCRIPTS / name)], check=True)


def test_dask_cuda_worker_names_sort_without_int():
    order = _script("gpu_placement").worker_order
    assert sorted(["GPU-9f2c", "10", "2", "GPU-1a0b"], key=order) == ["2", "10", "GPU-1a0b", "GPU-9f2c"]


def test_synthetic_set_holds_imagenet_oddities():
    jpeg = _script("gpu_check")._jpeg
    kinds = {i: Image.open(io.BytesIO(jpeg(i, (500, 375), 0))) for i in (1, 2, 3, 5)}
    assert (kinds[1].format, kinds[1].mode) == ("JPEG", "CMYK")
    assert kinds[2].format == "PNG"  # written under a .JPEG name by the data step, as in ImageNet
    assert (kinds[3].format, kinds[3].mode) == ("JPEG", "L")
    assert (kinds[5].format, kinds[5].mode, kinds[5].size) == ("JPEG", "RGB", (500, 375))


def test_wheels_pin_one_version_of_each_missing_package():
    text = (SCRIPTS / "gpu_wheels.sh").read_text()
    block = text[text.index("WHEELS=(") : text.index(")", text.index("WHEELS=("))]
    pins = re.findall(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.-]+)", block)
    names = [n.lower().replace("_", "-") for n, _ in pins]
    assert len(names) == len(set(names)), "two versions of one package stop the whole install"
    assert {"dask", "distributed", "webdataset", "pydantic", "jsonschema", "pydantic-core", "rpds-py"} <= set(names)


@pytest.mark.slow
def test_dry_run_passes_every_step_on_the_cpu(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, GPU_CHECK_WORK=str(tmp_path / "work"))
    proc = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), "--dry-run"], env=env, capture_output=True, text=True,
                          timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["gpu-check.tar.gz"]  # one file comes back
    with tarfile.open(tmp_path / "out" / "gpu-check.tar.gz") as tar:
        files = {Path(m.name).name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}
    summary = files["summary.txt"]
    for step in STEPS:
        assert f"{step} rc=0 " in summary, summary
        assert f"{step}.txt" in files
    results = {s: json.loads(files[f"{s}.json"]) for s in (*STEPS[:-2], "digest")}  # gpu_check.py's steps
    assert all(r["ok"] and r["dry_run"] for r in results.values())
    assert {r["keep"] for r in results["teacher"]["rows"]} == {196, 98, 49}
    assert [r["model"] for r in results["saliency"]["rows"]] == ["deit_small_patch16_224", "deit_tiny_patch16_224"]
    pre = [r for r in results["precompute"]["rows"] if r["kind"] == "run"]
    assert [(r["decode"], r["feed_workers"]) for r in pre] == [("pil", 1), ("pil", 2)]
    assert all(r["labels"] == 48 and set(r["task_seconds"]) >= {"read", "render", "student", "teacher", "write"} for r in pre)
    assert results["data"]["specials"] == {"cmyk_jpeg": 2, "png_named_jpeg": 2, "gray_jpeg": 2}
    assert 0 <= results["train"]["data_wait_share"] <= 1 and len(results["train"]["steps_per_s_per_epoch"]) == 2
    assert results["nccl"]["backend"] == "gloo" and results["nccl"]["all_reduce"] == [1.0] * 4
    assert len(results["run"]["epochs"]) == 1
    placement = json.loads(files["placement.json"])
    assert placement["cpu-worker-in-cuda-run"]["ok"] and placement["saliency-fp32"]["ok"]
    assert "train DeiT-S" in files["digest.txt"]
