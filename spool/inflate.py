"""A deflated dataset (PS3.5 A.5), inflated step by step and only as far as needed.

pydicom inflates the whole stream in memory at once, so a few kilobytes can
become gigabytes (a deflate bomb).  Here the header, everything before Pixel
Data, is inflated on demand and kept up to :data:`MAX_HEADER`; the rest is
inflated only to learn its length and check the stream is whole, discarding
the output, up to :data:`MAX_INFLATED` in all.  Past either cap the file is
refused: no real instance needs a larger deflated header, and a larger
deflated dataset costs more time than intake may spend on one file.
"""

import zlib
from typing import BinaryIO

from spool.window import Malformed

MAX_HEADER = 32 * 2**20
MAX_INFLATED = 256 * 2**20
_IN_CHUNK = 64 * 1024
_OUT_CHUNK = 1024 * 1024


class Inflated:
    """The inflated bytes of a deflated dataset, with :class:`FileWindow`'s interface."""

    noun = "inflated dataset"

    def __init__(self, handle: BinaryIO, offset: int) -> None:
        self.handle, self._offset = handle, offset
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending = b""
        self._kept = bytearray()
        self._length: int | None = None  # known once the stream is fully inflated

    def _more(self, limit: int) -> bytes:
        """The next at most ``limit`` inflated bytes; b"" once the stream has ended."""
        while not self._inflater.eof:
            if not self._pending:
                self.handle.seek(self._offset)
                self._pending = self.handle.read(_IN_CHUNK)
                self._offset += len(self._pending)
                if not self._pending:
                    raise Malformed("truncated: the deflated dataset ends before its stream does")
            out = self._inflater.decompress(self._pending, limit)
            self._pending = self._inflater.unconsumed_tail or self._inflater.unused_data
            if self._inflater.eof:
                self._pending = b""
            if out:
                return out
        return b""

    def _fill(self, end: int) -> None:
        """Keep inflated bytes up to ``end`` (or the end of the stream)."""
        if end > MAX_HEADER:
            raise Malformed(f"deflated dataset: the header inflates past {MAX_HEADER >> 20} MiB")
        while len(self._kept) < end:
            out = self._more(_OUT_CHUNK)
            if not out:
                self._length = len(self._kept)
                return
            self._kept += out

    def peek(self, pos: int, count: int) -> bytes:
        self._fill(pos + count)
        return bytes(self._kept[pos : pos + count])

    def get(self, pos: int, count: int, what: str) -> bytes:
        data = self.peek(pos, count)
        if len(data) < count:
            raise Malformed(f"truncated: the inflated dataset ends inside {what} at offset {pos}")
        return data

    def require(self, pos: int, length: int, what: str) -> None:
        self._fill(pos + length)
        if len(self._kept) < pos + length:
            raise Malformed(
                f"truncated: {what} at offset {pos} declares {length} bytes, "
                f"the inflated dataset has {max(0, len(self._kept) - pos)} left"
            )

    def at_end(self, pos: int) -> bool:
        self._fill(pos + 1)
        return len(self._kept) <= pos

    def total(self) -> int:
        """The full inflated length, inflating (and discarding) the rest, capped."""
        if self._length is None:
            length = len(self._kept)
            while out := self._more(_OUT_CHUNK):
                length += len(out)
                if length > MAX_INFLATED:
                    raise Malformed(
                        f"deflated dataset inflates past {MAX_INFLATED >> 20} MiB "
                        "(a deflate bomb, or too large to check)"
                    )
            self._length = length
        return self._length


def inflate_dataset(handle: BinaryIO, offset: int) -> Inflated:
    """An :class:`Inflated` view of the deflated dataset at ``offset`` in ``handle``."""
    return Inflated(handle, offset)
