"""Shared fixtures: a small *real* Fashion-MNIST dataset (shards + manifest) in a temp folder.

The images are the first samples of the Debian package ``dataset-fashion-mnist`` (the same
source ``mkd-pipeline data import fashion-mnist`` reads), written with the pipeline's own
importer, so tests exercise real shards and a real manifest without the 70,000-image import.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data.importers import FASHION_MNIST_FILES, FASHION_MNIST_SRC


def make_fashion_mnist_subset(out: Path, n_train: int, n_test: int, shard_size: int) -> Path:
    """Import the first ``n_train`` / ``n_test`` real Fashion-MNIST images into ``out``; returns ``out``."""
    from pipeline.data.importers import import_fashion_mnist, read_idx
    from tests.pipeline.data.helpers import write_idx

    missing = [n for pair in FASHION_MNIST_FILES.values() for n in pair if not (FASHION_MNIST_SRC / n).is_file()]
    if missing:
        pytest.skip(f"real Fashion-MNIST is not installed in {FASHION_MNIST_SRC} (make dataset)")
    src = out.parent / f"{out.name}-src"
    src.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        for name in FASHION_MNIST_FILES[split]:
            write_idx(src / name, read_idx(FASHION_MNIST_SRC / name)[:n])
    import_fashion_mnist(out, src=src, shard_size=shard_size)
    return out


@pytest.fixture(scope="session")
def fmnist_small(tmp_path_factory) -> Path:
    """Dataset folder: 768 real training images (3 shards of 256) and 512 test images (2 shards)."""
    return make_fashion_mnist_subset(tmp_path_factory.mktemp("fmnist-small") / "fashion-mnist", 768, 512, 256)


@pytest.fixture
def one_thread():
    """torch with one intra-op thread for the test (restored after): tiny models gain nothing from
    more, and on a loaded 2-core machine OpenMP spinning made training steps 10-20x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
