"""Local paths and object-store URIs behind one set of functions: the pipeline's one filesystem layer.

A location is a local path or a URI ``pyarrow.fs.FileSystem.from_uri`` understands (``file://``,
``s3://``, ``gs://``, ``hdfs://``, ...). Shards and their manifest, the label store and the
checkpoints workers load may each be either. Credentials and endpoints come from the backend's
usual environment and config files (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_ENDPOINT_URL`` / ``~/.aws``; ``GOOGLE_APPLICATION_CREDENTIALS``), never from the URI: a
query string (``?endpoint_override=...``) is refused, because :func:`join` appends parts to a URI
as it is written and they would land after the query, and because a stage file is no place for
an endpoint or a key.

Writes (:func:`write_bytes`) never show a half-written file under its final name (docs/design.md
§6, "Atomic writes per backend"): locally through :mod:`pipeline._atomic` (temp file, fsync,
rename; an exclusive write by hard link); on an object store the bytes go to a unique temp key
beside the final one (``.tmp-NAME.<random>``), and a server-side copy publishes them: a copy
creates its target whole or not at all, and a killed upload leaves at most the temp key (or an
incomplete multipart upload, never listed as an object).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import secrets
from pathlib import Path
from typing import IO, Iterator

import pyarrow.fs as pafs

from pipeline._atomic import TMP_PREFIX, write_atomic
from pipeline._fingerprint import sha256_file
from pipeline.errors import OutputError, StoreError

BUCKET_SCHEMES = ("s3", "gs", "gcs")  # scheme://bucket/key: one filesystem object per bucket, reused
READ_BUFFER = 1 << 20  # bytes per read from an object store: one ranged GET per MiB while streaming


def is_uri(path: str | Path) -> bool:
    """True for ``scheme://...`` paths (handled by ``pyarrow.fs``), False for local paths."""
    return "://" in str(path)


def local_root(path: str | Path) -> str | None:
    """The absolute local path of a local path or a ``file://`` URI; None for a remote one (``s3://`` ...)."""
    path = str(path)
    if not is_uri(path):
        return os.path.abspath(path)
    if not path.startswith("file://"):
        return None  # without asking pyarrow: an s3:// filesystem object may reach for the network
    return resolve(path)[1]


def location(path: str | Path) -> Path | str:
    """A local path as an absolute :class:`Path`, a URI as the string it is (``Path`` would fold its ``//``)."""
    return str(path) if is_uri(path) else Path(os.path.abspath(path))


def resolve(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the filesystem-relative path of a local path or URI.

    Raises:
        StoreError: a URI pyarrow does not understand, or one with a query string (see the module docstring).
    """
    path = str(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    if "?" in path:
        raise StoreError(f"{path.split('?', 1)[0]}?...: a URI with a query string; give endpoints, regions and keys in "
                         f"the environment (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, ...), never in a path")
    scheme, rest = path.split("://", 1)
    if scheme not in BUCKET_SCHEMES:
        return _from_uri(path)
    bucket, _, key = rest.partition("/")
    fs, base = _filesystem(scheme, bucket, os.environ.get("AWS_ENDPOINT_URL", ""))
    return fs, f"{base}/{key}".rstrip("/") if key else base


@functools.lru_cache(maxsize=64)
def _filesystem(scheme: str, bucket: str, _endpoint: str) -> tuple[pafs.FileSystem, str]:
    """One filesystem object per bucket (making one may ask the server for the bucket's region);
    keyed by the endpoint too, so a changed ``AWS_ENDPOINT_URL`` gets a new one."""
    return _from_uri(f"{scheme}://{bucket}")


def _from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow raises several types for unknown schemes / bad URIs
        raise StoreError(f"{uri}: not a path pyarrow.fs understands ({e})") from e


def join(root: str | Path, *parts: str) -> str:
    """``root/part/...`` for local roots and URIs alike."""
    if is_uri(root):
        return "/".join([str(root).rstrip("/"), *parts])
    return os.path.join(root, *parts)


def child(root: Path | str, *parts: str) -> Path | str:
    """:func:`join` keeping the form of ``root``: a :class:`Path` under a local root, a URI string under a URI."""
    return join(root, *parts) if is_uri(root) else Path(root, *parts)


def base_name(path: str | Path) -> str:
    """The last part of a local path or URI (its file name)."""
    return str(path).rstrip("/").rsplit("/", 1)[-1] if is_uri(path) else os.path.basename(path)


def file_exists(path: str | Path) -> bool:
    """True when a regular file is at the local path or URI."""
    fs, fs_path = resolve(path)
    return fs.get_file_info(fs_path).type == pafs.FileType.File


def is_dir(path: str | Path) -> bool:
    """True when a directory (an object store: a prefix with objects, or a bucket) is at the path or URI."""
    fs, fs_path = resolve(path)
    return fs.get_file_info(fs_path).type == pafs.FileType.Directory


def file_size(path: str | Path) -> int | None:
    """The size in bytes of the file at the local path or URI; None when there is none."""
    fs, fs_path = resolve(path)
    info = fs.get_file_info(fs_path)
    return info.size if info.type == pafs.FileType.File else None


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the file at a local path or URI (streamed)."""
    if not is_uri(path):
        return sha256_file(path)
    h = hashlib.sha256()
    with open_input(path) as f:
        while chunk := f.read(READ_BUFFER):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def open_input(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file read from the start, streamed (a local file, or an object read a MiB at a time).

    Raises:
        FileNotFoundError: nothing at ``path``; other :class:`OSError`: the store could not be read.
    """
    if not is_uri(path):
        with open(path, "rb") as f:
            yield f
        return
    fs, fs_path = resolve(path)
    if fs.get_file_info(fs_path).type != pafs.FileType.File:
        raise FileNotFoundError(2, "no such file", str(path))
    with fs.open_input_stream(fs_path, buffer_size=READ_BUFFER) as f:
        yield f  # a pyarrow NativeFile: read(n) -> bytes, as the callers need


def read_bytes(path: str | Path) -> bytes:
    """The whole file at a local path or URI (small files: manifests, checkpoints)."""
    with open_input(path) as f:
        return f.read()


def write_bytes(path: str | Path, data: bytes | memoryview, *, exclusive: bool = False) -> None:
    """Publish ``data`` at ``path`` (local path or URI) whole or not at all (see the module docstring).

    ``exclusive``: publish only if ``path`` does not exist yet, else raise :class:`FileExistsError`
    (local: atomic, first writer wins; object store: checked just before the copy, so of writers
    racing within that moment the last copy wins, every one of them a complete file).

    Raises:
        OutputError: the file cannot be written (disk full, permissions, an unreachable store);
            nothing is left under ``path`` but what was there before.
    """
    fs, fs_path = resolve(path)
    if fs.type_name == "local":  # a path or a file:// URI
        write_atomic(fs_path, lambda f: f.write(data), exclusive=exclusive)
        return
    directory, name = fs_path.rsplit("/", 1)
    tmp = f"{directory}/{TMP_PREFIX}{name}.{secrets.token_hex(6)}"
    try:
        fs.create_dir(directory, recursive=True)
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        if exclusive and fs.get_file_info(fs_path).type != pafs.FileType.NotFound:
            raise FileExistsError(17, "already published", str(path))
        fs.copy_file(tmp, fs_path)  # server-side: the object appears whole or not at all
    except FileExistsError:
        raise
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e}); nothing was published under this name") from e
    finally:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
