"""Check a dataset folder (local or a URI) against its manifest: files, sizes, sha256, sample counts, labels."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import pyarrow.fs as pafs

from pipeline.data.manifest import (
    TIMM_INFO_NAME,
    DatasetManifest,
    ShardEntry,
    load_manifest,
)
from pipeline.data.shards import read_shard, read_shard_raw
from pipeline.errors import DataError
from pipeline.paths import child, file_sha256, file_size, read_bytes, resolve

_SHARD_FILE = re.compile(r"^([A-Za-z0-9]+)-[0-9]{6}\.tar$")


def _check_timm_info(manifest: DatasetManifest, root: Path | str) -> list[str]:
    path = child(root, TIMM_INFO_NAME)
    try:
        info = json.loads(read_bytes(path))
    except FileNotFoundError:
        return [f"{path} is missing (timm's wds/ reader needs it; re-run the import)"]
    except (OSError, ValueError) as e:
        return [f"{path} is unreadable: {e}"]
    if info.get("splits") != manifest.timm_info()["splits"]:
        return [f"{path} disagrees with the manifest's splits, shard names or counts"]
    return []


def _check_shard(manifest: DatasetManifest, entry: ShardEntry, decode: bool) -> list[str]:
    path = entry.path
    assert path is not None  # a manifest loaded from its folder gives each shard its path
    name = entry.name
    size = file_size(path)
    if size is None:
        return [f"{name}: missing"]
    problems = []
    if size != entry.bytes:
        problems.append(f"{name}: {size} bytes, manifest says {entry.bytes}")
    elif file_sha256(path) != entry.sha256:
        problems.append(f"{name}: sha256 differs from the manifest (content changed)")
    skipped: list = []
    count = 0
    try:
        n = manifest.num_classes  # a label outside the classes is reported by key, like any unusable sample
        samples = read_shard(path, report=skipped, num_classes=n) if decode else read_shard_raw(path, report=skipped, num_classes=n)
        for _ in samples:
            count += 1
    except DataError as e:
        return problems + [str(e)]
    problems += [f"{name}: sample {s.key} unusable: {s.reason}" for s in skipped]
    if count + len(skipped) != entry.samples:  # unusable samples are listed above already
        problems.append(f"{name}: {count + len(skipped)} samples, manifest says {entry.samples}")
    return problems


def verify_dataset(
    root: str | Path, *, decode: bool = False, progress: Callable[[str], None] | None = None
) -> list[str]:
    """Re-hash and re-count every shard of the dataset in ``root`` against its manifest.

    Args:
        root: the dataset folder (holding ``manifest.json``), or its URI.
        decode: also decode every image (slower; finds corrupt images).
        progress: called with one line per split checked.

    Returns:
        Human-readable problems; empty when everything matches.

    Raises:
        DataError: the manifest itself is missing or invalid.
    """
    manifest = load_manifest(root)
    assert manifest.root is not None  # loaded from its folder
    root = manifest.root
    problems = _check_timm_info(manifest, root)
    for split in sorted(manifest.splits):
        before = len(problems)
        shards = manifest.shards(split)
        for entry in shards:
            problems += _check_shard(manifest, entry, decode)
        if progress:
            status = "ok" if len(problems) == before else f"{len(problems) - before} problem(s)"
            progress(f"{split}: {len(shards)} shards, {manifest.num_samples(split):,} samples: {status}")
    listed = {name for split in manifest.splits for name in manifest.split(split)["shards"]}
    fs, fs_root = resolve(root)
    for info in sorted(fs.get_file_info(pafs.FileSelector(fs_root)), key=lambda i: i.base_name):
        if _SHARD_FILE.match(info.base_name) and info.base_name not in listed:
            problems.append(f"{info.base_name}: shard file not listed in the manifest")
    return problems
