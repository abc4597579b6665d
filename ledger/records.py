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
    group_key: str | None
    http_user: str | None = None  # who stored it over STOW-RS (calling_ae is None then)


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
    group_key: str | None
    job_id: int | None
    http_user: str | None = None


@dataclass(frozen=True)
class TaskRecord:
    """A frozen copy of one ``tasks`` row: a job (``kind`` process) or an export."""

    id: int
    kind: str
    target: str
    submitter: str
    origin: str
    group_key: str | None
    parent_id: int | None
    state: str
    item_count: int
    failed_count: int
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    reclaimed_at: datetime | None
    node: str | None
    lease_until: datetime | None

    @property
    def noun(self) -> str:
        """What an admin calls it: a job runs a processor, an export sends files."""
        return "job" if self.kind == "process" else "export"


@dataclass(frozen=True)
class GroupState:
    """The ``received`` instances of one AE sharing a group key: a group not yet claimed."""

    called_ae: str
    group_key: str
    instances: int
    first_received_at: datetime
    last_received_at: datetime


@dataclass(frozen=True)
class ItemSpec:
    """A file to put in a new export task."""

    path: str
    owned: bool  # delete it once delivered (outbox and forward copies)
    sop_instance_uid: str | None
    sop_class_uid: str | None
    transfer_syntax_uid: str | None
    size: int | None
    instance_id: int | None = None  # the spool instance a forward link points at


@dataclass(frozen=True)
class ItemRecord:
    """A frozen copy of one ``task_items`` row: one file of an export task."""

    id: int
    task_id: int
    path: str
    owned: bool
    sop_instance_uid: str | None
    sop_class_uid: str | None
    transfer_syntax_uid: str | None
    size: int | None
    state: str
    status: int | None
    error: str | None
    sent_at: datetime | None
    instance_id: int | None
    reclaimed_at: datetime | None
    failures: int


@dataclass(frozen=True)
class ItemOutcome:
    """What one attempt to deliver one export file (a task item) came to.

    ``error`` is None when the file was delivered; otherwise it says why not
    in one line, and ``retry`` whether a later attempt may deliver it.
    ``status`` is the DIMSE status the destination answered, if it did;
    ``attempted`` is False for a file the attempt never got to.
    """

    item_id: int
    status: int | None
    error: str | None
    retry: bool = False
    attempted: bool = True

    @property
    def delivered(self) -> bool:
        return self.error is None
