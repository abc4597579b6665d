"""Walk a Part 10 file's structure before pydicom parses it: cheap, iterative, bounded.

pydicom 3.0.2 trusts what a file says: it allocates a
declared element length before noticing the file is shorter, recurses once
per sequence level, and inflates a deflated dataset whole in memory.  This
walk checks exactly those things first, reading only element headers and
sequence items, never allocating from a declared length and never recursing:
every length must fit in the data, sequences may nest at most
:data:`MAX_DEPTH` deep, and a deflated dataset is inflated with a cap.  A file
that passes is safe to hand to pydicom; one that fails raises
:class:`Malformed` with a one-line reason for the quarantine sidecar.

The walk mirrors pydicom's reading rules (PS3.5 section 7): explicit or
implicit VR as the first element shows, items of an explicit dataset may be
implicit, and an implicit element is a sequence when the data dictionary says
so, or, for private tags, when its value starts with an item.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import BinaryIO

from pydicom.datadict import DicomDictionary

from spool.inflate import Inflated, inflate_dataset
from spool.window import FileWindow, Malformed

__all__ = ["MAX_DEPTH", "MAX_ELEMENTS", "Malformed", "RawElement", "Structure", "survey"]

MAX_DEPTH = 64
MAX_ELEMENTS = 500_000
# Longest value the walk keeps for its caller: the adapter wants UIDs, IDs
# and short text; a longer value counts as absent.
MAX_KEPT_VALUE = 64 * 1024
_SKIM_WINDOW = 64 * 1024
_FIRST_PIXEL_TAG = 0x7FE00008  # Float Pixel Data; pydicom stops before any of the three
_PREAMBLE_AND_PREFIX = 132
_MAX_META = 64 * 1024
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_IMPLICIT_LITTLE = "1.2.840.10008.1.2"
_EXPLICIT_BIG = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
# Kinds of open containers on the walk's stack.
_SEQUENCE, _ITEM_BODY, _FRAGMENTS = 0, 1, 2


@dataclass(frozen=True)
class RawElement:
    """One element's value bytes as the file stores them.

    ``vr`` is the explicit VR, or None where the dataset is implicit VR (the
    data dictionary's applies).
    """

    vr: str | None
    value: bytes


@dataclass(frozen=True)
class Structure:
    """What the walk learned: where the dataset starts and where it stopped.

    ``stopped_at`` is the top-level pixel tag the walk stopped at, or None
    when the dataset has none; ``pixel_offset`` is where that element starts
    (in the file, or in the inflated dataset) and ``pixel_length`` its
    declared length (0xFFFFFFFF when encapsulated).  ``elements`` holds every file
    meta element and the wanted top-level elements of the dataset, each of
    at most :data:`MAX_KEPT_VALUE` bytes.  A deflated dataset has been
    inflated (within its caps) to its end.
    """

    dataset_offset: int
    transfer_syntax_uid: str
    stopped_at: int | None
    little_endian: bool
    deflated: bool
    pixel_offset: int | None = None
    pixel_length: int | None = None
    elements: dict[int, RawElement] = field(default_factory=dict)


def survey(
    handle: BinaryIO,
    size: int,
    wanted: Collection[int] = frozenset(),
    dataset: tuple[int, str] | None = None,
) -> Structure:
    """Check ``handle`` (``size`` bytes) up to its Pixel Data; see the module docstring.

    The values of the top-level elements tagged in ``wanted`` are kept on
    the way, so callers need no second parse.  ``dataset``: (offset, Transfer
    Syntax UID) of a file whose meta group the caller wrote itself; the walk
    then starts at the data set and keeps no meta elements.

    Raises
    ------
    Malformed
        With a one-line reason: empty, truncated, not Part 10, a length past
        the end, nesting deeper than :data:`MAX_DEPTH`, a deflate bomb.
    """
    window = FileWindow(handle, size)
    elements: dict[int, RawElement] = {}
    offset, syntax = dataset if dataset is not None else _walk_meta(window, size, elements)
    if offset >= size:
        raise Malformed("truncated after the file meta: the file has no dataset")
    deflated = syntax == _DEFLATED
    little = syntax != _EXPLICIT_BIG
    if deflated:
        walk = _Walk(inflate_dataset(handle, offset), 0, False, True, wanted, elements)
    else:
        walk = _Walk(window, offset, syntax == _IMPLICIT_LITTLE, little, wanted, elements)
    stopped = walk.run()
    pixel_offset = walk.pos if stopped is not None else None
    return Structure(
        offset, syntax, stopped, little, deflated, pixel_offset, walk.pixel_length, elements
    )


def _walk_meta(window: FileWindow, size: int, elements: dict[int, RawElement]) -> tuple[int, str]:
    """The dataset offset and Transfer Syntax UID, from the explicit VR LE meta group.

    Every meta element goes into ``elements``.
    """
    if size == 0:
        raise Malformed("not readable as DICOM: empty file (zero bytes)")
    if size < _PREAMBLE_AND_PREFIX:
        raise Malformed(
            f"not readable as DICOM: {size} bytes, shorter than the 128-byte preamble "
            "and DICM prefix (truncated?)"
        )
    if window.get(128, 4, "prefix") != b"DICM":
        raise Malformed("not readable as DICOM: no DICM prefix after the 128-byte preamble")
    offset, syntax = _PREAMBLE_AND_PREFIX, None
    while offset + 8 <= size and window.get(offset, 2, "file meta") == b"\x02\x00":
        head = window.get(offset, 8, "the file meta")
        if head[4:6] in _LONG_VRS:
            length = struct.unpack("<I", window.get(offset + 8, 4, "the file meta"))[0]
            start = offset + 12
        else:
            length, start = struct.unpack("<H", head[6:8])[0], offset + 8
        window.require(start, length, "a file meta element")
        offset = start + length
        if offset > _PREAMBLE_AND_PREFIX + _MAX_META:
            raise Malformed("file meta group longer than 64 KiB")
        value = window.get(start, length, "a file meta element")
        elements[0x00020000 | struct.unpack("<H", head[2:4])[0]] = RawElement(
            head[4:6].decode("latin-1"), value
        )
        if head[2:4] == b"\x10\x00":  # (0002,0010) Transfer Syntax UID
            syntax = value[:64].rstrip(b"\x00 ")
    if offset + 8 > size and offset < size:
        raise Malformed("truncated in the file meta")
    if not syntax:
        raise Malformed("file meta has no Transfer Syntax UID (0002,0010)")
    return offset, syntax.decode("ascii", "replace")


class _Walk:
    """One iterative pass over a dataset's elements, a stack instead of recursion."""

    def __init__(
        self,
        data: FileWindow | Inflated,
        start: int,
        implicit: bool,
        little: bool,
        wanted: Collection[int],
        kept: dict[int, RawElement],
    ):
        self.data, self.pos = data, start
        self.wanted, self.kept = wanted, kept
        self.pixel_length: int | None = None
        order = "<" if little else ">"
        self._implicit_header = struct.Struct(order + "HHI").unpack
        self._explicit_header = struct.Struct(order + "HH2sH").unpack
        self._long = struct.Struct(order + "I").unpack
        self._implicit_header_from = struct.Struct(order + "HHI").unpack_from
        self._long_from = struct.Struct(order + "I").unpack_from
        self.little = little
        # Open containers, innermost last: (kind, end offset or None, enclosing VR mode).
        self.stack: list[tuple[int, int | None, bool]] = []
        self.depth = self.elements = 0
        self.implicit = self._detect_implicit(start, implicit)

    def run(self) -> int | None:
        """Walk to the top-level pixel data or the end; return the pixel tag, or None."""
        while True:
            if not self.stack or self.stack[-1][0] == _ITEM_BODY:
                self._skim()
            self._close_finished()
            self.elements += 1
            if self.elements > MAX_ELEMENTS:
                raise Malformed(f"more than {MAX_ELEMENTS} elements before Pixel Data")
            if not self.stack:
                if self.data.at_end(self.pos):
                    return None
                group, element, _ = self._implicit_header(self.data.get(self.pos, 8, "an element"))
                if group << 16 | element >= _FIRST_PIXEL_TAG:
                    self._check_pixel_element()
                    return group << 16 | element
            elif self.stack[-1][0] != _ITEM_BODY:
                self._container_entry()
                continue
            self._element()

    def _skim(self) -> None:
        """The fast path: skip plain elements of the current dataset in the buffered window.

        Most of a header is short values; this loop only reads their headers.
        Anything else (a sequence, an undefined length, the pixel data, the
        window's or item's edge, a bad VR) is left to the general step, which
        also raises on whatever is wrong.
        """
        pos, implicit = self.pos, self.implicit
        buf = self.data.peek(pos, _SKIM_WINDOW)
        base, limit = pos, pos + len(buf)
        if self.stack and self.stack[-1][1] is not None:
            limit = min(limit, self.stack[-1][1])  # the item's own end
        unpack, long, dictionary = self._implicit_header_from, self._long_from, DicomDictionary
        wanted = self.wanted if not self.stack else ()
        count = 0
        while pos + 12 <= limit:
            group, element, length = unpack(buf, pos - base)
            tag = group << 16 | element
            if tag >= _FIRST_PIXEL_TAG:
                break
            if implicit:
                entry = dictionary.get(tag)
                if length == _UNDEFINED or entry is None or entry[0] == "SQ":
                    break
                start = pos + 8
            else:
                vr = buf[pos - base + 4 : pos - base + 6]
                if vr in _LONG_VRS:
                    length = long(buf, pos - base + 8)[0]
                    if vr == b"SQ" or length == _UNDEFINED:
                        break
                    start = pos + 12
                elif b"AA" <= vr <= b"ZZ":
                    start = pos + 8
                    length = length >> 16 if self.little else length & 0xFFFF
                else:
                    break
            end = start + length
            if end > limit:
                break
            if tag in wanted:
                self._keep(tag, None if implicit else vr, buf[start - base : end - base])
            pos, count = end, count + 1
        self.pos, self.elements = pos, self.elements + count

    def _keep(self, tag: int, vr: bytes | None, value: bytes) -> None:
        if len(value) <= MAX_KEPT_VALUE:
            self.kept[tag] = RawElement(None if vr is None else vr.decode("latin-1"), value)

    def _close_finished(self) -> None:
        """Pop containers of defined length whose end the walk has reached."""
        while self.stack and self.stack[-1][1] is not None and self.pos >= self.stack[-1][1]:
            if self.pos > self.stack[-1][1]:
                raise Malformed(f"an element at offset {self.pos} overruns its sequence")
            self._pop()

    def _pop(self) -> None:
        kind, _end, implicit = self.stack.pop()
        self.implicit = implicit
        if kind == _SEQUENCE:
            self.depth -= 1

    def _container_entry(self) -> None:
        """Inside a sequence or an encapsulated value: an item, or the sequence delimiter."""
        kind, end, _ = self.stack[-1]
        group, element, length = self._implicit_header(self.data.get(self.pos, 8, "an item"))
        tag = group << 16 | element
        self.pos += 8
        if tag == _SEQUENCE_END and end is None:
            self._pop()
        elif tag != _ITEM:
            raise Malformed(
                f"expected an item at offset {self.pos - 8}, found ({group:04X},{element:04X})"
            )
        elif kind == _FRAGMENTS or length == 0:
            self._skip(length, "an item")
        else:
            item_end = None if length == _UNDEFINED else self._fits(length, "an item")
            self.stack.append((_ITEM_BODY, item_end, self.implicit))
            self.implicit = self._detect_implicit(self.pos, self.implicit)

    def _element(self) -> None:
        """One data element: skip its value, or open it as a sequence or fragments."""
        header = self.data.get(self.pos, 8, "an element header")
        group, element, length = self._implicit_header(header)
        tag = group << 16 | element
        if tag == _ITEM_END:
            if not self.stack or self.stack[-1][1] is not None:
                raise Malformed(f"item delimiter outside an item at offset {self.pos}")
            self.pos += 8
            self._pop()
            return
        vr: bytes | None = header[4:6]
        if self.implicit or not b"AA" <= header[4:6] <= b"ZZ":  # pydicom reads a bad VR as implicit
            vr = None
            self.pos += 8
            sequence = self._implicit_sequence(tag, length)
        elif vr in _LONG_VRS:
            length = self._long(self.data.get(self.pos + 8, 4, "an element header"))[0]
            self.pos += 12
            sequence = vr == b"SQ" or (vr == b"UN" and length == _UNDEFINED)
        else:
            length = self._explicit_header(header)[3]
            self.pos += 8
            sequence = False
        if sequence:
            self._open_sequence(length)
        elif length == _UNDEFINED:  # encapsulated: fragments up to a sequence delimiter
            self.stack.append((_FRAGMENTS, None, self.implicit))
        else:
            start = self.pos
            self._skip(length, f"element ({group:04X},{element:04X})")
            if not self.stack and tag in self.wanted and length <= MAX_KEPT_VALUE:
                self._keep(tag, vr, self.data.get(start, length, "a kept value"))

    def _open_sequence(self, length: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise Malformed(f"sequences nested deeper than {MAX_DEPTH} levels")
        end = None if length == _UNDEFINED else self._fits(length, "a sequence")
        self.stack.append((_SEQUENCE, end, self.implicit))

    def _implicit_sequence(self, tag: int, length: int) -> bool:
        """pydicom's rule: the dictionary's VR; for unknown tags, a value starting with an item."""
        entry = DicomDictionary.get(tag)
        if entry is not None:
            return entry[0] == "SQ"
        if length == 0:
            return False
        first = self.data.peek(self.pos, 4)
        return len(first) == 4 and self._implicit_header(first + bytes(4))[:2] == (0xFFFE, 0xE000)

    def _detect_implicit(self, start: int, assumed: bool) -> bool:
        """Implicit or explicit VR as pydicom decides, from the first element's VR bytes."""
        if assumed and self.stack:
            return True  # items of an implicit dataset stay implicit
        vr = self.data.peek(start + 4, 2)
        if len(vr) < 2:
            return assumed
        return not (0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B)

    def _check_pixel_element(self) -> None:
        """The pixel element's declared length must fit too, though pydicom stops before it."""
        vr = self.data.get(self.pos + 4, 2, "the Pixel Data header")
        implicit = self.implicit or not b"AA" <= vr <= b"ZZ"
        if not implicit and vr not in _LONG_VRS:
            return
        header = 8 if implicit else 12
        length = self._long(self.data.get(self.pos + header - 4, 4, "the Pixel Data header"))[0]
        self.pixel_length = length
        start = self.pos + header
        if length != _UNDEFINED and start + length > self.data.total():
            raise Malformed(
                f"truncated: Pixel Data needs {length} bytes, the {self.data.noun} has "
                f"{max(0, self.data.total() - start)}"
            )

    def _skip(self, length: int, what: str) -> None:
        self.pos = self._fits(length, what)

    def _fits(self, length: int, what: str) -> int:
        """The end offset of a value of ``length`` bytes at the walk's position, if it fits."""
        self.data.require(self.pos, length, what)
        return self.pos + length
