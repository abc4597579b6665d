"""Engine creation: one engine per process, SQLite tuned for a durable ledger.

SQLite gets WAL (readers never block the writer, an admin's ``sqlite3``
session included), ``synchronous=FULL`` (a committed row survives power
loss, which is what "acknowledged means recorded" needs), a busy timeout,
and foreign keys.  pysqlite's own transaction handling emits no BEGIN for DDL
and cannot do ``BEGIN IMMEDIATE``; the recipe from SQLAlchemy's SQLite
dialect docs hands BEGIN to us, so migrations are transactional and writers
can take the write lock up front (``sqlite_begin`` execution option).
"""

from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.engine import Connection

BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    """Create the process's engine for ``url``; a SQLite file's folder is created.

    On PostgreSQL psycopg prepares no statements (``prepare_threshold``
    None): after five runs of a prepared statement the server may settle on
    a generic plan, and for intake's look-ups (``path IN (...)``,
    ``sop_instance_uid IN (...)``) that plan scans the whole table; a new
    ledger then took 0.4 s per batch of 500 (``bench/ledger_scale.py``).
    """
    psycopg = make_url(url).get_driver_name() == "psycopg"
    arguments = {"prepare_threshold": None} if psycopg else {}
    engine = create_engine(url, connect_args=arguments)
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def shown_url(url: str | URL) -> str:
    """A ledger URL fit for output and logs: a password in it becomes ``***``."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")
