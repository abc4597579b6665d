"""DICOM Upper Layer PDUs (PS3.8 section 9.3) the exporters' SCU and the SCP's direct path use.

Written from the standard rather than taken from pynetdicom, which costs
milliseconds of Python per message: these are plain byte layouts, built
with ``struct`` and read by offset.  Only what is needed is here: a Storage
SCU sends A-ASSOCIATE-RQ, P-DATA-TF, A-RELEASE-RQ and A-ABORT, and reads
A-ASSOCIATE-AC/RJ, P-DATA-TF, A-RELEASE-RP and A-ABORT; the SCP's direct
path (:mod:`scp.direct`) reads and writes P-DATA-TF only.  Every multi-byte
number in a PDU header or item is big endian (PS3.8 9.3.1).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # the DICOM Application Context Name (PS3.7 A.2)
# Message control header bits of a PDV (PS3.8 E.2): bit 0 command, bit 1 last fragment.
COMMAND, LAST = 0x01, 0x02
PDU_HEADER = 6  # type, reserved, 4-byte length
PDV_HEADER = 6  # 4-byte item length, context ID, message control header

_ITEM = struct.Struct(">BBH")  # item type, reserved, item length
_PDU = struct.Struct(">BBL")  # PDU type, reserved, PDU length
_PDATA = struct.Struct(">BBLLBB")  # P-DATA-TF header and one PDV item header


@dataclass(frozen=True)
class Accepted:
    """What an A-ASSOCIATE-AC granted.

    ``contexts`` maps each accepted presentation context ID to its transfer
    syntax; ``max_length`` is the largest P-DATA-TF variable field the
    acceptor takes (0: no limit, PS3.8 D.1).
    """

    contexts: dict[int, str]
    max_length: int


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM.pack(item_type, 0, len(value)) + value


def _ae(title: str) -> bytes:
    """An AE title field: 16 bytes, ASCII, padded with spaces (PS3.8 9.3.2)."""
    return title.encode("ascii").ljust(16, b" ")


def associate_rq(
    calling_ae: str,
    called_ae: str,
    contexts: list[tuple[int, str, str]],
    max_length: int,
    implementation: tuple[str, str],
) -> bytes:
    """Encode an A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing ``(id, abstract, transfer)`` contexts.

    Each context carries the one transfer syntax its files are stored in, so
    the acceptor can only take it as is or refuse it.  ``implementation`` is
    the (class UID, version name) pair of the user information item.
    """
    items = [_item(0x10, APPLICATION_CONTEXT.encode())]
    for context_id, abstract, transfer in contexts:
        value = bytes((context_id, 0, 0, 0))
        value += _item(0x30, abstract.encode()) + _item(0x40, transfer.encode())
        items.append(_item(0x20, value))
    class_uid, version = implementation
    user = _item(0x51, struct.pack(">L", max_length)) + _item(0x52, class_uid.encode())
    items.append(_item(0x50, user + _item(0x55, version.encode())))
    body = struct.pack(">HH", 1, 0) + _ae(called_ae) + _ae(calling_ae) + bytes(32)
    body += b"".join(items)
    return _PDU.pack(A_ASSOCIATE_RQ, 0, len(body)) + body


def _items(data: bytes, start: int) -> Iterator[tuple[int, bytes]]:
    """Walk the ``(type, value)`` items of a variable field from ``start``."""
    offset = start
    while offset + 4 <= len(data):
        item_type, _, length = _ITEM.unpack_from(data, offset)
        yield item_type, data[offset + 4 : offset + 4 + length]
        offset += 4 + length


def _uid(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace")


def parse_accept(body: bytes) -> Accepted:
    """Decode an A-ASSOCIATE-AC's variable field (PS3.8 9.3.3): result 0 contexts only."""
    contexts: dict[int, str] = {}
    max_length = 0
    for item_type, value in _items(body, 68):  # after version, reserved, AE titles, reserved
        if item_type == 0x21 and len(value) >= 4 and value[2] == 0:
            for sub_type, sub_value in _items(value, 4):
                if sub_type == 0x40:
                    contexts[value[0]] = _uid(sub_value)
        elif item_type == 0x50:
            for sub_type, sub_value in _items(value, 0):
                if sub_type == 0x51 and len(sub_value) == 4:
                    max_length = struct.unpack(">L", sub_value)[0]
    return Accepted(contexts, max_length)


def parse_reject(body: bytes) -> tuple[int, int, int]:
    """Result, source and reason of an A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    return body[1], body[2], body[3]


def parse_abort(body: bytes) -> tuple[int, int]:
    """Source and reason of an A-ABORT (PS3.8 9.3.8)."""
    return body[2], body[3]


def release_rq() -> bytes:
    """An A-RELEASE-RQ (PS3.8 9.3.6)."""
    return _PDU.pack(A_RELEASE_RQ, 0, 4) + bytes(4)


def abort() -> bytes:
    """An A-ABORT from the service user, no reason given (PS3.8 9.3.8)."""
    return _PDU.pack(A_ABORT, 0, 4) + bytes(4)


def pdata_header(context_id: int, control: int, length: int) -> bytes:
    """Header of a P-DATA-TF holding one PDV of ``length`` data bytes (PS3.8 9.3.5)."""
    return _PDATA.pack(P_DATA_TF, 0, length + PDV_HEADER, length + 2, context_id, control)


def pdata(context_id: int, control: int, data: bytes) -> bytes:
    """A whole P-DATA-TF with one PDV."""
    return pdata_header(context_id, control, len(data)) + data


def pdv_spans(body: bytes | bytearray) -> list[tuple[int, int, int, int]]:
    """``(context ID, message control header, start, end)`` of each PDV's fragment in a
    P-DATA-TF body: its framing only, so a caller that needs the lengths copies nothing.

    Raises
    ------
    ValueError
        An item shorter than its context ID and control header, or running
        past the end of the body (PS3.8 9.3.5.1).
    """
    found = []
    offset = 0
    while offset < len(body):
        if offset + PDV_HEADER > len(body):
            raise ValueError("P-DATA-TF ends inside a PDV item header")
        length = int.from_bytes(body[offset : offset + 4], "big")
        if length < 2 or offset + 4 + length > len(body):
            raise ValueError(f"PDV item of length {length} does not fit its P-DATA-TF")
        found.append((body[offset + 4], body[offset + 5], offset + 6, offset + 4 + length))
        offset += 4 + length
    return found


def pdvs(body: bytes) -> list[tuple[int, int, bytes]]:
    """``(context ID, message control header, fragment)`` of each PDV in a P-DATA-TF body.

    Raises
    ------
    ValueError
        As :func:`pdv_spans`.
    """
    return [(context, control, body[start:end]) for context, control, start, end in pdv_spans(body)]


def pdata_many(items: list[tuple[int, int, bytes]]) -> bytes:
    """A whole P-DATA-TF carrying several PDVs, as :func:`pdvs` reads them."""
    body = b"".join(
        (len(data) + 2).to_bytes(4, "big") + bytes((context_id, control)) + data
        for context_id, control, data in items
    )
    return _PDU.pack(P_DATA_TF, 0, len(body)) + body
