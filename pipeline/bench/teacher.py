"""``mkd-pipeline bench teacher``: masked-teacher throughput and measured MACs per keep count."""

from __future__ import annotations

import json
from typing import Any

import click

from pipeline.bench.timing import interleaved_medians, machine_line
from pipeline.errors import ConfigError


def _parse_keep(value: str) -> list[int]:
    try:
        keeps = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not keeps:
        raise click.BadParameter("give at least one keep count")
    return keeps


def _step(model, images, keep_idx, device: str, amp: bool):
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    import torch

    from maskedkd import masked_forward

    def step() -> None:
        with torch.inference_mode(), torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            masked_forward(model, images, keep_idx)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def run_bench(model_name: str, keeps: list[int], batch: int, repeats: int, device: str, dtype: str) -> dict:
    """Throughput of ``masked_forward`` at each keep count, the first full-width entry as baseline."""
    # lazy: `mkd-pipeline bench --help` imports every bench module; torch/timm would add 2-4 s
    import timm
    import torch

    from maskedkd import resolve_keep, teacher_macs

    try:
        model = timm.create_model(model_name, pretrained=False)
    except RuntimeError as e:
        raise ConfigError(f"--model: {e}") from None
    model = model.eval().to(device)
    if device.startswith("cuda"):
        from pipeline._gpu import enable_tf32

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
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(k))[:k].sort().values
        steps[k] = _step(model, images, idx.expand(batch, k).to(device), device, amp)
    seconds = interleaved_medians(steps, warmup=2, repeats=repeats)
    rows = [{"keep": k, "img_per_s": batch / seconds[k], "gmacs": teacher_macs(model, k) / 1e9} for k in keeps]
    base = next((r["img_per_s"] for r in rows if r["keep"] == n), rows[0]["img_per_s"])
    for r in rows:
        r["speedup"] = r["img_per_s"] / base
    return {"model": model_name, "batch": batch, "device": device, "dtype": dtype, "machine": machine_line(), "rows": rows}


@click.command("teacher")
@click.option("--model", "model_name", default="deit_small_patch16_224", show_default=True, help="timm model name (random weights).")
@click.option("--keep", "keep", default="196,147,98,49", show_default=True, help="Comma-separated patch counts to keep.")
@click.option("--batch", default=32, show_default=True, type=click.IntRange(1))
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1), help="Timed repeats (median reported).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [{"keep", "img_per_s", "speedup", "gmacs"}, ...]}.')
def bench_teacher(model_name: str, keep: str, batch: int, repeats: int, device: str, dtype: str, as_json: bool) -> None:
    """Masked teacher throughput at each keep count, speedup over the full teacher, GMACs/image.

    GMACs are multiply-accumulates counted by torch's FlopCounterMode (the unit the DeiT and
    MaskedKD papers call "GFLOPs").
    """
    result = run_bench(model_name, _parse_keep(keep), batch, repeats, device, dtype)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{model_name}, batch {batch}, {device} {dtype}; {result['machine']}")
    click.echo("| keep | img/s | speedup | GMACs/img |")
    click.echo("|---:|---:|---:|---:|")
    for r in result["rows"]:
        click.echo(f"| {r['keep']} | {r['img_per_s']:.1f} | {r['speedup']:.2f}x | {r['gmacs']:.3f} |")
