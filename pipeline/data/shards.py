"""WebDataset shards: a deterministic writer and a safe, streaming reader (docs/design.md §5).

A shard is a plain tar of ``KEY.{jpg,png,webp}`` + ``KEY.cls`` (ASCII class index), optionally
``KEY.json``. The writer fixes every header field (mtime, owner, mode, member order), so the
same samples always give byte-identical tars. The reader streams members through
webdataset's tar iterator and only ever decodes images with PIL (PNG/JPEG/WEBP) and parses
``.cls`` as ASCII: nothing in a shard is unpickled or ``torch.load``-ed.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tarfile
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, NamedTuple

from PIL import Image

from pipeline.errors import DataError
from pipeline.paths import location, open_input, resolve

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
    """One sample of a shard: its image decoded, or (``read_shard(decode=False)``) its image's
    encoded bytes, whose header has been checked (:func:`check_image`)."""

    key: str
    image: Any  # PIL Image, encoded bytes (decode=False), or precompute's uint8 pixel array (torch resize)
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


def _check_end_of_archive(path: Path | str) -> None:
    """A tar cut at a member boundary reads as a shorter valid tar; its end marker is missing."""
    fs, fs_path = resolve(path)
    size = fs.get_file_info(fs_path).size
    if size % 512:
        raise DataError(f"shard {path}: truncated tar ({size} bytes is not a multiple of 512)")
    with fs.open_input_file(fs_path) as f:
        if f.read_at(512, max(0, size - 512)) != bytes(512):
            raise DataError(f"shard {path}: truncated tar (no end-of-archive marker)")


class ShardChangedError(DataError):
    """A shard's bytes, hashed as they were streamed, differ from the sha256 its manifest records."""


class _HashingReader:
    """A binary file whose bytes are hashed as they are read (what the tar iterator reads)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._h.update(data)
        return data

    def hexdigest_of_all(self) -> str:
        """The sha256 of the whole file: what was read plus the rest (the tar's end padding)."""
        while chunk := self._f.read(1 << 20):
            self._h.update(chunk)
        return self._h.hexdigest()


def _tar_members(path: Path | str, sha256: str | None = None) -> Iterator[dict]:
    """``{"fname", "data"}`` per regular member in tar order, via webdataset's tar iterator.

    ``sha256``: hash the bytes while streaming them and raise :class:`ShardChangedError` after
    the last member when they differ (one read of the file, no second pass).
    """
    # lazy: webdataset imports torch (+1.8 s), and `--help`, `data import` and `bench --help` import this module
    from webdataset.tariterators import tar_file_iterator

    try:
        with open_input(path) as f:  # an object is streamed a MiB at a time, never downloaded whole first
            stream = _HashingReader(f) if sha256 else f
            yield from tar_file_iterator(stream)
            got = stream.hexdigest_of_all() if isinstance(stream, _HashingReader) else None
    except FileNotFoundError:
        raise DataError(f"shard {path} does not exist") from None
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise DataError(f"shard {path}: truncated or unreadable tar ({e})") from e
    if str(path).endswith(".tar"):
        _check_end_of_archive(path)
    if sha256 and got is not None and got != sha256:
        raise ShardChangedError(
            f"shard {path}: its bytes do not match the dataset manifest (sha256 {got[:12]}..., manifest "
            f"{sha256[:12]}...): the shard changed after the run read the manifest (a `data import` into the "
            f"same folder?); nothing built from it was kept. Check it with `mkd-pipeline data verify`, then rerun"
        )


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


def read_shard_raw(path: str | Path, *, report: list | None = None, num_classes: int | None = None,
                   sha256: str | None = None) -> Iterator[RawSample]:
    """Stream a shard's samples undecoded, in tar order.

    A sample without exactly one image member, without a valid ``.cls`` (below ``num_classes``
    when given), whose key is an absolute path or has a ``..`` component, or whose key
    repeats an earlier sample's is skipped and appended to ``report`` as :class:`Skipped`.
    A member repeated within one sample is reported and dropped, the first one kept (as
    webdataset does).

    ``sha256``: the shard's sha256 per its manifest; the bytes are hashed as they stream, and
    :class:`ShardChangedError` is raised once the whole tar is read (before the last sample is
    yielded) when they differ.

    Raises:
        DataError: the tar is missing, truncated or unreadable (the message names it).
        ShardChangedError: (a DataError) with ``sha256``, the bytes differ from it.
    """
    # lazy: webdataset imports torch (+1.8 s), and `--help`, `data import` and `bench --help` import this module
    from webdataset.tariterators import base_plus_ext

    path = location(path)
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

    for member in _tar_members(path, sha256):
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
                assert key is not None  # set with the first member
                report.append(Skipped(key, f"duplicate key (member {fname} repeated)"))
            continue
        members[ext] = member["data"]
    sample = flush()
    if sample is not None:
        yield sample


def _open_image(data: bytes, max_pixels: int, *, pixels: bool) -> Image.Image:
    """Open PNG/JPEG/WEBP bytes, refusing images over ``max_pixels`` before decoding; then decode
    the pixels (``pixels``) or, without decoding them, verify a PNG's chunk CRCs."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise ValueError(f"{width}x{height} pixels exceeds the decompression-bomb limit of {max_pixels}")
        if pixels:
            image.load()
        elif image.format == "PNG":
            image.verify()  # chunk CRCs: cheap next to inflating the pixels
    except ValueError:
        raise
    except Exception as e:  # PIL raises many types for corrupt data: report them all the same way
        raise ValueError(f"cannot decode image: {type(e).__name__}: {e}") from e
    return image


def decode_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode PNG/JPEG/WEBP bytes with PIL, refusing images over ``max_pixels`` before decoding.

    Raises:
        ValueError: not a readable PNG/JPEG/WEBP, or too many pixels.
    """
    return _open_image(data, max_pixels, pixels=True)


def check_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """What can be checked of PNG/JPEG/WEBP bytes without decoding the pixels: the format, the
    size (decompression-bomb guard) and, for PNG, every chunk's CRC.

    A JPEG or WEBP whose header reads but whose entropy-coded data is broken passes; decoding it
    later (:func:`decode_image`) raises.

    Raises:
        ValueError: not a readable PNG/JPEG/WEBP header, too many pixels, or a PNG chunk corrupt.
    """
    _open_image(data, max_pixels, pixels=False).close()


def _checked(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> bytes:
    """``data`` itself once :func:`check_image` passes it (``read_shard(decode=False)``)."""
    check_image(data, max_pixels=max_pixels)
    return data


def _decode_ahead(raws: Iterator[RawSample], decode: Callable[..., Image.Image | bytes], max_pixels: int,
                  pool: Executor | None, ahead: dict,
                  skipped: list) -> Iterator[tuple[RawSample, Callable[[], Image.Image | bytes], int]]:
    """``(raw, decode, mark)`` per raw sample, ``mark`` = ``len(skipped)`` when it was read (the raw
    reader's skips before it); with ``pool`` the decodes run up to ``2 x`` its threads ahead while
    ``ahead["on"]`` (a reader past its ``limit`` turns it off: nothing more to decode)."""
    if pool is None:
        for raw in raws:
            yield raw, functools.partial(decode, raw.image_bytes, max_pixels=max_pixels), len(skipped)
        return
    window = 2 * max(1, getattr(pool, "_max_workers", 1))
    pending: deque = deque()
    for raw in raws:
        job = pool.submit(decode, raw.image_bytes, max_pixels=max_pixels) if ahead["on"] else None
        pending.append((raw, job, len(skipped)))
        if len(pending) > window:
            first, job, mark = pending.popleft()
            yield first, job.result if job is not None else _not_decoded, mark
    while pending:
        first, job, mark = pending.popleft()
        yield first, job.result if job is not None else _not_decoded, mark


def _not_decoded() -> Image.Image:
    raise AssertionError("a sample past the reader's limit was not decoded")  # the reader never asks


def read_shard(path: str | Path, *, report: list | None = None, max_pixels: int = MAX_IMAGE_PIXELS,
               num_classes: int | None = None, sha256: str | None = None, limit: int | None = None,
               pool: Executor | None = None, decode: bool = True) -> Iterator[Sample]:
    """Stream a shard's samples decoded, in tar order: the one reader everything else uses.

    Samples that cannot be used (corrupt or oversized image, missing/invalid ``.cls``,
    duplicate key) are skipped and appended to ``report`` as ``Skipped(key, reason)``.

    Args:
        path: the shard's tar file (a local path or a URI such as ``s3://bucket/data/train-000000.tar``).
        report: list collecting skipped samples (for the manifest of the stage reading them).
        max_pixels: decompression-bomb guard.
        num_classes: when given, samples whose ``.cls`` is not below it are skipped too.
        sha256: the shard's sha256 per its manifest: the bytes are hashed while they stream and
            :class:`ShardChangedError` is raised at the end of the shard (before its last sample
            is yielded) when they differ, so a consumer that takes every sample before using
            any never uses a changed shard.
        limit: yield only the first ``limit`` usable samples (``data.subset``); with ``sha256``
            the rest of the shard is still read (not decoded) to finish the hash.
        pool: decode on these threads (PIL releases the GIL while decoding), a few samples
            ahead of the consumer; same samples, order and reports as without.
        decode: False: yield each image's encoded bytes, its header checked with
            :func:`check_image` instead of decoded (the trainer decodes only the rows it uses;
            a sample whose pixels turn out unreadable then fails where it is decoded).

    Raises:
        DataError: the tar is missing, truncated or unreadable (the message names the shard).
        ShardChangedError: (a DataError, exit 3) with ``sha256``, the bytes differ from it.
    """
    yielded = 0
    cut = None  # len(report) at the limit: samples past it are not the consumer's to hear about
    ahead = {"on": True}
    # the raw reader's skips go to `report` in tar order with the decode failures, however far ahead it reads
    skipped: list = []
    flushed = 0
    raws = read_shard_raw(path, report=skipped, num_classes=num_classes, sha256=sha256)
    for raw, decoded, mark in _decode_ahead(raws, decode_image if decode else _checked, max_pixels, pool, ahead,
                                            skipped):
        if report is not None:
            report.extend(skipped[flushed:mark])
        flushed = mark
        if limit is not None and yielded >= limit:
            if sha256 is None:
                return
            ahead["on"] = False
            continue  # only hashing from here on
        try:
            image = decoded()
        except ValueError as e:
            if report is not None:
                report.append(Skipped(raw.key, f"{raw.image_ext}: {e}"))
            continue
        yielded += 1
        yield Sample(raw.key, image, raw.label)
        if yielded == limit and report is not None:
            cut = len(report)
    if report is not None:
        report.extend(skipped[flushed:])
    if cut is not None and report is not None:
        del report[cut:]
