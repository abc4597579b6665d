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


class TaskKind(StrEnum):
    """What a task carries out; everything else about it is shared."""

    PROCESS = "process"  # a claimed group handed to its AE's processor (a "job")
    EXPORT = "export"  # files sent to a destination


class TaskState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every item delivered
    FAILED = "failed"  # some item refused, or out of retries: a human decides
    DISCARDED = "discarded"  # a human gave its undelivered items up (``tasks discard``)


TASK_TRANSITIONS: dict[TaskState | None, frozenset[TaskState]] = {
    None: frozenset({TaskState.PENDING}),
    TaskState.PENDING: frozenset({TaskState.RUNNING}),
    # running -> pending: some item may yet be delivered (retry), or a restart interrupted it.
    TaskState.RUNNING: frozenset({TaskState.SUCCEEDED, TaskState.PENDING, TaskState.FAILED}),
    TaskState.SUCCEEDED: frozenset(),
    # failed -> pending: ``dicom-adapter tasks retry``; -> discarded: ``tasks discard``.
    TaskState.FAILED: frozenset({TaskState.PENDING, TaskState.DISCARDED}),
    TaskState.DISCARDED: frozenset(),
}


def check_task_move(current: TaskState | None, target: TaskState, noun: str = "task") -> None:
    """Raise :class:`IllegalTransition` unless the task (a ``job``, an ``export``) may go
    ``current -> target``."""
    _check(TASK_TRANSITIONS, current, target, noun)


class ItemState(StrEnum):
    """What became of one item (file) of an export task."""

    PENDING = "pending"  # not delivered yet, and worth another attempt
    SENT = "sent"  # delivered (Success or a Warning status)
    FAILED = "failed"  # refused for good, or out of retries: kept until retry or discard
    DISCARDED = "discarded"  # given up by ``tasks discard``
