"""The lifecycle table, checked against a hand-written reference (like pynetdicom's test_fsm)."""

import itertools

import pytest

from errors import IllegalTransition
from ledger.states import (
    TRANSITIONS,
    State,
    TaskState,
    check_move,
    check_task_move,
)

# Written out by hand, apart from the table it checks (ledger.states.TRANSITIONS).
ALLOWED = {
    (None, "received"),
    (None, "rejected"),
    ("received", "claimed"),
    ("claimed", "submitted"),
    ("submitted", "reclaimable"),
    ("reclaimable", "reclaimed"),
    ("received", "reclaimable"),  # declined by a processor
    ("claimed", "received"),  # claim released, its job never started
    (None, "superseded"),  # a differing resend moved aside (another source, or ignored)
    ("received", "superseded"),  # replaced by a newer copy from the same source
    ("superseded", "reclaimed"),  # superseded_retention is over
    ("claimed", "reclaimable"),  # its failed job discarded with --delete-files
}
ALL_PAIRS = list(itertools.product([None, *State], State))


@pytest.mark.parametrize("current, target", ALL_PAIRS)
def test_every_pair(current: State | None, target: State) -> None:
    if (current and str(current), str(target)) in ALLOWED:
        check_move(current, target)
    else:
        with pytest.raises(IllegalTransition, match=f"to '{target}'"):
            check_move(current, target)


def test_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == {None, *State}


def test_message_names_the_states() -> None:
    with pytest.raises(
        IllegalTransition, match="cannot move an instance in state 'submitted' to 'claimed'"
    ):
        check_move(State.SUBMITTED, State.CLAIMED)


# One lifecycle for jobs and exports alike.
TASK_ALLOWED = {
    (None, "pending"),
    ("pending", "running"),
    ("running", "succeeded"),
    ("running", "pending"),  # an item may yet be delivered (retry), or a restart
    ("running", "failed"),
    ("failed", "pending"),  # tasks retry
    ("failed", "discarded"),  # tasks discard
}


@pytest.mark.parametrize("current, target", list(itertools.product([None, *TaskState], TaskState)))
def test_every_task_pair(current: TaskState | None, target: TaskState) -> None:
    if (current and str(current), str(target)) in TASK_ALLOWED:
        check_task_move(current, target)
    else:
        with pytest.raises(IllegalTransition, match=f"to '{target}'"):
            check_task_move(current, target)
