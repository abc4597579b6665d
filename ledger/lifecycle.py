"""Moves of a job or an export task: checked, written, and logged in its history table.

Jobs and export tasks have the same shape (a state, attempts, a history
table keyed by the row), so one :class:`Lifecycle` serves both.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Table, insert, select, update

from ledger.store import LedgerTransaction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lifecycle:
    table: Table  # jobs or exports
    history: Table  # job_events or export_events
    key: str  # the history table's column naming the row
    states: type[StrEnum]
    check: Callable[[Any, Any], None]  # raises IllegalTransition
    noun: str  # for the log

    def move(self, tx: LedgerTransaction, row_id: int, target: StrEnum, reason: str) -> int:
        """Check and make one move with its history row; return the attempts so far."""
        current, attempts = tx.connection.execute(
            select(self.table.c.state, self.table.c.attempts).where(self.table.c.id == row_id)
        ).one()
        self.check(self.states(current), target)
        self.update(tx, row_id, state=target)
        self.note(tx, row_id, current, target, reason)
        log.info("%s %d %s -> %s: %s", self.noun, row_id, current, target, reason)
        return int(attempts)

    def update(self, tx: LedgerTransaction, row_id: int, **values: Any) -> None:
        tx.connection.execute(
            update(self.table).where(self.table.c.id == row_id).values(**values, updated_at=tx.now)
        )

    def note(
        self, tx: LedgerTransaction, row_id: int, source: str | None, target: str, reason: str
    ) -> None:
        """Append one history row."""
        tx.connection.execute(
            insert(self.history).values(
                **{self.key: row_id}, from_state=source, to_state=target, at=tx.now, reason=reason
            )
        )
