"""The instance lifecycle as one transition table.

Like pynetdicom's ``fsm.TRANSITION_TABLE``: the only moves an instance can
make are listed here, and :func:`check_move` raises on anything else.  States
are plain text in the ledger so an admin can read them in ``sqlite3``.
"""

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from errors import IllegalTransition


class State(StrEnum):
    RECEIVED = "received"
    CLAIMED = "claimed"
    SUBMITTED = "submitted"
    RECLAIMABLE = "reclaimable"
    RECLAIMED = "reclaimed"
    REJECTED = "rejected"


# None is "not yet in the ledger": a row is born received or rejected.
TRANSITIONS: dict[State | None, frozenset[State]] = {
    None: frozenset({State.RECEIVED, State.REJECTED}),
    # received -> reclaimable: a processor declined it (an ignored SOP class).
    State.RECEIVED: frozenset({State.CLAIMED, State.RECLAIMABLE}),
    # claimed -> received: the claim is released, its job never started.
    State.CLAIMED: frozenset({State.SUBMITTED, State.RECEIVED}),
    State.SUBMITTED: frozenset({State.RECLAIMABLE}),
    State.RECLAIMABLE: frozenset({State.RECLAIMED}),
    State.RECLAIMED: frozenset(),
    State.REJECTED: frozenset(),
}

# States whose file is expected to be on disk in the spool.
ON_DISK = frozenset({State.RECEIVED, State.CLAIMED, State.SUBMITTED, State.RECLAIMABLE})


def _check(table: Mapping[Any, frozenset[Any]], current: Any, target: Any, what: str) -> None:
    """Raise :class:`IllegalTransition` unless ``table`` allows ``current -> target``."""
    if target not in table[current]:
        article = "an" if what[0] in "aeiou" else "a"
        origin = f"a new {what}" if current is None else f"{article} {what} in state '{current}'"
        raise IllegalTransition(f"cannot move {origin} to '{target}'")


def check_move(current: State | None, target: State) -> None:
    """Raise :class:`IllegalTransition` unless the instance may go ``current -> target``."""
    _check(TRANSITIONS, current, target, "instance")


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


JOB_TRANSITIONS: dict[JobState | None, frozenset[JobState]] = {
    None: frozenset({JobState.PENDING}),
    JobState.PENDING: frozenset({JobState.RUNNING}),
    # running -> pending: a retry with backoff, or a restart interrupted it.
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.PENDING, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    # failed -> pending: ``dicom-adapter jobs retry``.
    JobState.FAILED: frozenset({JobState.PENDING}),
}


def check_job_move(current: JobState | None, target: JobState) -> None:
    """Raise :class:`IllegalTransition` unless the job may go ``current -> target``."""
    _check(JOB_TRANSITIONS, current, target, "job")


class ExportState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


EXPORT_TRANSITIONS: dict[ExportState | None, frozenset[ExportState]] = {
    None: frozenset({ExportState.PENDING}),
    ExportState.PENDING: frozenset({ExportState.SENDING}),
    # sending -> pending: more than half the files failed (retry), or a restart.
    ExportState.SENDING: frozenset(
        {ExportState.SUCCEEDED, ExportState.PENDING, ExportState.FAILED}
    ),
    ExportState.SUCCEEDED: frozenset(),
    # failed -> pending: ``dicom-adapter exports retry``.
    ExportState.FAILED: frozenset({ExportState.PENDING}),
}


def check_export_move(current: ExportState | None, target: ExportState) -> None:
    """Raise :class:`IllegalTransition` unless the export may go ``current -> target``."""
    _check(EXPORT_TRANSITIONS, current, target, "export")
