"""Copy a whole ledger into an empty one: moving a box's SQLite ledger to PostgreSQL.

Every table is copied row for row, ids included (``instances.job_id``, the
job folders and the admin's notes name them), in one transaction on the
target: a failed copy leaves the target as empty as it was.  Rows stream
in batches, never the whole ledger in memory.  The counts are compared
table by table before the commit.  The source is only read.
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Connection, Engine, Table, func, insert, select, text

from errors import AdapterError
from ledger.migrate import SchemaError, require_head, upgrade
from ledger.models import Base

BATCH = 5000


class CopyRefused(AdapterError):
    """The copy cannot start (target not empty, source not current); the message says why."""


def copy_ledger(source: Engine, target: Engine) -> dict[str, int]:
    """Copy every row of ``source`` into the empty ledger ``target``; rows per table.

    Raises
    ------
    CopyRefused
        If the source is not at the current schema or the target holds rows.
    """
    try:
        require_head(source)
    except SchemaError as exc:
        raise CopyRefused(f"source: {exc}") from None
    upgrade(target)
    tables = Base.metadata.sorted_tables  # parents before the rows that point at them
    with source.connect() as reading, target.begin() as writing:
        if full := [t.name for t in tables if _count(writing, t)]:
            raise CopyRefused(f"the target ledger is not empty ({', '.join(full)} have rows)")
        for table in tables:
            for rows in _batches(reading, table):
                writing.execute(insert(table), rows)
        copied = {table.name: _count(writing, table) for table in tables}
        expected = {table.name: _count(reading, table) for table in tables}
        if copied != expected:
            raise CopyRefused(f"counts differ after the copy: {expected} read, {copied} written")
        if writing.dialect.name == "postgresql":
            _move_sequences_on(writing, tables)
    return copied


def _count(connection: Connection, table: Table) -> int:
    return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def _batches(connection: Connection, table: Table) -> Iterator[list[dict[str, object]]]:
    query = select(table).order_by(*table.primary_key.columns)
    result = connection.execution_options(yield_per=BATCH).execute(query)
    for partition in result.mappings().partitions(BATCH):
        yield [dict(row) for row in partition]


def _move_sequences_on(connection: Connection, tables: list[Table]) -> None:
    """Rows came with their ids: each serial counter goes past the highest."""
    for table in tables:
        if "id" in table.columns and table.columns["id"].primary_key:
            connection.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                    f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"
                )
            )
