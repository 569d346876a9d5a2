"""Hostile shard contents for the bad-input tests: every kind of bad sample, as real tar bytes."""

from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from tests.pipeline.data.helpers import encode  # noqa: F401 (re-exported)
from tests.pipeline.data.helpers import write_raw_tar as write_tar  # noqa: F401 (re-exported)


class _Payload:
    """Unpickling this creates ``marker``: proof that something executed a shard member."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny PNG whose header claims ``width x height`` 8-bit gray pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)  # a sliver of the claimed rows
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bad_samples(marker: Path) -> list[tuple[str, list[tuple[str, bytes]], str]]:
    """``(key, members, what)`` per bad sample; members are (member name, bytes) in tar order."""
    good = encode(np.full((28, 28), 128, np.uint8), "PNG")
    jpeg = encode(np.full((28, 28, 3), 128, np.uint8), "JPEG")
    payload = pickle.dumps(_Payload(marker))
    return [
        ("corrupt_png", [("corrupt_png.cls", b"1"), ("corrupt_png.png", good[:40] + b"\x00garbage" * 20)], "corrupt PNG"),
        ("corrupt_jpg", [("corrupt_jpg.cls", b"1"), ("corrupt_jpg.jpg", jpeg[:30] + bytes(200))], "corrupt JPEG"),
        ("zero_byte", [("zero_byte.cls", b"1"), ("zero_byte.png", b"")], "zero-byte image"),
        ("no_cls", [("no_cls.png", good)], "missing .cls"),
        ("text_cls", [("text_cls.cls", b"three"), ("text_cls.png", good)], "non-integer .cls"),
        ("neg_cls", [("neg_cls.cls", b"-1"), ("neg_cls.png", good)], "negative .cls"),
        ("big_cls", [("big_cls.cls", b"12"), ("big_cls.png", good)], "label out of range (12 of 10)"),
        ("dup", [("dup.cls", b"2"), ("dup.png", good)], "duplicate key (first copy)"),
        ("spacer", [("spacer.cls", b"2"), ("spacer.png", good)], "(a good sample between duplicates)"),
        ("dup", [("dup.cls", b"3"), ("dup.png", good)], "duplicate key (second copy)"),
        ("../escape", [("../escape.cls", b"1"), ("../escape.png", good)], "key with ../"),
        ("/tmp/abs_key", [("/tmp/abs_key.cls", b"1"), ("/tmp/abs_key.png", good)], "absolute-path key"),
        ("pickled", [("pickled.cls", b"1"), ("pickled.pickle", payload)], "pickle member instead of an image"),
        ("pth", [("pth.cls", b"1"), ("pth.pth", payload)], ".pth member instead of an image"),
        ("with_pickle", [("with_pickle.cls", b"1"), ("with_pickle.png", good), ("with_pickle.pyd", payload)],
         "image + an extra pickle member"),
        ("bomb", [("bomb.cls", b"1"), ("bomb.png", png_bomb())], "decompression bomb (60000x60000 PNG)"),
    ]

