"""Opening what `summary` reads: files, gzip files, and standard input as '-'."""

from __future__ import annotations

import errno
import gzip
import sys
from typing import Any


class _Stdin:
    """Standard input as the binary file read_records wants (it only ever seeks to 0)."""

    def __init__(self) -> None:
        self.fp = sys.stdin.buffer

    def read(self, n: int = -1) -> bytes:
        return self.fp.read(n)

    def seek(self, pos: int) -> int:
        if pos != 0:
            raise OSError(errno.ESPIPE, "standard input cannot seek")
        return 0

    def __enter__(self) -> _Stdin:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def open_input(path: str) -> Any:
    """A trace file to read: '-' is standard input, gzip files (by their magic bytes) are inflated."""
    if path == "-":
        return _Stdin()
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")
