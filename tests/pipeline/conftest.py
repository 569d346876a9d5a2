"""Shared fixtures: a small *real* Fashion-MNIST dataset (shards + manifest) in a temp folder.

The images are the first samples of the Debian package ``dataset-fashion-mnist`` (the same
source ``mkd-pipeline data import fashion-mnist`` reads), written with the pipeline's own
importer, so tests exercise real shards and a real manifest without the 70,000-image import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.pipeline.data.helpers import real_fashion_mnist_subset
from tests.pipeline.s3server import S3Server, moto_server


@pytest.fixture(scope="session")
def fmnist_small(tmp_path_factory) -> Path:
    """Dataset folder: 768 real training images (3 shards of 256) and 512 test images (2 shards)."""
    return real_fashion_mnist_subset(tmp_path_factory.mktemp("fmnist-small") / "fashion-mnist", 768, 512, 256)


@pytest.fixture
def one_thread(monkeypatch):
    """torch with one intra-op thread for the test (restored after): tiny models gain nothing from
    more, and on a loaded 2-core machine OpenMP spinning made training steps 10-20x slower.
    ``OMP_NUM_THREADS=1`` too, so the runner's training stages keep the one thread
    (pipeline/train/threads.py) rather than take every core."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """One local S3-compatible server (moto's server mode) for the session; skipped without moto >= 5.2.6."""
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch) -> S3Server:
    """The local S3 server emptied, with buckets ``data``, ``labels`` and ``other``, and its
    credentials and endpoint in this test's environment (``AWS_*``): what a cluster's workers have."""
    s3_server.reset()
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    return s3_server
