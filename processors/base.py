"""The small typed interfaces processors implement, and what they are given.

A processor hears of each stored instance through :class:`InstanceListener`
(one frozen :class:`InstanceRecord`, never a path string or an ORM object)
and submits a claimed group through :class:`Submitter` (one
:class:`Submission`).  A submitter reports failure by raising
:class:`SubmitError`; its lane (:mod:`tasks.lanes`) turns that into a retry or ``failed``.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ledger.records import InstanceRecord, TaskRecord


class InstanceListener(Protocol):
    def instance_stored(self, instance: InstanceRecord) -> None:
        """Called once per instance recorded as ``received`` for the listener's AE."""


@dataclass(frozen=True)
class Submission:
    """One job, ready to hand over: its instances linked into ``job_dir``."""

    job: TaskRecord
    instances: tuple[InstanceRecord, ...]
    job_dir: Path
    manifest: Path
    study_instance_uid: str | None


class SubmitError(Exception):
    """The submission did not happen; ``message`` says why in one line."""


class Submitter(Protocol):
    name: str

    def submit(self, submission: Submission) -> None:
        """Hand the job over; return normally only once it is accepted.

        Raises
        ------
        SubmitError
            The job was not accepted (retried with backoff by its lane).
        """
