"""Immutable records that cross the ledger's boundary.

Callers never see ORM objects: they hand the ledger a :class:`NewInstance`
and get :class:`InstanceRecord` copies back, like pynetdicom hands handlers
one ``Event``.
"""

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class NewInstance:
    """What intake learned about a file, ready to become a ``received`` row."""

    path: str
    called_ae: str
    size: int
    sha256: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str | None
    sop_class_uid: str | None
    transfer_syntax_uid: str | None
    patient_id: str | None
    calling_ae: str | None
    peer_address: str | None


@dataclass(frozen=True)
class InstanceRecord:
    """A frozen copy of one ``instances`` row."""

    id: int
    state: str
    path: str
    called_ae: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_class_uid: str | None
    transfer_syntax_uid: str | None
    patient_id: str | None
    calling_ae: str | None
    peer_address: str | None
    size: int | None
    sha256: str | None
    reason: str | None
    received_at: datetime
    updated_at: datetime
    missing_since: datetime | None
