"""The lifecycle table, checked against a hand-written reference (like pynetdicom's test_fsm)."""

import itertools

import pytest

from errors import IllegalTransition
from ledger.states import (
    TRANSITIONS,
    ExportState,
    JobState,
    State,
    check_export_move,
    check_job_move,
    check_move,
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


JOB_ALLOWED = {
    (None, "pending"),
    ("pending", "running"),
    ("running", "succeeded"),
    ("running", "pending"),
    ("running", "failed"),
    ("failed", "pending"),
    ("failed", "discarded"),  # jobs discard
}


@pytest.mark.parametrize("current, target", list(itertools.product([None, *JobState], JobState)))
def test_every_job_pair(current: JobState | None, target: JobState) -> None:
    if (current and str(current), str(target)) in JOB_ALLOWED:
        check_job_move(current, target)
    else:
        with pytest.raises(IllegalTransition, match=f"to '{target}'"):
            check_job_move(current, target)


EXPORT_ALLOWED = {
    (None, "pending"),
    ("pending", "sending"),
    ("sending", "succeeded"),
    ("sending", "pending"),  # a file may yet be delivered, or a restart
    ("sending", "failed"),
    ("failed", "pending"),  # exports retry
    ("failed", "discarded"),  # exports discard
}


@pytest.mark.parametrize(
    "current, target", list(itertools.product([None, *ExportState], ExportState))
)
def test_every_export_pair(current: ExportState | None, target: ExportState) -> None:
    if (current and str(current), str(target)) in EXPORT_ALLOWED:
        check_export_move(current, target)
    else:
        with pytest.raises(IllegalTransition, match=f"to '{target}'"):
            check_export_move(current, target)
