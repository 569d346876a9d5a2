"""``mkd-pipeline bench teacher``: the teacher's throughput and measured MACs per keep count under a policy."""

from __future__ import annotations

from typing import Any

import timm
import torch

from maskedkd import is_forward_policy, resolve_keep, teacher_forward, teacher_macs
from pipeline._gpu import enable_tf32
from pipeline.bench.timing import interleaved_medians, machine_line
from pipeline.errors import ConfigError


def _step(model, images, policy: str, keep: int, keep_idx, device: str, amp: bool):
    def step() -> None:
        with torch.inference_mode(), torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            teacher_forward(model, images, policy, keep, keep_idx)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def run_bench(model_name: str, keeps: list[int], batch: int, repeats: int, device: str, dtype: str,
              policy: str = "student") -> dict:
    """Throughput of :func:`maskedkd.teacher_forward` under ``policy`` at each keep count (keep-set
    policies: ``masked_forward`` on a random keep set), the first full-width entry as baseline."""
    try:
        is_forward_policy(policy)
    except ValueError as e:
        raise ConfigError(f"--policy: {e}") from None
    try:
        model = timm.create_model(model_name, pretrained=False)
    except RuntimeError as e:
        raise ConfigError(f"--model: {e}") from None
    model = model.eval().to(device)
    if device.startswith("cuda"):
        enable_tf32()  # as the workers do: fp32 matmuls on tensor cores
    patch_embed: Any = model.patch_embed  # a timm ViT's
    n = patch_embed.num_patches
    for k in keeps:
        try:
            resolve_keep(k, n)
        except ValueError:
            raise ConfigError(f"--keep: {k} is not between 1 and {n} (patches of {model_name})") from None
    size = patch_embed.img_size
    images = torch.randn(batch, 3, *size, device=device)
    amp = dtype == "bf16"
    steps = {}
    for k in keeps:
        idx = None
        if not is_forward_policy(policy):
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(k))[:k].sort().values.expand(batch, k).to(device)
        steps[k] = _step(model, images, policy, k, idx, device, amp)
    seconds = interleaved_medians(steps, warmup=2, repeats=repeats)
    rows = [{"keep": k, "img_per_s": batch / seconds[k], "gmacs": teacher_macs(model, k, policy) / 1e9} for k in keeps]
    base = next((r["img_per_s"] for r in rows if r["keep"] == n), rows[0]["img_per_s"])
    for r in rows:
        r["speedup"] = r["img_per_s"] / base
    return {"model": model_name, "batch": batch, "device": device, "dtype": dtype, "machine": machine_line(), "rows": rows,
            **({"policy": policy} if is_forward_policy(policy) else {})}


def teacher_table(result: dict) -> str:
    """Markdown of :func:`run_bench`'s record: one line per keep count."""
    lines = [f"{result['model']}{', policy ' + result['policy'] if 'policy' in result else ''}, batch {result['batch']}, {result['device']} {result['dtype']}; {result['machine']}",
             "| keep | img/s | speedup | GMACs/img |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['keep']} | {r['img_per_s']:.1f} | {r['speedup']:.2f}x | {r['gmacs']:.3f} |" for r in result["rows"]]
    return "\n".join(lines)
