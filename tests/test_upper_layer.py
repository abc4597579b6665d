"""The exporter's PDUs and command sets, checked against independent codecs.

What ``dimse.upper_layer`` and ``dimse.commands`` encode is decoded by
pynetdicom's PDU classes and pydicom's Implicit VR Little Endian reader, and
what they decode is encoded by those, so a misreading of PS3.8 or PS3.7 would
have to be shared by two projects to pass.
"""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    P_DATA,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from dimse import commands as dimse
from dimse import upper_layer as ul

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


def test_associate_rq_is_what_pynetdicom_reads() -> None:
    contexts = [(1, CT, EXPLICIT), (3, MR, IMPLICIT), (255, "1.2.3.4.5", "1.2.840.10008.1.2.4.50")]
    encoded = ul.associate_rq("CALLING", "CALLED_AE_16CHAR", contexts, 262144, ("2.25.7", "V_1"))
    assert encoded[0] == ul.A_ASSOCIATE_RQ
    assert struct.unpack(">L", encoded[2:6])[0] == len(encoded) - 6
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(encoded)
    primitive = pdu.to_primitive()
    assert (primitive.calling_ae_title, primitive.called_ae_title) == (
        "CALLING",
        "CALLED_AE_16CHAR",
    )
    assert primitive.application_context_name == ul.APPLICATION_CONTEXT
    proposed = primitive.presentation_context_definition_list
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntax) for c in proposed] == [
        (i, abstract, [transfer]) for i, abstract, transfer in contexts
    ]
    user = {type(item).__name__: item for item in primitive.user_information}
    assert user["MaximumLengthNotification"].maximum_length_received == 262144
    assert user["ImplementationClassUIDNotification"].implementation_class_uid == "2.25.7"
    assert user["ImplementationVersionNameNotification"].implementation_version_name == "V_1"


def accept_pdu(results: list[tuple[int, int, str]], max_length: int | None) -> bytes:
    """A-ASSOCIATE-AC by pynetdicom: ``(context ID, result, transfer syntax)`` per context."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = ul.APPLICATION_CONTEXT
    primitive.calling_ae_title, primitive.called_ae_title = "CALLING", "CALLED"
    primitive.result = 0
    contexts = []
    for context_id, result, transfer in results:
        context = PresentationContext()
        context.context_id, context.abstract_syntax = context_id, CT
        context.transfer_syntax, context.result = [transfer], result
        contexts.append(context)
    primitive.presentation_context_definition_results_list = contexts
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.3.4"
    user: list[object] = [implementation]
    if max_length is not None:
        limit = MaximumLengthNotification()
        limit.maximum_length_received = max_length
        user.insert(0, limit)
    primitive.user_information = user
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def test_parse_accept_keeps_only_accepted_contexts_and_the_max_length() -> None:
    encoded = accept_pdu(
        [(1, 0, EXPLICIT), (3, 3, IMPLICIT), (5, 4, IMPLICIT), (7, 0, IMPLICIT)], 16384
    )
    assert encoded[0] == ul.A_ASSOCIATE_AC
    accepted = ul.parse_accept(encoded[ul.PDU_HEADER :])
    assert accepted == ul.Accepted({1: EXPLICIT, 7: IMPLICIT}, 16384)


def test_parse_accept_without_maximum_length_means_no_limit() -> None:
    accepted = ul.parse_accept(accept_pdu([(1, 0, EXPLICIT)], None)[ul.PDU_HEADER :])
    assert accepted.max_length == 0


def test_reject_abort_release_layouts() -> None:
    assert ul.parse_reject(bytes([0, 2, 3, 2])) == (2, 3, 2)
    assert ul.parse_abort(bytes([0, 0, 2, 6])) == (2, 6)
    assert ul.release_rq() == b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
    assert ul.abort() == b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"


def test_pdata_round_trips_through_pynetdicom() -> None:
    encoded = ul.pdata(5, ul.COMMAND | ul.LAST, b"\x01\x02\x03\x04")
    pdu = P_DATA_TF()
    pdu.decode(encoded)
    [item] = pdu.presentation_data_value_items
    assert (item.context_id, item.data) == (5, b"\x03\x01\x02\x03\x04")
    assert len(encoded) == ul.PDU_HEADER + ul.PDV_HEADER + 4
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[1, b"\x00abcd"], [3, b"\x02ef"]]
    two = P_DATA_TF()
    two.from_primitive(primitive)
    parsed = list(ul.pdvs(bytes(two.encode())[ul.PDU_HEADER :]))
    assert parsed == [(1, 0x00, b"abcd"), (3, ul.LAST, b"ef")]


def _read_command(encoded: bytes) -> Dataset:
    return read_dataset(BytesIO(encoded), is_implicit_VR=True, is_little_endian=True)


def test_c_store_rq_is_what_pydicom_reads() -> None:
    encoded = dimse.c_store_rq(7, CT, "1.2.3.45")  # odd-length UID: padded with a NUL
    command = _read_command(encoded)
    assert command.CommandGroupLength == len(encoded) - 12
    assert command.AffectedSOPClassUID == CT
    assert (command.CommandField, command.MessageID, command.Priority) == (0x0001, 7, 0)
    assert command.CommandDataSetType == 0x0000
    assert command.AffectedSOPInstanceUID == "1.2.3.45"
    assert [element.tag for element in command] == sorted(element.tag for element in command)
    assert len(encoded) % 2 == 0


def test_c_echo_rq_is_what_pydicom_reads() -> None:
    command = _read_command(dimse.c_echo_rq(65535))
    assert command.AffectedSOPClassUID == dimse.VERIFICATION
    assert (command.CommandField, command.MessageID) == (0x0030, 65535)
    assert command.CommandDataSetType == 0x0101


def command_set(**fields: object) -> bytes:
    ds = Dataset()
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = True, True
    write_dataset(buffer, ds)
    return buffer.getvalue()


def test_parse_response_reads_pydicom_encoded_c_store_rsp() -> None:
    encoded = command_set(
        CommandGroupLength=0,
        AffectedSOPClassUID=CT,
        CommandField=0x8001,
        MessageIDBeingRespondedTo=7,
        CommandDataSetType=0x0101,
        Status=0xA700,
        ErrorComment="disk full",
        AffectedSOPInstanceUID="1.2.3.45",
    )
    assert dimse.parse_response(encoded) == dimse.Response(0x8001, 7, 0xA700)


@pytest.mark.parametrize(
    "encoded, problem",
    [
        (command_set(CommandField=0x8001, MessageIDBeingRespondedTo=1), "no (0000,0900)"),
        (command_set(CommandField=0x8001, Status=0)[:-1], "runs past the end"),
    ],
)
def test_parse_response_refuses_incomplete_commands(encoded: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        dimse.parse_response(encoded)
