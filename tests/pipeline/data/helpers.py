"""Builders of small real test data: synthetic images, real tars, real PIL codecs, IDX files."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def encode(array: np.ndarray, fmt: str) -> bytes:
    """Image bytes of ``array`` in PIL format ``fmt`` (PNG, JPEG, WEBP)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def rgb(seed: int, h: int = 20, w: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_raw_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar with exactly these members in this order (for malformed shards)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzipped IDX ubyte file, the Fashion-MNIST source format."""
    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fake_fashion_mnist(src: Path, n_train: int = 30, n_test: int = 12) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A Fashion-MNIST source folder of random 28x28 images; returns ``{split: (images, labels)}``."""
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(src / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(src / f"{prefix}-labels-idx1-ubyte.gz", labels)
        data[split] = (images, labels)
    return data


def real_fashion_mnist_subset(out: Path, n_train: int, n_test: int, shard_size: int) -> Path:
    """The first ``n_train`` / ``n_test`` *real* Fashion-MNIST images as shards + manifest in ``out``.

    Written with the pipeline's own importer from the Debian package's files (skips the test
    when the package is not installed), so tests get real shards without the 70,000-image import.
    """
    import pytest

    from pipeline.data.importers import (
        FASHION_MNIST_FILES,
        FASHION_MNIST_SRC,
        import_fashion_mnist,
        read_idx,
    )

    if not all((FASHION_MNIST_SRC / n).is_file() for pair in FASHION_MNIST_FILES.values() for n in pair):
        pytest.skip(f"real Fashion-MNIST is not installed in {FASHION_MNIST_SRC} (make dataset)")
    src = out.parent / f"{out.name}-src"
    src.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        for name in FASHION_MNIST_FILES[split]:
            write_idx(src / name, read_idx(FASHION_MNIST_SRC / name)[:n])
    import_fashion_mnist(out, src=src, shard_size=shard_size)
    return out
