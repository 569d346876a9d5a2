"""WebDataset shards: a deterministic writer and a safe, streaming reader (docs/design.md §5).

A shard is a plain tar of ``KEY.{jpg,png,webp}`` + ``KEY.cls`` (ASCII class index), optionally
``KEY.json``. The writer fixes every header field (mtime, owner, mode, member order), so the
same samples always give byte-identical tars. The reader streams members through
webdataset's tar iterator and only ever decodes images with PIL (PNG/JPEG/WEBP) and parses
``.cls`` as ASCII: nothing in a shard is unpickled or ``torch.load``-ed.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from PIL import Image

from pipeline.errors import DataError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
# Larger images are refused before decoding (decompression-bomb guard): 16k x 8k pixels.
MAX_IMAGE_PIXELS = 128 * 1024 * 1024
SHARD_MTIME = 0  # fixed header fields make tars byte-reproducible
_MEMBER_MODE = 0o444


def shard_name(split: str, index: int) -> str:
    """``train-000000.tar``: the shard file name of a split's ``index``-th shard."""
    return f"{split}-{index:06d}.tar"


def sample_key(split: str, index: int, width: int = 6) -> str:
    """``train_000123``: fixed-width keys sort and compare like their indices."""
    return f"{split}_{index:0{width}d}"


@dataclass(frozen=True)
class Sample:
    """One decoded sample of a shard."""

    key: str
    image: Image.Image
    label: int


class RawSample(NamedTuple):
    """One sample's undecoded members: image bytes and their extension, the ``.cls`` label."""

    key: str
    image_ext: str
    image_bytes: bytes
    label: int


class Skipped(NamedTuple):
    """A sample the reader skipped, and why (to be reported by whatever stage read it)."""

    key: str
    reason: str


# ---------------------------------------------------------------------------------------------
# Writing


class ShardWriter:
    """Writes one deterministic tar: atomically (``.tmp`` + fsync + rename) on :meth:`close`.

    Usage::

        with ShardWriter(path) as w:
            w.write(key, {"png": png_bytes, "cls": b"3"})
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = open(self._tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample; members are written in sorted extension order."""
        if "." in key or "/" in key or not key.isascii():
            raise ValueError(f"shard key {key!r} must be ASCII without '.' or '/'")
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = SHARD_MTIME
            info.mode = _MEMBER_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> None:
        """Finish the tar and move it into place."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file."""
        self._tar.close()
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shards(
    samples: Iterable[tuple[str, dict[str, bytes]]],
    out_dir: str | Path,
    split: str,
    shard_size: int,
) -> list[tuple[str, int]]:
    """Write ``(key, members)`` samples into ``{split}-NNNNNN.tar`` shards of ``shard_size`` samples.

    Returns:
        ``[(shard file name, sample count), ...]`` in order.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out_dir = Path(out_dir)
    written: list[tuple[str, int]] = []
    writer: ShardWriter | None = None
    try:
        for key, members in samples:
            if writer is None:
                writer = ShardWriter(out_dir / shard_name(split, len(written)))
            writer.write(key, members)
            if writer.count == shard_size:
                writer.close()
                written.append((writer.path.name, writer.count))
                writer = None
        if writer is not None:
            writer.close()
            written.append((writer.path.name, writer.count))
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    return written


# ---------------------------------------------------------------------------------------------
# Reading


def _check_end_of_archive(path: Path) -> None:
    """A tar cut at a member boundary reads as a shorter valid tar; its end marker is missing."""
    size = path.stat().st_size
    if size % 512:
        raise DataError(f"shard {path}: truncated tar ({size} bytes is not a multiple of 512)")
    with open(path, "rb") as f:
        f.seek(max(0, size - 512))
        if f.read(512) != bytes(512):
            raise DataError(f"shard {path}: truncated tar (no end-of-archive marker)")


def _tar_members(path: Path) -> Iterator[dict]:
    """``{"fname", "data"}`` per regular member in tar order, via webdataset's tar iterator."""
    # lazy: webdataset imports torch (+1.8 s), and `--help`, `data import` and `bench --help` import this module
    from webdataset.tariterators import tar_file_iterator

    try:
        with open(path, "rb") as stream:
            yield from tar_file_iterator(stream)
    except FileNotFoundError:
        raise DataError(f"shard {path} does not exist") from None
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise DataError(f"shard {path}: truncated or unreadable tar ({e})") from e
    if path.suffix == ".tar":
        _check_end_of_archive(path)


def _finish(key: str, members: dict[str, bytes], report: list | None, num_classes: int | None = None) -> RawSample | None:
    images = [ext for ext in members if ext in IMAGE_EXTS]
    problem = None
    if key.startswith("/") or ".." in key.split("/"):
        problem = "unsafe key (an absolute path or a '..' component)"
    elif not images:
        problem = "no image member (.jpg/.png/.webp)"
    elif len(images) > 1:
        problem = f"several image members ({', '.join(sorted(images))})"
    elif "cls" not in members:
        problem = "no .cls member"
    else:
        text = members["cls"].strip()
        if not (text.isdigit() and text.isascii()):
            problem = f".cls is not a non-negative ASCII integer ({members['cls'][:20]!r})"
        elif num_classes is not None and int(text) >= num_classes:
            problem = f".cls {int(text)} is outside the classes 0..{num_classes - 1}"
    if problem is not None:
        if report is not None:
            report.append(Skipped(key, problem))
        return None
    return RawSample(key, images[0], members[images[0]], int(members["cls"]))


def read_shard_raw(path: str | Path, *, report: list | None = None, num_classes: int | None = None) -> Iterator[RawSample]:
    """Stream a shard's samples undecoded, in tar order.

    A sample without exactly one image member, without a valid ``.cls`` (below ``num_classes``
    when given), whose key is an absolute path or has a ``..`` component, or whose key
    repeats an earlier sample's is skipped and appended to ``report`` as :class:`Skipped`.
    A member repeated within one sample is reported and dropped, the first one kept (as
    webdataset does).

    Raises:
        DataError: the tar is missing, truncated or unreadable (the message names it).
    """
    # lazy: webdataset imports torch (+1.8 s), and `--help`, `data import` and `bench --help` import this module
    from webdataset.tariterators import base_plus_ext

    path = Path(path)
    seen: set[str] = set()
    key: str | None = None
    members: dict[str, bytes] = {}
    duplicate = False

    def flush() -> RawSample | None:
        if key is None:
            return None
        if duplicate:
            if report is not None:
                report.append(Skipped(key, "duplicate key"))
            return None
        return _finish(key, members, report, num_classes)

    for member in _tar_members(path):
        fname = member["fname"]
        base, ext = base_plus_ext(fname)  # webdataset's KEY.EXT convention
        if base is None:
            continue
        ext = ext.lower()
        if base != key:
            sample = flush()
            if sample is not None:
                yield sample
            key, members, duplicate = base, {}, base in seen
            seen.add(base)
        if ext in members:
            if report is not None and not duplicate:
                report.append(Skipped(key, f"duplicate key (member {fname} repeated)"))
            continue
        members[ext] = member["data"]
    sample = flush()
    if sample is not None:
        yield sample


def decode_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode PNG/JPEG/WEBP bytes with PIL, refusing images over ``max_pixels`` before decoding.

    Raises:
        ValueError: not a readable PNG/JPEG/WEBP, or too many pixels.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise ValueError(f"{width}x{height} pixels exceeds the decompression-bomb limit of {max_pixels}")
        image.load()
    except ValueError:
        raise
    except Exception as e:  # PIL raises many types for corrupt data: report them all the same way
        raise ValueError(f"cannot decode image: {type(e).__name__}: {e}") from e
    return image


def read_shard(path: str | Path, *, report: list | None = None, max_pixels: int = MAX_IMAGE_PIXELS,
               num_classes: int | None = None) -> Iterator[Sample]:
    """Stream a shard's samples decoded, in tar order: the one reader everything else uses.

    Samples that cannot be used (corrupt or oversized image, missing/invalid ``.cls``,
    duplicate key) are skipped and appended to ``report`` as ``Skipped(key, reason)``.

    Args:
        path: the shard's tar file.
        report: list collecting skipped samples (for the manifest of the stage reading them).
        max_pixels: decompression-bomb guard.
        num_classes: when given, samples whose ``.cls`` is not below it are skipped too.

    Raises:
        DataError: the tar is missing, truncated or unreadable (the message names the shard).
    """
    for raw in read_shard_raw(path, report=report, num_classes=num_classes):
        try:
            image = decode_image(raw.image_bytes, max_pixels=max_pixels)
        except ValueError as e:
            if report is not None:
                report.append(Skipped(raw.key, f"{raw.image_ext}: {e}"))
            continue
        yield Sample(raw.key, image, raw.label)
