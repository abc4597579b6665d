"""The instance lifecycle as one transition table.

Like pynetdicom's ``fsm.TRANSITION_TABLE``: the only moves an instance can
make are listed here, and :func:`check_move` raises on anything else.  States
are plain text in the ledger so an admin can read them in ``sqlite3``.
"""

from enum import StrEnum

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
    State.RECEIVED: frozenset({State.CLAIMED}),
    State.CLAIMED: frozenset({State.SUBMITTED}),
    State.SUBMITTED: frozenset({State.RECLAIMABLE}),
    State.RECLAIMABLE: frozenset({State.RECLAIMED}),
    State.RECLAIMED: frozenset(),
    State.REJECTED: frozenset(),
}

# States whose file is expected to be on disk in the spool.
ON_DISK = frozenset({State.RECEIVED, State.CLAIMED, State.SUBMITTED, State.RECLAIMABLE})


def check_move(current: State | None, target: State) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> target`` is allowed."""
    if target not in TRANSITIONS[current]:
        origin = "a new instance" if current is None else f"an instance in state '{current}'"
        raise IllegalTransition(f"cannot move {origin} to '{target}'")
