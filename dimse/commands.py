"""DIMSE command sets for C-STORE and C-ECHO (PS3.7 section 9.3 and Annex E).

A command set is always Implicit VR Little Endian (PS3.7 6.3.1), whatever
transfer syntax the data set travels in, so it is a short run of
``tag, 4-byte length, value`` elements: built here with ``struct`` in
microseconds instead of through a pydicom Dataset.  Elements go in tag
order, led by Command Group Length (0000,0000).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VERIFICATION = "1.2.840.10008.1.1"
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
DATA_SET_PRESENT, NO_DATA_SET = 0x0000, 0x0101  # Command Data Set Type (0000,0800)
MEDIUM = 0x0000  # Priority (0000,0700)

_HEADER = struct.Struct("<HHL")  # group, element, value length
_AFFECTED_SOP_CLASS = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_RESPONDED_TO = 0x0120
_PRIORITY = 0x0700
_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_AFFECTED_SOP_INSTANCE = 0x1000


@dataclass(frozen=True)
class Request:
    """The fields of a C-STORE-RQ or C-ECHO-RQ command set a receiver acts on."""

    command_field: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str | None  # C-STORE only
    data_set_present: bool


@dataclass(frozen=True)
class Response:
    """The fields of a response command set a sender acts on."""

    command_field: int
    responded_to: int  # Message ID Being Responded To (0000,0120)
    status: int


def _element(element: int, value: bytes) -> bytes:
    return _HEADER.pack(0x0000, element, len(value)) + value


def _ui(uid: str) -> bytes:
    """A UID value, padded to even length with one NUL (PS3.5 9.1)."""
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def _command(elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(_element(tag, value) for tag, value in elements)
    return _element(0x0000, struct.pack("<L", len(body))) + body


def c_store_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1), a data set to follow."""
    return _command(
        [
            (_AFFECTED_SOP_CLASS, _ui(sop_class_uid)),
            (_COMMAND_FIELD, _us(C_STORE_RQ)),
            (_MESSAGE_ID, _us(message_id)),
            (_PRIORITY, _us(MEDIUM)),
            (_DATA_SET_TYPE, _us(DATA_SET_PRESENT)),
            (_AFFECTED_SOP_INSTANCE, _ui(sop_instance_uid)),
        ]
    )


def c_echo_rq(message_id: int) -> bytes:
    """A C-ECHO-RQ command set (PS3.7 9.3.5.1), no data set."""
    return _command(
        [
            (_AFFECTED_SOP_CLASS, _ui(VERIFICATION)),
            (_COMMAND_FIELD, _us(C_ECHO_RQ)),
            (_MESSAGE_ID, _us(message_id)),
            (_DATA_SET_TYPE, _us(NO_DATA_SET)),
        ]
    )


def c_store_rsp(message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int) -> bytes:
    """A C-STORE-RSP command set (PS3.7 9.3.1.2), no data set."""
    return _command(
        [
            (_AFFECTED_SOP_CLASS, _ui(sop_class_uid)),
            (_COMMAND_FIELD, _us(C_STORE_RSP)),
            (_RESPONDED_TO, _us(message_id)),
            (_DATA_SET_TYPE, _us(NO_DATA_SET)),
            (_STATUS, _us(status)),
            (_AFFECTED_SOP_INSTANCE, _ui(sop_instance_uid)),
        ]
    )


def c_echo_rsp(message_id: int, status: int) -> bytes:
    """A C-ECHO-RSP command set (PS3.7 9.3.5.2), no data set."""
    return _command(
        [
            (_AFFECTED_SOP_CLASS, _ui(VERIFICATION)),
            (_COMMAND_FIELD, _us(C_ECHO_RSP)),
            (_RESPONDED_TO, _us(message_id)),
            (_DATA_SET_TYPE, _us(NO_DATA_SET)),
            (_STATUS, _us(status)),
        ]
    )


def _elements(command: bytes) -> dict[int, bytes]:
    """The command set's elements by element number; ValueError unless every one is
    group 0000 and fits."""
    values: dict[int, bytes] = {}
    offset = 0
    while offset < len(command):
        if offset + 8 > len(command):
            raise ValueError("command set ends inside an element header")
        group, element, length = _HEADER.unpack_from(command, offset)
        offset += 8
        if group != 0 or offset + length > len(command):
            raise ValueError(f"command element ({group:04X},{element:04X}) is not a command's")
        values[element] = command[offset : offset + length]
        offset += length
    return values


def _uid_text(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii")


def parse_request(command: bytes) -> Request:
    """A C-STORE-RQ or C-ECHO-RQ command set, read strictly.

    Raises
    ------
    ValueError
        Not one of the two, a field missing or of the wrong size, a UID that
        is not ASCII, or an element that runs past the end.
    """
    values = _elements(command)
    try:
        field, message_id, data_set = (
            struct.unpack("<H", values[tag])[0]
            for tag in (_COMMAND_FIELD, _MESSAGE_ID, _DATA_SET_TYPE)
        )
        sop_class = _uid_text(values[_AFFECTED_SOP_CLASS])
        if field == C_STORE_RQ:
            sop_instance: str | None = _uid_text(values[_AFFECTED_SOP_INSTANCE])
        elif field == C_ECHO_RQ:
            sop_instance = None
        else:
            raise ValueError(f"command field 0x{field:04X} is not C-STORE-RQ or C-ECHO-RQ")
    except (KeyError, struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"not a usable request: {type(exc).__name__}") from None
    return Request(field, message_id, sop_class, sop_instance, data_set != NO_DATA_SET)


def command_field(command: bytes) -> int | None:
    """The Command Field (0000,0100) of any command set; None if it cannot be read."""
    try:
        value = _elements(command).get(_COMMAND_FIELD)
    except ValueError:
        return None
    return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else None


def parse_response(command: bytes) -> Response:
    """Read Command Field, Message ID Being Responded To and Status from a command set.

    Raises
    ------
    ValueError
        One of the three is missing, or an element runs past the end.
    """
    values: dict[int, int] = {}
    offset = 0
    while offset + 8 <= len(command):
        group, element, length = _HEADER.unpack_from(command, offset)
        offset += 8
        if offset + length > len(command):
            raise ValueError(f"command element ({group:04X},{element:04X}) runs past the end")
        if group == 0 and element in (_COMMAND_FIELD, _RESPONDED_TO, _STATUS) and length == 2:
            values[element] = struct.unpack_from("<H", command, offset)[0]
        offset += length
    try:
        return Response(values[_COMMAND_FIELD], values[_RESPONDED_TO], values[_STATUS])
    except KeyError as missing:
        raise ValueError(f"response has no (0000,{missing.args[0]:04X})") from None
