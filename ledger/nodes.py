"""The ``nodes`` table: each adapter on this ledger says it lives, and how it is.

Written by the node's own heartbeat (:meth:`adapter.Adapter._heartbeat_tick`),
read by ``status`` and anyone with ``sqlite3`` or ``psql``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from ledger.models import Node
from ledger.store import Ledger

NODES = Node.__table__


@dataclass(frozen=True)
class NodeRecord:
    name: str
    pid: int
    listening: str
    problems: tuple[str, ...]
    started_at: datetime
    heartbeat_at: datetime


class Nodes:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def beat(
        self, name: str, pid: int, listening: str, problems: list[str], started_at: datetime
    ) -> None:
        """Record that ``name`` lives now (one upsert)."""
        values = {
            "pid": pid,
            "listening": listening,
            "problems": json.dumps(problems),
            "started_at": started_at,
        }
        with self.ledger.transaction() as tx:
            tx.upsert(NODES, {"name": name}, {**values, "heartbeat_at": tx.now})

    def listing(self) -> list[NodeRecord]:
        """Every node that ever wrote this ledger, by name."""
        return [_record(row) for row in self.ledger.read(select(NODES).order_by(NODES.c.name))]

    def get(self, name: str) -> NodeRecord | None:
        """The node called ``name``, if it ever wrote this ledger."""
        rows = self.ledger.read(select(NODES).where(NODES.c.name == name))
        return _record(rows[0]) if rows else None


def _record(row: Any) -> NodeRecord:
    return NodeRecord(
        row.name,
        row.pid,
        row.listening,
        tuple(json.loads(row.problems)),
        row.started_at,
        row.heartbeat_at,
    )
