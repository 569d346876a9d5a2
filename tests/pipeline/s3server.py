"""A real S3-compatible server on localhost for the object-store tests: moto's server mode.

One server per test session (:func:`moto_server`); each test gets it emptied, with fresh
buckets, and the credentials and endpoint in its environment as a cluster's workers would have
them (``AWS_*``), never in a stage file. The secret is unique to the session, so a test can grep
for it in everything the pipeline wrote or printed.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs
import pytest

BUCKETS = ("data", "labels", "other")
# pyarrow writes by multipart upload; moto 5.2.1 fails to complete one, 5.2.6 does (pyproject: test extra)
MIN_MOTO = (5, 2, 6)


@dataclass(frozen=True)
class S3Server:
    """A running server: its endpoint, the environment that reaches it, and a filesystem on it."""

    endpoint: str
    env: dict[str, str]
    fs: pafs.S3FileSystem

    @property
    def secret(self) -> str:
        return self.env["AWS_SECRET_ACCESS_KEY"]

    def reset(self) -> None:
        """Drop every bucket and object, then create :data:`BUCKETS` again."""
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"), timeout=30)
        for bucket in BUCKETS:
            self.fs.create_dir(bucket)

    def files(self, prefix: str) -> list[str]:
        """Every object under ``prefix`` (``bucket/key...``), sorted."""
        infos = self.fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File)

    def upload(self, local: Path, prefix: str) -> None:
        """Copy the files of the local folder ``local`` to ``prefix`` (``bucket/key``)."""
        for p in sorted(local.rglob("*")):
            if p.is_file():
                with self.fs.open_output_stream(f"{prefix}/{p.relative_to(local).as_posix()}") as f:
                    f.write(p.read_bytes())


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[S3Server]:
    """Start ``moto_server`` (from this interpreter's environment) on a free port; skip without one."""
    import importlib.metadata

    try:
        version = tuple(int(x) for x in importlib.metadata.version("moto").split(".")[:3])
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("moto is not installed (pip install -e '.[test]')")
    if version < MIN_MOTO:
        pytest.skip(f"moto {version} cannot complete pyarrow's multipart uploads; >= 5.2.6 can")
    server = Path(sys.executable).parent / "moto_server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "mkdtestkey", "AWS_SECRET_ACCESS_KEY": f"mkd-secret-{secrets.token_hex(8)}",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    with log.open("wb") as out:
        proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
        try:
            fs = pafs.S3FileSystem(access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                                   endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                                   allow_bucket_creation=True, allow_bucket_deletion=True)
            for attempt in range(200):
                try:
                    fs.get_file_info(pafs.FileSelector("", allow_not_found=True))
                    break
                except OSError:
                    if attempt == 199 or proc.poll() is not None:
                        raise
                    time.sleep(0.1)  # the server is starting
            yield S3Server(endpoint, env, fs)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
