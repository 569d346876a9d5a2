"""A pyarrow filesystem that fails where a test says: half an upload, then a chosen fault, or a
fault at the publishing copy. Used in-process and by a child writer process that SIGKILLs itself."""

from __future__ import annotations

from typing import Any, Callable

Fault = Callable[[], None]


class CutStream:
    """An output stream that takes half of the first write's bytes, then runs ``fault``."""

    def __init__(self, out: Any, fault: Fault) -> None:
        self.out, self.fault = out, fault

    def __enter__(self) -> "CutStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.close()  # what pyarrow does, with or without `with`: the cut upload is completed

    def write(self, data: bytes) -> None:
        self.out.write(memoryview(data)[: len(data) // 2])
        self.fault()


class FaultyFS:
    """``fs`` with ``fault`` run halfway through an upload (``where="upload"``) or in place of
    the copy that publishes a written object (``where="publish"``); everything else passes through."""

    def __init__(self, fs: Any, where: str, fault: Fault) -> None:
        self.fs, self.where, self.fault = fs, where, fault

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def open_output_stream(self, path: str) -> Any:
        out = self.fs.open_output_stream(path)
        return CutStream(out, self.fault) if self.where == "upload" else out

    def copy_file(self, *a: object) -> None:
        self.fault()


def faulty_resolve(resolve: Callable, where: str, fault: Fault) -> Callable:
    """``pipeline.paths.resolve`` whose filesystems are :class:`FaultyFS`."""
    return lambda p: (FaultyFS(resolve(p)[0], where, fault), resolve(p)[1])
