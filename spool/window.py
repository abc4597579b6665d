"""Random access to a file's bytes for the structure walk, without trusting lengths.

The walk asks for a few header bytes at a time and checks that declared
lengths fit in the file before skipping them; nothing here ever allocates
from a length the file declares.  Reads go through one small window so a
normal header costs one or two ``read`` calls.
"""

from typing import BinaryIO

_WINDOW = 64 * 1024


class Malformed(ValueError):
    """The file is not structurally sound; the message is a one-line reason."""


class FileWindow:
    """The bytes of an open file of known ``size``, read through a small window."""

    noun = "file"

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle, self.size = handle, size
        self._start, self._data = 0, b""

    def peek(self, pos: int, count: int) -> bytes:
        """Up to ``count`` bytes at ``pos`` (fewer at the end of the file)."""
        offset = pos - self._start
        if offset < 0 or offset + count > len(self._data):
            if pos >= self.size:
                return b""
            self.handle.seek(pos)
            self._start, self._data = pos, self.handle.read(max(count, _WINDOW))
            offset = 0
        return self._data[offset : offset + count]

    def get(self, pos: int, count: int, what: str) -> bytes:
        """Exactly ``count`` bytes at ``pos``, or Malformed naming ``what`` was cut."""
        data = self.peek(pos, count)
        if len(data) < count:
            raise Malformed(f"truncated: the file ends inside {what} at offset {pos}")
        return data

    def require(self, pos: int, length: int, what: str) -> None:
        """Malformed unless a value of ``length`` bytes at ``pos`` ends inside the file."""
        if pos + length > self.size:
            raise Malformed(
                f"truncated: {what} at offset {pos} declares {length} bytes, "
                f"the file has {max(0, self.size - pos)} left"
            )

    def at_end(self, pos: int) -> bool:
        return pos >= self.size

    def total(self) -> int:
        return self.size
