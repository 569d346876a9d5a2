"""``mkd-pipeline bench store``: label partition size on disk, write and read throughput.

Single-threaded on purpose (Arrow CPU and I/O pools set to 1 thread, torch to 1 thread, reads
with ``use_threads=False``): the numbers are per core, and a Dask worker or trainer process
rarely has more than one to spare for labels.
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from maskedkd import from_logits
from pipeline._fingerprint import sha256_json
from pipeline.bench.timing import interleaved_medians, machine_line
from pipeline.labels import open_partition, write_partition
from pipeline.labels.summary import column_bytes_per_row


def synthetic_labels(n: int, num_classes: int, num_patches: int, *, seed: int = 0) -> dict[str, Any]:
    """Teacher-like inputs for :func:`pipeline.labels.write_partition` (all but target/metadata).

    Returns ``{"keys", "labels", "keep", "logits"}``: keys like ``train_0000123`` (tar order),
    uniform labels, float32 logits [n, C] of a teacher that is right ~85% of the time and puts
    its runner-up mass on nearby class indices (ImageNet orders related classes together), and
    keep sets of half the grid chosen from a smooth, centre-biased saliency map, as a ViT's CLS
    attention is. Synthetic: real teachers' logits and masks may compress better or worse.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    classes = np.arange(num_classes)
    logits = rng.normal(0.0, 1.5, (n, num_classes)).astype(np.float32)
    predicted = np.where(rng.random(n) < 0.85, labels, np.clip(labels + rng.integers(-5, 6, n), 0, num_classes - 1))
    for start in range(0, n, 4096):  # chunks: the [chunk, C] temporaries stay small
        rows = slice(start, start + 4096)
        near = np.exp(-np.abs(classes[None] - predicted[rows, None]) / 5.0) * rng.uniform(2, 6, (len(predicted[rows]), 1))
        logits[rows] += near.astype(np.float32)
    logits[np.arange(n), predicted] += rng.uniform(4, 12, n).astype(np.float32)

    side = int(round(num_patches**0.5))
    grid = np.linspace(-0.5, 0.5, side)
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    saliency = -4.0 * (gx**2 + gy**2)[None] + rng.normal(0, 0.3, (n, side, side))
    for _ in range(4):  # a few random low-frequency waves per image
        freq, phase, amp = rng.uniform(1, 4, (n, 1, 1)), rng.uniform(0, 2 * np.pi, (n, 1, 1)), rng.normal(0, 0.5, (n, 1, 1))
        angle = rng.uniform(0, np.pi, (n, 1, 1))
        saliency += amp * np.cos(2 * np.pi * freq * (np.cos(angle) * gx + np.sin(angle) * gy) + phase)
    saliency = saliency.reshape(n, -1)[:, :num_patches]
    keep = np.zeros((n, num_patches), dtype=bool)
    np.put_along_axis(keep, np.argsort(-saliency, axis=1)[:, : num_patches // 2], True, axis=1)
    return {"keys": [f"train_{i:07d}" for i in range(n)], "labels": labels, "keep": keep, "logits": logits}


def synthetic_metadata(n: int, shard: str = "train-000000") -> dict[str, Any]:
    """A valid metadata record for a partition of ``n`` rows, all computed."""
    fingerprints = {name: sha256_json({"bench": name}) for name in ("teacher", "student", "shard", "view", "mask", "label")}
    return {
        "shard": shard,
        "view_epoch": 0,
        "fingerprints": fingerprints,
        "counters": {"rows_computed": n, "rows_reused": 0, "teacher_macs": 0},
    }


def run_bench(rows: int, classes: int, k: int, patches: int, repeats: int) -> dict[str, Any]:
    """Bytes per row, write rows/s and read rows/s for ``topk: k`` and ``topk: all``, one thread."""
    threads = (pa.cpu_count(), pa.io_thread_count(), torch.get_num_threads())
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    torch.set_num_threads(1)
    try:
        return _measure(rows, classes, k, patches, repeats)
    finally:  # these are process-wide: give the caller its thread pools back
        pa.set_cpu_count(threads[0])
        pa.set_io_thread_count(threads[1])
        torch.set_num_threads(threads[2])


def _measure(rows: int, classes: int, k: int, patches: int, repeats: int) -> dict[str, Any]:
    data = synthetic_labels(rows, classes, patches)
    logits = torch.from_numpy(data.pop("logits"))
    rng = np.random.default_rng(1)
    views = {"view_box": rng.random((rows, 4), dtype=np.float32), "view_flip": rng.random(rows) < 0.5}
    targets = {"topk": from_logits(logits, k), "all": logits}
    result: dict[str, Any] = {"rows": rows, "classes": classes, "k": k, "patches": patches, "threads": 1,
                              "repeats": repeats, "machine": machine_line()}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        for name, target in targets.items():
            path = f"{tmp}/{name}.parquet"
            kwargs = dict(keys=data["keys"], labels=data["labels"], keep=data["keep"], target=target,
                          metadata=synthetic_metadata(rows), num_classes=classes)
            written = {}

            # write and read run within this iteration (interleaved_medians below), so the loop variables are current
            def write() -> None:  # noqa: B023
                written["result"] = write_partition(path, **kwargs)  # noqa: B023

            def read(columns=None) -> None:
                with open_partition(path) as partition:  # noqa: B023
                    for _ in partition.iter_batches(8192, columns=columns):
                        pass

            seconds = interleaved_medians(
                {"write": write, "read": read, "read_trainer": lambda: read(("keys", "target"))}, warmup=1, repeats=repeats
            )
            with open_partition(path) as partition:
                columns = column_bytes_per_row(partition)
            entry = {
                "bytes_per_row": written["result"].bytes / rows,
                "write_rows_per_s": rows / seconds["write"],
                "read_rows_per_s": rows / seconds["read"],
                "read_rows_per_s_trainer": rows / seconds["read_trainer"],
                "column_bytes_per_row": columns,
            }
            if name == "topk":
                with_views = write_partition(f"{tmp}/views.parquet", **kwargs, view_columns=views)
                entry["bytes_per_row_with_view"] = with_views.bytes / rows
                result.update(entry)
            else:
                result["all"] = entry
    return result


def store_table(r: dict[str, Any]) -> str:
    """Markdown of :func:`run_bench`'s record: top-K and all-logits rows, bytes per column."""
    a = r["all"]
    parts = ", ".join(f"{name} {b:.1f}" for name, b in r["column_bytes_per_row"].items())
    return "\n".join([
        f"{r['rows']:,} rows, {r['classes']} classes, {r['patches']} patches, 1 thread, median of {r['repeats']}",
        f"machine: {r['machine']}",
        "| labels | bytes/row | write rows/s | read rows/s (all columns) | read rows/s (keys + target) |",
        "|---|---|---|---|---|",
        f"| top-{r['k']} | {r['bytes_per_row']:.1f} ({r['bytes_per_row_with_view']:.1f} with a 4 x float32 box"
        f" + flip view) | {r['write_rows_per_s']:,.0f} | {r['read_rows_per_s']:,.0f} | {r['read_rows_per_s_trainer']:,.0f} |",
        f"| all {r['classes']} | {a['bytes_per_row']:.1f} | {a['write_rows_per_s']:,.0f} | {a['read_rows_per_s']:,.0f}"
        f" | {a['read_rows_per_s_trainer']:,.0f} |",
        f"top-{r['k']} bytes/row by column: {parts}",
    ])
