"""GPU placement and precision checks on real CUDA (docs/architecture.md "Running the GPU checks").

Run by ``scripts/gpu_check.sh`` (step ``placement``); by hand::

    python3 scripts/gpu_placement.py --out DIR             # on a CUDA machine: every check
    python3 scripts/gpu_placement.py --out DIR --dry-run   # no GPU: the checks that run on the CPU

Checks (each a line ``PASS``/``FAIL``/``SKIP`` and an entry of ``DIR/placement.json``):

* ``embedded-visible-devices``: an embedded cluster started under ``CUDA_VISIBLE_DEVICES=<ids>``
  puts worker i on the i-th listed GPU (compared by UUID; UUID and index forms).
* ``torchrun-visible-devices``: ``run --nproc`` ranks (``pipeline.train.dist.setup``) likewise.
* ``shared-gpu-refused``: plain workers with ``--resources GPU=1`` that all take GPU 0 are refused.
* ``gpu-slots-refused``: a worker offering ``GPU=2`` to 2 task threads is refused.
* ``cpu-worker-in-cuda-run``: a worker without a GPU resource fails a ``compute.device: cuda`` run,
  named in the message (also runs on the CPU).
* ``saliency-fp32``: under bf16 autocast the saliency scores and the teacher logits are float32, the
  scores equal a float32 computation from the same last-block input, and keep sets agree with a
  float32 run at least as often as a bf16 ``q . k`` would (also runs on the CPU, CPU autocast).
* ``nvjpeg-decode``: ``compute.decode: cuda`` on a shard of the data step (``--data``) returns
  every row (a CMYK JPEG and a PNG named ``.JPEG`` among them) with PIL's pixels within rounding.

Exit status 0 when nothing failed. Internal helpers (``--child``) run in subprocesses, so each
scenario gets its own ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's pipeline/ and maskedkd/, however the script is started

RANK_TAG = "GPU-CHECK-RANK "


def worker_order(name: Any) -> tuple[int, int, str]:
    """Sort key of Dask worker names: integers in numeric order, then any other name (dask-cuda
    names its workers after the GPU, e.g. ``GPU-<uuid>``) as text."""
    text = str(name)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _norm(uuid: str | None) -> str | None:
    """UUIDs compared without nvidia-smi's ``GPU-`` prefix and case."""
    return None if uuid is None else str(uuid).lower().removeprefix("gpu-")


def _uuids() -> list[str]:
    import torch

    from pipeline._gpu import device_uuid

    return [device_uuid(i) for i in range(torch.cuda.device_count())]


def _child_env(visible: str) -> dict[str, str]:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=visible, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # numeric ids as nvidia-smi numbers them
    return env


def _run_child(args: list[str], visible: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=_child_env(visible), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False)


# ---------------------------------------------------------------------------------------------- children


def child_embedded(n: int) -> None:
    """Open an embedded GPU cluster of ``n`` workers; print each worker's placement report (JSON)."""
    from pipeline.precompute.cluster import check_placement, open_cluster

    with open_cluster(workers=n, device="cuda", dashboard=False, announce=None, memory_limit=None) as c:
        c.client.wait_for_workers(n, timeout=60)
        reports = check_placement(c, c.task_resources)
    print(json.dumps(sorted(reports.values(), key=lambda r: worker_order(r["name"]))))


def child_rank() -> None:
    """One torchrun rank: take the trainer's device, print where it landed."""
    import torch

    from pipeline._gpu import device_uuid
    from pipeline.train import dist as tdist

    info, device = tdist.setup("cuda")
    print(RANK_TAG + json.dumps({"rank": info.rank, "local_rank": info.local_rank, "device": str(device),
                                 "uuid": device_uuid(device.index), "tf32": torch.backends.cuda.matmul.allow_tf32}))
    if info.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------- checks


def _visible_forms(uuids: list[str], n: int) -> list[tuple[str, list[str]]]:
    """``(CUDA_VISIBLE_DEVICES value, expected UUID per worker)``: the last ``n`` GPUs in reverse
    order, so that worker 0 must not land on device 0; by UUID, and by index when the parent
    itself sees every GPU in PCI order."""
    chosen = list(range(len(uuids)))[-n:][::-1]
    forms = [(",".join(f"GPU-{_norm(uuids[i])}" for i in chosen), [uuids[i] for i in chosen])]
    if "CUDA_VISIBLE_DEVICES" not in os.environ and os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID":
        forms.append((",".join(str(i) for i in chosen), [uuids[i] for i in chosen]))
    return forms


def check_embedded(uuids: list[str]) -> dict[str, Any]:
    n = min(2, len(uuids))
    cases = []
    for visible, want in _visible_forms(uuids, n):
        proc = _run_child([__file__, "--child", "embedded", "--n", str(n)], visible)
        if proc.returncode != 0:
            return {"ok": False, "visible": visible, "error": proc.stderr[-2000:]}
        reports = json.loads(proc.stdout.strip().splitlines()[-1])
        got = [r["gpu_uuid"] for r in reports]
        cases.append({"visible": visible, "want": want, "got": got, "gpu": [r["gpu"] for r in reports],
                      "ok": [_norm(u) for u in got] == [_norm(u) for u in want]})
    return {"ok": all(c["ok"] for c in cases), "workers": n, "cases": cases}


def check_torchrun(uuids: list[str]) -> dict[str, Any]:
    n = min(2, len(uuids))
    cases = []
    for visible, want in _visible_forms(uuids, n):
        proc = _run_child(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", __file__,
                           "--child", "rank"], visible)
        ranks = sorted((json.loads(line.split(RANK_TAG, 1)[1]) for line in proc.stdout.splitlines() if RANK_TAG in line),
                       key=lambda r: r["local_rank"])
        got = [r["uuid"] for r in ranks]
        cases.append({"visible": visible, "want": want, "got": got, "tf32": [r["tf32"] for r in ranks],
                      "ok": proc.returncode == 0 and [_norm(u) for u in got] == [_norm(u) for u in want]
                      and all(r["tf32"] for r in ranks),
                      **({"error": proc.stderr[-2000:]} if proc.returncode else {})})
    return {"ok": all(c["ok"] for c in cases), "ranks": n, "cases": cases}


@contextlib.contextmanager
def _plain_cluster(**kwargs: Any):
    """A Dask LocalCluster started as `dask worker` would be (no pipeline setup), then connected
    to as a remote cluster by ``open_cluster(scheduler=...)``."""
    from distributed import LocalCluster

    with LocalCluster(processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0", memory_limit=None,
                      scheduler_kwargs={"dashboard": False}, silence_logs=50, **kwargs) as lc:
        yield lc.scheduler_address


def _expect_refusal(kind: type, text: str, device: str, task_resources: dict | None, **cluster: Any) -> dict[str, Any]:
    from pipeline.precompute.cluster import check_resources, open_cluster

    with _plain_cluster(**cluster) as address, open_cluster(address, device=device, announce=None) as c:
        c.client.wait_for_workers(cluster["n_workers"], timeout=60)
        time.sleep(0.5)  # the setup plugin has run on every worker once they are all in
        try:
            check_resources(c, c.task_resources if task_resources is None else task_resources)
        except kind as exc:
            return {"ok": text in str(exc), "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the wrong error is a failed check, reported
            return {"ok": False, "message": f"{type(exc).__name__}: {exc}"}
    return {"ok": False, "message": f"no {kind.__name__} was raised"}


def check_shared_gpu() -> dict[str, Any]:
    from pipeline.errors import ConfigError

    return _expect_refusal(ConfigError, "share one GPU", "cuda", {"GPU": 1}, n_workers=2, threads_per_worker=1,
                           resources={"GPU": 1})


def check_gpu_slots() -> dict[str, Any]:
    from pipeline.errors import ConfigError

    return _expect_refusal(ConfigError, "offers GPU=2 with 2 threads", "cuda", {"GPU": 1}, n_workers=1,
                           threads_per_worker=2, resources={"GPU": 2})


def check_cpu_worker() -> dict[str, Any]:
    from pipeline.errors import ComputeError

    return _expect_refusal(ComputeError, "runs tasks on the CPU but compute.device is cuda", "cuda", None,
                           n_workers=1, threads_per_worker=1)


def check_saliency(device: str) -> dict[str, Any]:
    """bf16 autocast vs float32: dtypes, exactness of the float32 islands, keep-set agreement."""
    import timm
    import torch

    from maskedkd import cls_attention, masked_forward, select_keep

    cuda = device == "cuda"
    torch.manual_seed(0)
    if cuda:  # a real-sized student and teacher: 196 patches
        kw, batch, keep = {}, 64, 98
        student = timm.create_model("deit_tiny_patch16_224", pretrained=False, **kw)
        teacher = timm.create_model("deit_small_patch16_224", pretrained=False, **kw)
    else:  # CPU fallback: tiny models, CPU autocast
        kw, batch, keep = {"img_size": 32, "patch_size": 4, "depth": 4, "num_classes": 10}, 16, 32
        student = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw)
        teacher = timm.create_model("vit_small_patch16_224", pretrained=False, **kw)
    with torch.no_grad():  # random but not degenerate weights (timm zero-inits biases and the head)
        for p in list(student.parameters()) + list(teacher.parameters()):
            p.add_(torch.randn_like(p) * 0.02)
    student, teacher = student.eval().to(device), teacher.eval().to(device)
    size = student.patch_embed.img_size
    images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1)).to(device)
    tf32_matmul = torch.backends.cuda.matmul.allow_tf32
    seen: dict[str, torch.Tensor] = {}
    hooks = [student.blocks[-1].norm1.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0])),
             teacher.blocks.register_forward_hook(lambda m, a, o: seen.__setitem__("feat", o))]

    def keeps(scores: torch.Tensor) -> torch.Tensor:
        return select_keep(scores.float().cpu(), keep).sort(dim=1).values

    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.inference_mode():
            ref = cls_attention(student, images)  # float32 throughout
            with torch.autocast(device, dtype=torch.bfloat16):
                ours = cls_attention(student, images)
                logits = masked_forward(teacher, images, torch.arange(keep, device=device).expand(batch, keep))
            x, feat = seen["x"], seen["feat"]
            exact = _last_block_scores(student, x.float(), None)  # float32 from the same bf16 trunk
            head = teacher.forward_head(teacher.norm(feat.float()))
            naive = _last_block_scores(student, x, device)  # the q . k in bf16 (before this change)
            torch.backends.cuda.matmul.allow_tf32 = True
            with torch.autocast(device, dtype=torch.bfloat16):
                ours_tf32 = cls_attention(student, images)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_matmul
        for h in hooks:
            h.remove()
    k_ref = keeps(ref)

    def agree(scores: torch.Tensor) -> float:
        return float((keeps(scores) == k_ref).all(dim=1).float().mean())

    result = {
        "device": device, "batch": batch, "keep": keep, "patches": int(ref.shape[1]),
        "scores_dtype": str(ours.dtype), "logits_dtype": str(logits.dtype),
        "scores_vs_fp32_from_same_input_max_abs": float((ours - exact).abs().max()),
        "logits_vs_fp32_head_max_abs": float((logits - head).abs().max()),
        "keep_sets_equal_to_fp32_run": {"bf16_trunk_fp32_qk": agree(ours), "bf16_trunk_fp32_qk_tf32": agree(ours_tf32),
                                        "bf16_qk": agree(naive)},
        "scores_vs_fp32_run_max_abs": {"bf16_trunk_fp32_qk": float((ours - ref).abs().max()),
                                       "bf16_qk": float((naive.float() - ref).abs().max())},
    }
    agreement = result["keep_sets_equal_to_fp32_run"]
    result["ok"] = (ours.dtype == torch.float32 and logits.dtype == torch.float32
                    and result["scores_vs_fp32_from_same_input_max_abs"] <= 1e-5
                    and result["logits_vs_fp32_head_max_abs"] <= 1e-4
                    and agreement["bf16_trunk_fp32_qk"] >= agreement["bf16_qk"])
    return result


def _last_block_scores(vit, x, autocast_device: str | None):
    """The saliency from the last block's input ``x``, written out; under autocast when asked."""
    import torch

    ctx = torch.autocast(autocast_device, dtype=torch.bfloat16) if autocast_device else contextlib.nullcontext()
    last = vit.blocks[-1]
    a = last.attn
    with ctx:
        y = last.norm1(x)
        B, T, _ = y.shape
        qkv = a.qkv(y).reshape(B, T, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k = a.q_norm(qkv[0]), a.k_norm(qkv[1])
        logits = (q[:, :, :1] * a.scale) @ k.transpose(-2, -1)
    return logits.float().softmax(dim=-1)[:, :, 0, vit.num_prefix_tokens:].mean(dim=1)


# ---------------------------------------------------------------------------------------------- main


def check_nvjpeg(data: str | None) -> dict[str, Any]:
    """compute.decode: cuda decodes the first training shard of ``data`` (gpu_check.py's synthetic
    ImageNet-shaped set: a CMYK JPEG and a PNG named .JPEG among them) as PIL does: every row,
    same keys, pixels within JPEG decoders' rounding."""
    import numpy as np

    from pipeline.data.manifest import load_manifest
    from pipeline.precompute.feed import decode_shard

    if data is None:
        return {"ok": None, "skipped": "no --data (run gpu_check.py data first)"}
    shard = str(load_manifest(data).shard_paths("train")[0])
    t0 = time.perf_counter()
    pil = decode_shard(shard, pool=None)
    pil_s = time.perf_counter() - t0
    decode_shard(shard, pool=None, decode="cuda", device="cuda")  # warm-up: nvJPEG handles
    t0 = time.perf_counter()
    gpu = decode_shard(shard, pool=None, decode="cuda", device="cuda")
    gpu_s = time.perf_counter() - t0
    by_key = {s.key: s for s in gpu}
    diffs = [np.abs(np.asarray(a.image.convert("RGB"), dtype=np.int16) - np.asarray(by_key[a.key].image.convert("RGB"), dtype=np.int16))
             for a in pil if a.key in by_key and a.image.size == by_key[a.key].image.size]
    same_keys = [s.key for s in pil] == [s.key for s in gpu]
    mean = float(np.mean([d.mean() for d in diffs])) if diffs else float("nan")
    n = len(pil)
    return {"ok": same_keys and len(diffs) == n and mean < 2.0, "images": n, "decoded_cuda": len(gpu),
            "missing_keys": sorted({s.key for s in pil} - set(by_key))[:10], "mean_abs_diff": round(mean, 3),
            "max_abs_diff": max((int(d.max()) for d in diffs), default=None),
            "ms_per_image_pil": round(1e3 * pil_s / n, 2), "ms_per_image_nvjpeg_incl_copy_back": round(1e3 * gpu_s / n, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"), help="Output folder (placement.json).")
    parser.add_argument("--dry-run", action="store_true", help="No GPU: run the checks that work on the CPU.")
    parser.add_argument("--data", default=None, help="Dataset folder of gpu_check.py's data step (nvJPEG check).")
    parser.add_argument("--child", choices=["embedded", "rank"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "embedded":
        child_embedded(args.n)
        return 0
    if args.child == "rank":
        child_rank()
        return 0

    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("no CUDA device: run with --dry-run for the CPU checks", file=sys.stderr)
        return 2
    uuids = _uuids() if cuda else []
    checks = {
        "embedded-visible-devices": (lambda: check_embedded(uuids)) if cuda else None,
        "torchrun-visible-devices": (lambda: check_torchrun(uuids)) if cuda else None,
        "shared-gpu-refused": check_shared_gpu if cuda else None,
        "gpu-slots-refused": check_gpu_slots if cuda else None,
        "cpu-worker-in-cuda-run": check_cpu_worker,
        "saliency-fp32": lambda: check_saliency("cuda" if cuda else "cpu"),
        "nvjpeg-decode": (lambda: check_nvjpeg(args.data)) if cuda else None,
    }
    results: dict[str, Any] = {"cuda": cuda, "gpus": len(uuids), "uuids": uuids,
                               "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    failed = 0
    for name, fn in checks.items():
        if fn is None:
            results[name] = {"ok": None, "skipped": "needs a CUDA device"}
            print(f"SKIP {name} (needs a CUDA device)", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            res = fn()
        except Exception as exc:  # noqa: BLE001 - a crashed check is a failed one; the others still run
            res = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        res["seconds"] = round(time.perf_counter() - t0, 2)
        results[name] = res
        if res["ok"] is None:
            print(f"SKIP {name} ({res.get('skipped')})", flush=True)
            continue
        failed += not res["ok"]
        detail = {k: v for k, v in res.items() if k not in ("ok", "traceback")}
        print(f"{'PASS' if res['ok'] else 'FAIL'} {name}: {json.dumps(detail)[:600]}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "placement.json").write_text(json.dumps(results, indent=1))
    print(f"{failed} check(s) failed; details in {out / 'placement.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
