"""What an export lane needs of a sender, whichever way its destination is reached.

A destination is reached over DIMSE C-STORE (:mod:`exporters.cstore`,
``type = dicom``) or DICOMweb STOW-RS (:mod:`exporters.stow`, ``type =
dicomweb``).  The lane (:class:`tasks.lanes.ExportLane`) is the same for
both: it hands the sender a task's undelivered files and gets back one
:class:`ledger.records.ItemOutcome` per file, from which the ledger decides
what becomes of each file and of the task.  So retries, per-file outcomes
and reclaiming mean one thing for every destination, and no sender ever
deletes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ledger.records import ItemOutcome, ItemRecord


class ExportError(Exception):
    """The destination could not be reached or asked; ``retryable``: trying later may help."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Attempt:
    """What one attempt at a task's files came to.

    ``retry_after_seconds``: the destination asked to be left alone this
    long (HTTP ``Retry-After``), so the next attempt is not due before then.
    """

    outcomes: list[ItemOutcome]
    retry_after_seconds: float | None = None


class Sender(Protocol):
    """Sends files to one destination and checks that it answers."""

    @property
    def name(self) -> str:
        """The export task's submitter in the ledger: ``cstore`` or ``stow``."""

    @property
    def where(self) -> str:
        """How the destination is reached, for one-line messages (``PACS@host:104``)."""

    def send(self, files: list[ItemRecord]) -> Attempt:
        """One outcome per file, in order; never raises for a destination's failure."""

    def echo(self) -> str:
        """What answered (``C-ECHO Success``); raises :class:`ExportError` otherwise."""
