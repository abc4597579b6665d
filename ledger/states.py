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
    SUPERSEDED = "superseded"  # a differing copy moved aside, kept until its retention


# None is "not yet in the ledger": a row is born received or rejected, or
# superseded: a differing copy of an instance already kept, moved aside.
TRANSITIONS: dict[State | None, frozenset[State]] = {
    None: frozenset({State.RECEIVED, State.REJECTED, State.SUPERSEDED}),
    # received -> reclaimable: a processor declined it (an ignored SOP class);
    # received -> superseded: a newer copy from the same source replaced it.
    State.RECEIVED: frozenset({State.CLAIMED, State.RECLAIMABLE, State.SUPERSEDED}),
    # claimed -> received: the claim is released, its job never started;
    # claimed -> reclaimable: its failed job was discarded with --delete-files.
    State.CLAIMED: frozenset({State.SUBMITTED, State.RECEIVED, State.RECLAIMABLE}),
    State.SUBMITTED: frozenset({State.RECLAIMABLE}),
    State.RECLAIMABLE: frozenset({State.RECLAIMED}),
    State.RECLAIMED: frozenset(),
    State.REJECTED: frozenset(),
    # superseded -> reclaimed: only once [storage] superseded_retention is over.
    State.SUPERSEDED: frozenset({State.RECLAIMED}),
}

# States whose file is the instance's kept copy in the spool.
KEPT = frozenset({State.RECEIVED, State.CLAIMED, State.SUBMITTED, State.RECLAIMABLE})
# States whose file is expected to be on disk (reconcile flags it if gone).
ON_DISK = KEPT | {State.SUPERSEDED}


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
    DISCARDED = "discarded"  # a human gave a failed job up (``jobs discard``)


JOB_TRANSITIONS: dict[JobState | None, frozenset[JobState]] = {
    None: frozenset({JobState.PENDING}),
    JobState.PENDING: frozenset({JobState.RUNNING}),
    # running -> pending: a retry with backoff, or a restart interrupted it.
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.PENDING, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    # failed -> pending: ``dicom-adapter jobs retry``; -> discarded: ``jobs discard``.
    JobState.FAILED: frozenset({JobState.PENDING, JobState.DISCARDED}),
    JobState.DISCARDED: frozenset(),
}


def check_job_move(current: JobState | None, target: JobState) -> None:
    """Raise :class:`IllegalTransition` unless the job may go ``current -> target``."""
    _check(JOB_TRANSITIONS, current, target, "job")


class ExportState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SUCCEEDED = "succeeded"  # every file delivered
    FAILED = "failed"  # some file refused, or out of retries: a human decides
    DISCARDED = "discarded"  # a human gave its undelivered files up


EXPORT_TRANSITIONS: dict[ExportState | None, frozenset[ExportState]] = {
    None: frozenset({ExportState.PENDING}),
    ExportState.PENDING: frozenset({ExportState.SENDING}),
    # sending -> pending: some file may yet be delivered (retry), or a restart.
    ExportState.SENDING: frozenset(
        {ExportState.SUCCEEDED, ExportState.PENDING, ExportState.FAILED}
    ),
    ExportState.SUCCEEDED: frozenset(),
    # failed -> pending: ``dicom-adapter exports retry``; -> discarded: ``exports discard``.
    ExportState.FAILED: frozenset({ExportState.PENDING, ExportState.DISCARDED}),
    ExportState.DISCARDED: frozenset(),
}


class FileState(StrEnum):
    """What became of one file of an export task."""

    PENDING = "pending"  # not delivered yet, and worth another attempt
    SENT = "sent"  # delivered (Success or a Warning status)
    FAILED = "failed"  # refused for good, or out of retries: kept until retry or discard
    DISCARDED = "discarded"  # given up by ``exports discard``


def check_export_move(current: ExportState | None, target: ExportState) -> None:
    """Raise :class:`IllegalTransition` unless the export may go ``current -> target``."""
    _check(EXPORT_TRANSITIONS, current, target, "export")
