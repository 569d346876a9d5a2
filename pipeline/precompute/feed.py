"""The precompute task's data path: decode a shard once, render each view once, ahead of the device.

A task covers one shard for every view epoch of its segment (:mod:`pipeline.precompute.task`):

- :func:`decode_shard` streams and hashes the tar in the task's thread while a pool of threads
  decodes the images (PIL releases the GIL while decoding and resizing), once per segment;
- :class:`EpochPixels` renders one view epoch's views to uint8 (crop, flip, RandAugment: the PIL
  part of :func:`maskedkd.rendering.render`) on the same pool, in row order and a few batches ahead
  of the consumer, once per distinct :class:`~maskedkd.rendering.PixelSpec` (student and teacher at
  one size share them), into pinned memory when the device is CUDA;
- :meth:`EpochPixels.batch` copies a batch's pixels to the device and finishes them there
  (normalise, erase, mix: :func:`maskedkd.rendering.finish_views`), bit-identical on CPU to
  :func:`maskedkd.rendering.render_batch`. On CUDA a batch is gathered into one of two pinned uint8
  buffers in turn and copied without waiting, its erase noise likewise
  (:mod:`pipeline.precompute.erase`): the host prepares batch n+1 while the device runs batch n.

``compute.decode: cuda`` decodes the JPEGs with ``torchvision.io.decode_jpeg`` on the device
(nvJPEG) in batches, copies each decoded batch back in one copy, then renders them with PIL like
any other image. nvJPEG's pixels differ from libjpeg's, so it enters the view fingerprint
(:func:`pipeline.precompute.spec.task_fingerprints`). What nvJPEG cannot decode (CMYK JPEGs, PNG
bytes named ``.JPEG``, a JPEG it refuses) is decoded by PIL instead, counted in the task's
``decode_fallbacks``; no row is dropped that PIL can read. It is refused where CUDA is absent; the
fallback is tested on the CPU with a stand-in decoder, nvJPEG itself only on a GPU.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from maskedkd.rendering import PixelSpec, finish_views, render_pixels
from maskedkd.resize import pixel_array
from maskedkd.views import View
from pipeline.data.shards import (
    MAX_IMAGE_PIXELS,
    RawSample,
    Sample,
    Skipped,
    check_image,
    decode_image,
    read_shard,
    read_shard_raw,
)
from pipeline.errors import ConfigError
from pipeline.labels.contract import RenderSpec
from pipeline.placement import to_device, to_host, use_device
from pipeline.precompute.erase import FillStage, draw_fill

DECODERS = ("pil", "cuda")
CHUNK_ROWS = 8  # rows per render job: big enough to amortise a job's overhead, small enough to balance threads


def feed_threads(requested: int | None) -> int:
    """The render/decode threads of a task: ``requested``, else the threads its worker was given."""
    if requested:
        return int(requested)
    from pipeline.precompute.worker import worker_threads

    return worker_threads() or torch.get_num_threads() or os.cpu_count() or 1


def decode_shard(path: str, *, pool: Executor | None, decode: str = "pil", device: str = "cpu",
                 report: list | None = None, num_classes: int | None = None, sha256: str | None = None,
                 limit: int | None = None, stats: dict | None = None) -> list[Sample]:
    """Every usable sample of the shard, decoded (``read_shard`` with decodes on ``pool``).

    ``stats``: with ``decode="cuda"``, ``stats["decode_fallbacks"]`` counts the JPEGs nvJPEG could
    not decode and PIL did (:func:`decode_raws`).

    Raises:
        ConfigError: ``decode="cuda"`` without a CUDA device.
        DataError: as :func:`pipeline.data.shards.read_shard`.
    """
    if decode == "pil":
        return list(read_shard(path, report=report, num_classes=num_classes, sha256=sha256, limit=limit, pool=pool))
    if decode != "cuda":
        raise ConfigError(f"compute.decode: {decode!r} is not one of {', '.join(DECODERS)}")
    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise ConfigError(f"compute.decode: cuda decodes JPEGs with nvJPEG on the task's GPU, but this task runs on "
                          f"{device!r} (CUDA available: {torch.cuda.is_available()}); use compute.decode: pil")
    return _decode_cuda(path, device=device, report=report, num_classes=num_classes, sha256=sha256, limit=limit,
                        stats=stats)


def _decode_cuda(path: str, *, device: str, report: list | None, num_classes: int | None, sha256: str | None,
                 limit: int | None, stats: dict | None = None, batch: int = 64) -> list[Sample]:
    """The shard's images decoded by nvJPEG in batches, those it cannot decode by PIL (:func:`decode_raws`)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def nvjpeg(datas: list[torch.Tensor]) -> list[torch.Tensor]:
        return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)

    raws: list[RawSample] = []
    for r in read_shard_raw(path, report=report, num_classes=num_classes, sha256=sha256):
        if limit is not None and len(raws) >= limit:
            # hashing the rest; nothing past the limit is decoded or reported (an image that neither
            # nvJPEG nor PIL decodes then leaves the task short of `limit` rows, where the PIL
            # reader would take the next sample: rare)
            continue
        try:
            check_image(r.image_bytes, max_pixels=MAX_IMAGE_PIXELS)  # the bomb guard nvJPEG lacks
        except ValueError as e:
            if report is not None:
                report.append(Skipped(r.key, f"{r.image_ext}: {e}"))
            continue
        raws.append(r)
    out: list[Sample] = []
    for start in range(0, len(raws), batch):
        out.extend(decode_raws(raws[start:start + batch], nvjpeg, report=report, stats=stats))
    return out[:limit] if limit is not None else out


def nvjpeg_can_decode(data: bytes) -> bool:
    """Whether nvJPEG should get these bytes: a baseline-colour JPEG (RGB or greyscale) by its header.

    CMYK/YCCK JPEGs (nvJPEG refuses or mis-colours them) and other formats under a ``.JPEG``
    name (ImageNet has PNG bytes named so) go to PIL instead.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format == "JPEG" and img.mode in ("RGB", "L")
    except Exception:  # noqa: BLE001 - unreadable header: PIL decides (and reports) it
        return False


def decode_raws(raws: Sequence, nvjpeg, *, report: list | None = None, stats: dict | None = None) -> list[Sample]:
    """``raws`` decoded, in order: by ``nvjpeg`` (a batch of uint8 byte tensors -> CHW uint8 device
    tensors) where :func:`nvjpeg_can_decode` says so, else, or when nvJPEG fails on the image, by PIL.

    Never drops a row that PIL can decode: each PIL fallback counts in ``stats["decode_fallbacks"]``.
    An image neither decodes is skipped and reported as the PIL reader reports it. The decoded
    batch comes back to the host in one copy (:func:`pipeline.placement.to_host`).
    """
    gpu = [i for i, r in enumerate(raws) if r.image_ext in ("jpg", "jpeg") and nvjpeg_can_decode(r.image_bytes)]
    decoded: dict[int, torch.Tensor] = {}
    data = [torch.frombuffer(bytearray(raws[i].image_bytes), dtype=torch.uint8) for i in gpu]
    try:
        decoded = dict(zip(gpu, to_host(*nvjpeg(data)))) if gpu else {}
    except Exception:  # noqa: BLE001 - the batch failed: find the image(s) nvJPEG refuses one by one
        for i, d in zip(gpu, data):
            try:
                decoded[i] = to_host(*nvjpeg([d]))[0]
            except Exception:  # noqa: BLE001, S112 - nvJPEG raises RuntimeError on data it cannot decode: PIL below
                continue
    out: list[Sample] = []
    for i, r in enumerate(raws):
        if i in decoded:
            out.append(Sample(r.key, _to_pil(decoded[i]), r.label))
            continue
        try:
            out.append(Sample(r.key, decode_image(r.image_bytes), r.label))
        except Exception as e:  # noqa: BLE001 - a corrupt image: skipped, as the PIL reader skips it
            if report is not None:
                report.append(Skipped(r.key, f"{r.image_ext}: cannot decode image: {type(e).__name__}: {e}"))
            continue
        if r.image_ext in ("jpg", "jpeg") and stats is not None:
            stats["decode_fallbacks"] = stats.get("decode_fallbacks", 0) + 1
    return out


def _to_pil(chw: torch.Tensor) -> Image.Image:
    return Image.fromarray(chw.permute(1, 2, 0).contiguous().numpy(), "RGB")


def with_pixel_arrays(samples: list[Sample], renders: Sequence[RenderSpec], pool: Executor | None) -> list[Sample]:
    """``samples`` with their images as uint8 arrays where every render resizes with torch in one
    colour mode (:func:`maskedkd.resize.pixel_array`, once per segment, on ``pool``), else as they are.

    torch's resize reads an array; converting once spares each view epoch the copy out of the
    PIL image (0.1 ms of a 0.3 ms render at 224 px from 500x375), and the array is 3/4 of the
    PIL image's memory.
    """
    specs = {pixel_spec(r) for r in renders}
    modes = {s.mode for s in specs}
    if not samples or len(modes) != 1 or any(s.resize != "torch" for s in specs):
        return samples
    mode = modes.pop()
    images = [s.image for s in samples]
    arrays = list((pool.map if pool is not None else map)(pixel_array, images, [mode] * len(images)))
    return [replace(s, image=a) for s, a in zip(samples, arrays)]


def pixel_spec(r: RenderSpec, randaugment: bool = True) -> PixelSpec:
    """The uint8 pixels a model with render spec ``r`` sees (before normalisation).

    RandAugment fills with the mean; without it the mean does not touch the pixels, so models
    that differ in normalisation only share them.
    """
    spec = PixelSpec.create(r.size, r.mean, r.std, r.interpolation, r.resize)
    return spec if randaugment else replace(spec, fill=0)


class EpochPixels:
    """One view epoch's views of a shard rendered to uint8, per pixel spec, by a pool, in row order.

    Rendering runs ``ahead`` rows beyond the last row asked for, so the pool works while the
    consumer's batch is on the device. Every row is rendered once per pixel spec, whoever asks.
    An exception raised in a render thread is re-raised, as is, by the call that needs its rows.
    """

    def __init__(self, images: Sequence[Image.Image], views: Sequence[View], renders: Sequence[RenderSpec],
                 pool: Executor | None, *, ahead: int, pin: bool = False) -> None:
        self.images, self.views, self.pool = images, list(views), pool
        self.randaugment = any(op >= 0 for v in self.views for op in v.ra_op)
        self.specs = list(dict.fromkeys(pixel_spec(r, self.randaugment) for r in renders))
        n = len(self.views)
        self.pixels = {s: torch.empty(n, s.channels, *s.size, dtype=torch.uint8) for s in self.specs}
        self.fills: dict[PixelSpec, dict[int, torch.Tensor]] = {s: {} for s in self.specs}  # erase noise by row
        self.pin = pin
        self.staging: dict[tuple[PixelSpec, int], torch.Tensor] = {}  # two pinned batch buffers per spec
        self.fill_stage = FillStage()
        self.calls = 0
        self.index = {v.key: i for i, v in enumerate(self.views)}
        self.ahead = max(ahead, CHUNK_ROWS)
        self.jobs: list[Future | None] = []  # one per CHUNK_ROWS rows, in order
        self.done = 0  # rows rendered and checked

    def _render(self, start: int, stop: int) -> None:
        for i in range(start, stop):
            for s in self.specs:
                render_pixels(self.images[i], self.views[i], s, self.pixels[s][i])
                fill = draw_fill(self.views[i], s.channels, s.size)
                if fill is not None:
                    self.fills[s][i] = fill

    def _submit(self, stop: int) -> None:
        n = len(self.views)
        while len(self.jobs) * CHUNK_ROWS < min(n, stop):
            start = len(self.jobs) * CHUNK_ROWS
            end = min(n, start + CHUNK_ROWS)
            self.jobs.append(self.pool.submit(self._render, start, end) if self.pool is not None else None)

    def wait(self, stop: int) -> None:
        """Return once rows ``[0, stop)`` are rendered (rendering more ahead meanwhile)."""
        if stop <= self.done:
            return
        self._submit(stop + self.ahead)
        for c in range(self.done // CHUNK_ROWS, -(-stop // CHUNK_ROWS)):
            job = self.jobs[c]
            if job is None:
                self._render(c * CHUNK_ROWS, min(len(self.views), (c + 1) * CHUNK_ROWS))
            else:
                job.result()
            self.done = min(len(self.views), (c + 1) * CHUNK_ROWS)

    def batch(self, rows: np.ndarray, r: RenderSpec, device: str) -> torch.Tensor:
        """float32 [len(rows), C, H, W] on ``device``: the views of ``rows`` as ``r`` renders them."""
        rows = np.asarray(rows, dtype=np.int64)
        partners = sorted({self.index[self.views[i].partner] for i in rows if self.views[i].partner} - set(rows.tolist()))
        every = np.concatenate([rows, np.asarray(partners, dtype=np.int64)]) if partners else rows
        if len(every):
            self.wait(int(every.max()) + 1)
        spec = pixel_spec(r, self.randaugment)
        buf = self.pixels[spec]
        slot = self.calls % 2
        self.calls += 1
        if self.pin and len(every):
            pixels = self._staged(spec, slot, len(every))
            torch.index_select(buf, 0, torch.from_numpy(every), out=pixels)
        elif len(every) and not partners and np.array_equal(every, np.arange(every[0], every[0] + len(every))):
            pixels = buf[int(every[0]):int(every[0]) + len(every)]
        else:
            pixels = buf.index_select(0, torch.from_numpy(every))
        pixels = to_device(pixels, device)
        fills = self.fill_stage.to_device([self.fills[spec].get(int(i)) for i in every], device, slot)
        return finish_views(pixels, [self.views[i] for i in every], mean=r.mean, std=r.std, rows=len(rows),
                            fills=fills)

    def _staged(self, spec: PixelSpec, slot: int, rows: int) -> torch.Tensor:
        """The first ``rows`` rows of pinned batch buffer ``slot`` of ``spec`` (grown when short).

        Two buffers in turn: one is copied to the device while the host fills the other; a buffer
        is reused two batches later, after the batch loop's sync on the batch between.
        """
        buf = self.staging.get((spec, slot))
        if buf is None or len(buf) < rows:
            buf = self.staging[(spec, slot)] = torch.empty(rows, spec.channels, *spec.size,
                                                            dtype=torch.uint8).pin_memory()
        return buf[:rows]

    def close(self) -> None:
        """Cancel renders nobody will ask for (a task that failed half-way)."""
        for job in self.jobs:
            if job is not None:
                job.cancel()


def render_pool(threads: int, device: str = "cpu") -> Executor:
    """The task's pool of decode and render threads (they work while its own thread drives the device);
    each makes ``device`` its current CUDA device first (:func:`pipeline.placement.use_device`)."""
    return ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="mkd-feed",
                              initializer=use_device, initargs=(device,))


__all__ = ["DECODERS", "EpochPixels", "decode_raws", "decode_shard", "feed_threads", "nvjpeg_can_decode", "pixel_spec",
           "render_pool", "with_pixel_arrays"]
