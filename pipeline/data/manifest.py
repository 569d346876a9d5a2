"""The dataset manifest: which shards make up each split, and their counts, sizes and sha256.

``manifest.json`` sits next to the shards (schema: ``pipeline/schemas/dataset.schema.json``); beside it
``_info.json`` says the same in the form timm's ``wds/`` reader expects.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pipeline._schemas import json_problem
from pipeline.errors import DataError
from pipeline.paths import base_name, child, is_uri, read_bytes

MANIFEST_NAME = "manifest.json"
TIMM_INFO_NAME = "_info.json"
FORMAT = "mkd-pipeline/dataset-manifest"
VERSION = 1


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest records it; ``path`` is set when the manifest came from a folder
    (a :class:`Path`, or a URI string for a dataset in an object store)."""

    name: str
    samples: int
    bytes: int
    sha256: str
    path: Path | str | None = None


@dataclass
class DatasetManifest:
    """A dataset's manifest. Build with :func:`load_manifest`, or from import results."""

    name: str
    classes: list[str]
    splits: dict[str, dict[str, Any]]
    source: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    root: Path | str | None = None  # a URI string for a dataset in an object store

    def split(self, split: str) -> dict[str, Any]:
        """The raw record of ``split``; a :class:`DataError` lists the splits there are."""
        try:
            return self.splits[split]
        except KeyError:
            raise DataError(f"dataset {self.name!r} has no split {split!r}; it has {sorted(self.splits)}") from None

    def shards(self, split: str) -> list[ShardEntry]:
        """The split's shards in order (with ``path`` when the manifest has a root folder)."""
        return [
            ShardEntry(name, s["samples"], s["bytes"], s["sha256"], child(self.root, name) if self.root else None)
            for name, s in sorted(self.split(split)["shards"].items())
        ]

    def shard_paths(self, split: str) -> list[Path | str]:
        """Absolute paths (or URIs) of the split's shards, in order."""
        if self.root is None:
            raise DataError(f"manifest of {self.name!r} was not loaded from a dataset folder: shard paths unknown")
        return [child(self.root, s.name) for s in self.shards(split)]

    def num_samples(self, split: str) -> int:
        """Samples in the split."""
        return int(self.split(split)["num_samples"])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (deterministic: no timestamps, no machine paths)."""
        doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "name": self.name, "source": self.source,
                               "classes": list(self.classes), "splits": self.splits}
        if self.skipped:
            doc["skipped"] = self.skipped
        return doc

    def timm_info(self) -> dict[str, Any]:
        """``_info.json`` for timm's ``wds/`` reader (``splits.<split>.{name, num_samples, filenames, shard_lengths}``)."""
        splits = {}
        for split in sorted(self.splits):
            shards = self.shards(split)
            splits[split] = {
                "name": split,
                "num_samples": self.num_samples(split),
                "filenames": [s.name for s in shards],
                "shard_lengths": [s.samples for s in shards],
            }
        return {"name": self.name, "num_classes": self.num_classes, "splits": splits}

    def save(self, root: str | Path) -> None:
        """Write ``manifest.json`` and ``_info.json`` into ``root`` (atomically, validated first)."""
        root = Path(root)
        doc = self.to_dict()
        validate_manifest(doc, root / MANIFEST_NAME)
        _write_json(root / MANIFEST_NAME, doc)
        _write_json(root / TIMM_INFO_NAME, self.timm_info())
        self.root = root


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def validate_manifest(doc: Any, where: str | Path) -> None:
    """Check ``doc`` against the schema and for internal consistency.

    Raises:
        DataError: naming ``where`` and the offending field.
    """
    problem = json_problem("dataset", doc, sep="/")
    if problem:
        raise DataError(f"{where}: invalid dataset manifest at {problem}")
    for split, record in doc["splits"].items():
        counted = sum(s["samples"] for s in record["shards"].values())
        if counted != record["num_samples"]:
            raise DataError(f"{where}: split {split!r} says num_samples={record['num_samples']} but its shards hold {counted}")
        wrong = [n for n in record["shards"] if not n.startswith(f"{split}-")]
        if wrong:
            raise DataError(f"{where}: split {split!r} lists shards of another split: {wrong}")


def load_manifest(dir_or_file: str | Path) -> DatasetManifest:
    """Load and validate a dataset manifest: a dataset folder or a manifest JSON file, local or a URI.

    Raises:
        DataError: missing, not JSON, or not a valid manifest (the message names the file).
    """
    path: Path | str = str(dir_or_file) if is_uri(dir_or_file) else Path(dir_or_file)
    if (not str(path).endswith(".json")) if is_uri(path) else Path(path).is_dir():  # a folder (a URI: a prefix)
        path = child(path, MANIFEST_NAME)
    name = base_name(path)
    try:
        doc = json.loads(read_bytes(path).decode())
    except FileNotFoundError:
        hint = " (import the dataset first: mkd-pipeline data import ...)" if name == MANIFEST_NAME else ""
        raise DataError(f"dataset manifest {path} does not exist{hint}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"dataset manifest {path} is unreadable: {e}") from None
    validate_manifest(doc, path)
    return DatasetManifest(
        name=doc["name"],
        classes=list(doc["classes"]),
        splits=doc["splits"],
        source=doc.get("source", {}),
        skipped=list(doc.get("skipped", [])),
        root=_folder_of(path) if name == MANIFEST_NAME else None,
    )


def _folder_of(manifest: Path | str) -> Path | str:
    """The dataset folder holding ``manifest``: resolved locally (links followed), the URI's prefix remotely."""
    if is_uri(manifest):
        return str(manifest).rsplit("/", 1)[0]
    return Path(manifest).parent.resolve()


def size_stats(values: Iterable[int]) -> dict[str, Any]:
    """``{"min", "max", "mean"}`` of image widths or heights (mean rounded to 3 decimals)."""
    values = list(values)
    return {"min": min(values), "max": max(values), "mean": round(sum(values) / len(values), 3)}
