"""Fixtures for the data tests: small real datasets (see :mod:`tests.pipeline.data.helpers`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.pipeline.data.helpers import encode, make_fake_fashion_mnist, rgb


@pytest.fixture
def fake_fashion_mnist(tmp_path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A Fashion-MNIST source folder with 30 train and 12 test random images."""
    src = tmp_path / "fmnist-src"
    return src, make_fake_fashion_mnist(src)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """ImageNet layout: 3 classes of JPEG/PNG/WEBP images of different sizes."""
    root = tmp_path / "folder"
    for c, cls in enumerate(["cat", "ant", "bee"]):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            array = rgb(10 * c + i, 16 + 4 * i, 24 + 2 * c)
            fmt, ext = [("JPEG", "JPEG"), ("PNG", "png"), ("WEBP", "webp"), ("JPEG", "jpg")][i]
            (root / cls / f"img{i}.{ext}").write_bytes(encode(array, fmt))
    return root
