"""Importers: turn a source dataset into deterministic WebDataset shards plus their manifest.

- :func:`import_fashion_mnist`: the IDX files of the Debian package ``dataset-fashion-mnist``,
  every image re-encoded as a lossless PNG whose bytes do not depend on the zlib build.
- :func:`import_imagefolder`: ImageNet's layout (one folder per class); image bytes are copied
  as they are, in a seeded shuffled order so that shards mix the classes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import re
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image

from pipeline._console import progress_bar
from pipeline._fingerprint import sha256_file
from pipeline.data.manifest import (
    MANIFEST_NAME,
    TIMM_INFO_NAME,
    DatasetManifest,
    load_manifest,
    size_stats,
)
from pipeline.data.shards import IMAGE_EXTS, IMAGE_FORMATS, sample_key, write_shards
from pipeline.data.swap import build_beside
from pipeline.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# the system copy; $MKD_FASHION_MNIST points elsewhere (a GPU machine without it: scripts/gpu_check.sh)
FASHION_MNIST_SRC = Path(os.environ.get("MKD_FASHION_MNIST") or "/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_SPLIT_RE = re.compile(r"^[A-Za-z0-9]+$")
_SHARD_RE = r"^{split}-[0-9]{{6}}\.tar$"


@dataclass(frozen=True)
class SourceImage:
    """One image to import: its bytes, extension, label and where it came from (for reports)."""

    data: bytes
    ext: str
    label: int
    source: str
    meta: bytes | None = None  # optional KEY.json sidecar


# ---------------------------------------------------------------------------------------------
# Shared: write one split, describe it


def _check_split(split: str) -> None:
    if not _SPLIT_RE.match(split):
        raise ConfigError(f"split name {split!r} must be letters and digits only (it names shards and keys)")


def write_split(
    out: Path, split: str, images: Iterable[SourceImage], count: int, shard_size: int, skipped: list[dict],
    progress: bool = False,
) -> dict:
    """Write ``count`` ``images`` as the split's shards; return the split's manifest record.

    ``progress``: a bar over the images on stderr (when it is a terminal and not ``-q``)."""
    widths: list[int] = []
    heights: list[int] = []
    modes: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    width = max(6, len(str(count - 1)))

    def samples() -> Iterator[tuple[str, dict[str, bytes]]]:
        index = 0
        for img in images:
            bar.update(1)
            try:  # header only: sizes for the manifest; full decoding is `data verify --decode`'s job
                with Image.open(io.BytesIO(img.data), formats=IMAGE_FORMATS) as im:
                    size, mode, fmt = im.size, im.mode, im.format
            except Exception as e:  # PIL raises many types for unreadable data
                skipped.append({"split": split, "source": img.source, "reason": f"unreadable image header: {e}"})
                continue
            widths.append(size[0])
            heights.append(size[1])
            modes[mode] += 1
            formats[(fmt or "unknown").lower()] += 1  # PIL's format is None for an image it cannot name
            members = {img.ext: img.data, "cls": str(img.label).encode()}
            if img.meta is not None:
                members["json"] = img.meta
            yield sample_key(split, index, width), members
            index += 1

    out.mkdir(parents=True, exist_ok=True)
    with progress_bar(total=count, desc=split, unit="img", enabled=progress) as bar:
        written = write_shards(samples(), out, split, shard_size)
    log.debug("split %s: %d shard(s) of up to %d samples in %s, %d skipped", split, len(written), shard_size, out,
              sum(1 for s in skipped if s["split"] == split))
    if not written:
        raise DataError(f"split {split!r}: no usable images to import")
    _remove_stale_shards(out, split, {name for name, _ in written})
    shards = {}
    for name, count in written:
        path = out / name
        shards[name] = {"samples": count, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return {
        "num_samples": sum(c for _, c in written),
        "image": {
            "width": size_stats(widths),
            "height": size_stats(heights),
            "modes": dict(sorted(modes.items())),
            "formats": dict(sorted(formats.items())),
        },
        "shards": shards,
    }


def _dataset_file(name: str, splits: Iterable[str]) -> bool:
    """Whether ``name`` is a manifest or a shard of one of ``splits`` (what an import rewrites)."""
    if name in (MANIFEST_NAME, TIMM_INFO_NAME) or name.endswith(".tmp"):
        return True
    return any(re.match(_SHARD_RE.format(split=re.escape(split)), name) for split in splits)


def _remove_stale_shards(out: Path, split: str, keep: set[str]) -> None:
    """Shards of an earlier import of this split (e.g. with another shard size) would be read as ours."""
    pattern = re.compile(_SHARD_RE.format(split=re.escape(split)))
    for path in out.iterdir():
        if pattern.match(path.name) and path.name not in keep:
            path.unlink()


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


def png_gray8(pixels: np.ndarray) -> bytes:
    """Encode an 8-bit grayscale image as PNG with stored (uncompressed) deflate blocks.

    zlib/zlib-ng builds compress differently, so a compressed PNG's bytes depend on the Pillow
    wheel; stored blocks make the bytes (and the shards' sha256) the same everywhere.
    """
    height, width = pixels.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), pixels.astype(np.uint8, copy=False)], axis=1)
    raw = rows.tobytes()  # filter type 0 on every row
    blocks = [b"\x78\x01"]  # zlib header: deflate, 32K window, no compression
    for start in range(0, len(raw), 65535):
        chunk = raw[start:start + 65535]
        final = start + 65535 >= len(raw)
        blocks.append(bytes([final]) + struct.pack("<HH", len(chunk), len(chunk) ^ 0xFFFF) + chunk)
    blocks.append(struct.pack(">I", zlib.adler32(raw)))

    def png_chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"".join(blocks)) + png_chunk(b"IEND", b"")


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes (the MNIST format).

    Raises:
        DataError: unreadable, not IDX ubyte, or shorter than its header says.
    """
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read gzipped IDX file: {e}") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes) but holds {len(body)} bytes")
    return np.frombuffer(body, np.uint8).reshape(dims)


def fashion_mnist_split(src: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images [n, 28, 28] uint8, labels [n])`` of one split ("train" or "test") of the IDX files in ``src``."""
    images_name, labels_name = FASHION_MNIST_FILES[split]
    images, labels = read_idx(src / images_name), read_idx(src / labels_name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{src}: {images_name} {images.shape} and {labels_name} {labels.shape} do not match")
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{src / labels_name}: label {labels.max()} outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
    return images, labels


def import_fashion_mnist(out: str | Path, src: str | Path = FASHION_MNIST_SRC, shard_size: int = 5000,
                         progress: bool = False) -> DatasetManifest:
    """Import Fashion-MNIST (60,000 train, 10,000 test) into ``out``; the same input gives the same bytes.

    ``progress``: a bar per split on stderr (when it is a terminal and not ``-q``).

    Raises:
        DataError: the source files are missing (the message says how to install them) or corrupt.
    """
    src, out = Path(src), Path(out)
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be >= 1, got {shard_size}")
    missing = [n for pair in FASHION_MNIST_FILES.values() for n in pair if not (src / n).is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found in {src} (missing {', '.join(missing)}). Install it with "
            f"`sudo apt-get install dataset-fashion-mnist`, or pass --src DIR holding the four IDX .gz files."
        )
    splits: dict[str, Any] = {}
    skipped: list[dict[str, str]] = []
    # built beside `out` and swapped in whole: a run never sees new shards under an old manifest
    with build_beside(out, carry=lambda name: not _dataset_file(name, FASHION_MNIST_FILES)) as work:
        for split in FASHION_MNIST_FILES:
            images, labels = fashion_mnist_split(src, split)
            items = (
                SourceImage(png_gray8(img), "png", int(label), f"{FASHION_MNIST_FILES[split][0]}[{i}]")
                for i, (img, label) in enumerate(zip(images, labels))
            )
            splits[split] = write_split(work, split, items, len(images), shard_size, skipped, progress)
        files = {n: sha256_file(src / n) for pair in FASHION_MNIST_FILES.values() for n in pair}
        manifest = DatasetManifest(
            name="fashion-mnist",
            classes=list(FASHION_MNIST_CLASSES),
            splits=splits,
            source={"kind": "fashion-mnist", "encoding": "png (8-bit gray, stored deflate)", "files": files},
            skipped=skipped,
        )
        manifest.save(work)
    manifest.root = out
    return manifest


# ---------------------------------------------------------------------------------------------
# ImageFolder


def _scan_imagefolder(src: Path, skipped: list[dict], split: str) -> tuple[list[str], list[tuple[str, int]]]:
    if not src.is_dir():
        raise DataError(f"image folder {src} does not exist or is not a folder")
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {src} has no class folders (expected SRC/<class>/<image>.jpg)")
    files: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        for path in sorted((src / name).rglob("*")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(src).parts):
                continue
            rel = path.relative_to(src).as_posix()
            if path.suffix.lower().lstrip(".") in IMAGE_EXTS:
                files.append((rel, label))
            else:
                skipped.append({"split": split, "source": rel, "reason": "not a .jpg/.jpeg/.png/.webp file"})
    for path in sorted(src.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            skipped.append({"split": split, "source": path.name, "reason": "not inside a class folder"})
    return classes, files


def _shuffled(files: list[tuple[str, int]], seed: int) -> list[tuple[str, int]]:
    """A seeded order that does not depend on the file system's listing order."""
    return sorted(files, key=lambda f: hashlib.blake2b(f"{seed}\0{f[0]}".encode(), digest_size=16).digest())


def _load_existing(out: Path, classes: list[str]) -> DatasetManifest | None:
    if not (out / MANIFEST_NAME).exists():
        return None
    existing = load_manifest(out)
    if existing.classes != classes:
        raise DataError(
            f"{out / MANIFEST_NAME} has classes {existing.classes[:5]}... ({existing.num_classes}); the source has "
            f"{classes[:5]}... ({len(classes)}): import into another --out folder"
        )
    return existing


def import_imagefolder(
    src: str | Path,
    out: str | Path,
    split: str,
    shard_size: int = 1000,
    seed: int = 0,
    name: str | None = None,
    progress: bool = False,
) -> DatasetManifest:
    """Import ``src/<class>/**/<image>`` as split ``split`` of the dataset in ``out``.

    Class indices follow sorted folder names. Image bytes are copied unchanged; each sample
    also gets ``KEY.json`` naming its source file. Other splits already in ``out`` are kept
    (their classes must match); an earlier import of the same split is replaced. ``progress``: a
    bar on stderr (when it is a terminal and not ``-q``).
    """
    src, out = Path(src), Path(out)
    _check_split(split)
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be >= 1, got {shard_size}")
    skipped: list[dict] = []
    classes, files = _scan_imagefolder(src, skipped, split)
    _load_existing(out, classes)  # fail early when the classes differ
    ordered = _shuffled(files, seed)

    def items() -> Iterable[SourceImage]:
        for rel, label in ordered:
            ext = Path(rel).suffix.lower().lstrip(".")
            meta = json.dumps({"src": rel}, separators=(",", ":")).encode()
            yield SourceImage((src / rel).read_bytes(), "jpg" if ext == "jpeg" else ext, label, rel, meta)

    # built beside `out` (the other splits' files linked in) and swapped in whole
    with build_beside(out, carry=lambda n: n in (MANIFEST_NAME, TIMM_INFO_NAME) or not _dataset_file(n, [split])) as work:
        existing = _load_existing(work, classes)  # as the import before this one (if any) left it
        record = write_split(work, split, items(), len(ordered), shard_size, skipped, progress)
        manifest = _imagefolder_manifest(existing, record, src, split, seed, name, classes, skipped)
        manifest.save(work)
    manifest.root = out
    return manifest


def _imagefolder_manifest(existing: DatasetManifest | None, record: dict, src: Path, split: str, seed: int,
                          name: str | None, classes: list[str], skipped: list[dict]) -> DatasetManifest:
    """The manifest after importing ``split``: the existing one's other splits plus ``record``."""
    if existing is not None:
        splits = {**existing.splits, split: record}
        prior = [s for s in existing.skipped if s["split"] != split]
        sources = {**existing.source.get("splits", {}), split: {"folder": src.resolve().name, "seed": seed}}
        dataset_name = name or existing.name
    else:
        splits, prior = {split: record}, []
        sources = {split: {"folder": src.resolve().name, "seed": seed}}
        dataset_name = name or src.resolve().name
    return DatasetManifest(
        name=dataset_name,
        classes=classes,
        splits=dict(sorted(splits.items())),
        source={"kind": "imagefolder", "splits": dict(sorted(sources.items()))},
        skipped=prior + skipped,
    )
