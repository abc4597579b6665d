"""Which instances are kept: one rule for the SCP (before it answers) and for intake.

An instance is refused only when it is unsafe or unusable: a UID that is
missing, that could not name a file safely, or that is longer than the
ledger holds; no SOP class to export it under.  Whatever is merely
non-conformant (a UID component with a leading zero, letters in a UID, a
data set whose SOP Instance UID differs from the C-STORE request's, no
Series Instance UID) is kept, and said in a warning that becomes a ledger
event, so the admin can see which device to fix.  Legacy modalities produce
such instances; refusing them would lock the device out (Orthanc and DCMTK
store them too).

The SCP refuses on the wire, before Success is sent, exactly what intake
would refuse of the same bytes: both call :func:`judge`, the SCP with the
C-STORE request's UIDs, intake with the file meta's (which record the
request's, for a file the SCP wrote).
"""

from __future__ import annotations

from dataclasses import dataclass

from spool.header import (
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    HeaderValues,
)
from spool.names import usable_uid, validate_uid

SOP_CLASS_UID = 0x00080016
MEDIA_STORAGE_SOP_CLASS_UID = 0x00020002
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
# The header elements :func:`identity_of` reads.
IDENTITY_TAGS = (SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID)


@dataclass(frozen=True)
class Identity:
    """The UIDs that name an instance, as its data set gives them."""

    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_class_uid: str | None


@dataclass(frozen=True)
class Verdict:
    """``refusal`` (one line) if the instance cannot be kept; ``warnings`` otherwise."""

    refusal: str | None
    warnings: tuple[str, ...] = ()


def identity_of(values: HeaderValues) -> Identity:
    """The data set's UIDs; its SOP Class UID falls back to the file meta's."""
    return Identity(
        sop_instance_uid=values.text(SOP_INSTANCE_UID),
        study_instance_uid=values.text(STUDY_INSTANCE_UID),
        series_instance_uid=values.text(SERIES_INSTANCE_UID),
        sop_class_uid=values.text(SOP_CLASS_UID) or values.text(MEDIA_STORAGE_SOP_CLASS_UID),
    )


def judge(identity: Identity, request: tuple[str | None, str | None] = (None, None)) -> Verdict:
    """Keep or refuse an instance; ``request`` is the (SOP class, SOP instance) it came as."""
    warnings: list[str] = []
    named = [
        ("SOPInstanceUID", identity.sop_instance_uid, True),
        ("StudyInstanceUID", identity.study_instance_uid, True),
        ("SeriesInstanceUID", identity.series_instance_uid, False),
        ("SOPClassUID", identity.sop_class_uid, True),
    ]
    for keyword, uid, required in named:
        if uid is None and not required:
            warnings.append(f"no {keyword}: kept in its study's folder")
            continue
        ok, reason = usable_uid(uid)
        if not ok:
            return Verdict(f"{keyword}: {reason}")
        conformant, why = validate_uid(uid)
        if not conformant:
            warnings.append(f"{keyword}: {why}")
    for keyword, requested, found in (
        ("SOP Class UID", request[0], identity.sop_class_uid),
        ("SOP Instance UID", request[1], identity.sop_instance_uid),
    ):
        if requested and requested != found:
            warnings.append(f"the data set's {keyword} {found!r} differs from the request's")
    return Verdict(None, tuple(warnings))
