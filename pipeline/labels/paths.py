"""Where partitions live: paths derived from fingerprints, on any filesystem pyarrow knows.

A store root is a local path or a URI ``pyarrow.fs.FileSystem.from_uri`` understands
(``file://``, ``s3://``, ``gs://``, ``hdfs://``, ...). Layout under the root, Hive-style::

    teacher=<teacher[:12]>/shard=<shard>/epoch=<view_epoch>/v<view[:8]>-<digest[:16]>.parquet

``digest`` is the sha256 of the shard name, view epoch and *all* fingerprints, so identical
inputs give the same path and any other teacher, shard, view, mask or label spec gives another.
The ``key=value`` directories make a store skimmable, let precompute find the partitions of the
same (teacher, shard, view epoch, view spec) with one directory listing, and let any Hive-aware
reader glob a store with ``teacher``, ``shard`` and ``epoch`` (the view epoch) as columns, e.g.
DuckDB's ``read_parquet('<store>/**/*.parquet', hive_partitioning = true)``. Those three names
are not column names of a partition (:data:`HIVE_KEYS`; the writer refuses them as view columns),
because DuckDB and Polars silently let a Hive value replace a stored column of the same name.
Temporary files of writes in progress (or killed) start with ``.tmp-`` (:mod:`pipeline._atomic`);
only :func:`list_temp_files` lists them.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import pyarrow.fs as pafs

from pipeline._atomic import TMP_PREFIX
from pipeline._fingerprint import sha256_json
from pipeline.errors import ConfigError, StoreError
from pipeline.paths import base_name, file_exists, file_sha256, is_uri, join, local_root, resolve

# the filesystem layer (pipeline.paths) re-exported: the store's callers reach it as `paths.resolve` etc.

__all__ = ["HIVE_KEYS", "REQUIRED_FINGERPRINTS", "SUFFIX", "file_exists", "file_sha256", "is_uri", "join",
           "list_partitions", "list_temp_files", "local_root", "partition_path", "related_partitions", "resolve"]

REQUIRED_FINGERPRINTS = ("teacher", "shard", "view", "mask", "label")
_SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
SUFFIX = ".parquet"
# The Hive partition keys of the path, outermost first (see the module docstring).
HIVE_KEYS = ("teacher", "shard", "epoch")


def partition_path(root: str, *, shard: str, view_epoch: int, fingerprints: Mapping[str, str | None]) -> str:
    """The path of the partition of these inputs under the store ``root``.

    Args:
        root: the store root, a local path or a ``pyarrow.fs`` URI.
        shard: the shard's name (file name without ``.tar``).
        view_epoch: the view index (epoch mod views.pool).
        fingerprints: hex sha256 per input; needs ``teacher``, ``shard``, ``view``, ``mask`` and
            ``label``; every other entry (e.g. ``student``) also goes into the path's digest.

    Returns:
        A path (URI when ``root`` is one); the same arguments always give the same path.

    Raises:
        ConfigError: a fingerprint is missing or not hex sha256, or ``shard`` cannot be a path part.
    """
    directory, prefix = _place(root, shard, view_epoch, fingerprints)
    digest = sha256_json({"shard": shard, "view_epoch": view_epoch, "fingerprints": dict(fingerprints)})
    return join(directory, f"{prefix}{digest[:16]}{SUFFIX}")


def related_partitions(root: str, *, shard: str, view_epoch: int, fingerprints: Mapping[str, str | None]) -> list[str]:
    """Existing partitions of the same teacher, shard, view epoch and view spec (any mask/label).

    These are the candidates precompute may reuse rows from; open each with
    ``open_partition(path, expect=...)`` to confirm its fingerprints before trusting it.
    """
    directory, prefix = _place(root, shard, view_epoch, fingerprints)
    return [p for p in _files(directory, _is_partition, recursive=False) if base_name(p).startswith(prefix)]


def list_partitions(root: str) -> list[str]:
    """Every partition file under ``root`` (recursively, sorted); temp files are left out.

    Raises:
        StoreError: ``root`` does not exist or is not a directory.
    """
    fs, fs_root = resolve(root)
    if fs.get_file_info(fs_root).type != pafs.FileType.Directory:
        raise StoreError(f"{root}: no label store here (not a directory)")
    return _files(root, _is_partition)


def list_temp_files(root: str) -> list[str]:
    """Temp files left by writes that were killed before their rename (safe to delete)."""
    return _files(root, lambda name: name.startswith(TMP_PREFIX))


def _place(root: str, shard: str, view_epoch: int, fingerprints: Mapping[str, str | None]) -> tuple[str, str]:
    """Validated inputs -> (directory of the partition, file name prefix before the digest)."""
    if not root:
        raise ConfigError("label store root is empty")
    if not _SHARD_NAME.match(shard):
        raise ConfigError(f"shard name {shard!r} cannot be part of a path (use letters, digits, '.', '_', '-')")
    if not isinstance(view_epoch, int) or view_epoch < 0:
        raise ConfigError(f"view_epoch must be an int >= 0, got {view_epoch!r}")
    for name in REQUIRED_FINGERPRINTS:
        value = fingerprints.get(name)
        if not isinstance(value, str) or not _HEX.match(value):
            raise ConfigError(f"fingerprints.{name} must be a hex sha256, got {value!r}")
    # epoch unpadded: DuckDB reads a zero-padded value as a string, an unpadded one as an integer
    values = (str(fingerprints["teacher"])[:12], shard, str(view_epoch))  # str: checked above
    return join(root, *(f"{k}={v}" for k, v in zip(HIVE_KEYS, values))), f"v{str(fingerprints['view'])[:8]}-"


def _is_partition(name: str) -> bool:
    return name.endswith(SUFFIX) and not name.startswith(".")


def _files(root: str, wanted: Callable[[str], bool], *, recursive: bool = True) -> list[str]:
    """Sorted paths (in ``root``'s own form) of the files under ``root`` whose name is ``wanted``."""
    fs, fs_root = resolve(root)
    selector = pafs.FileSelector(fs_root, recursive=recursive, allow_not_found=True)
    rel = sorted(
        i.path[len(fs_root):].lstrip("/")
        for i in fs.get_file_info(selector)
        if i.type == pafs.FileType.File and wanted(i.base_name)
    )
    return [join(root, *r.split("/")) for r in rel]
