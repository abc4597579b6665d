"""Bring a ledger database to the newest schema with Alembic.

Upgrading from empty is the one tested path: there is no ``create_all`` and
``stamp``, so a fresh ledger and an old one end up with the same schema.
"""

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from errors import AdapterError
from ledger.db import shown_url

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _alembic_config() -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine, to: str = "head") -> tuple[str | None, str]:
    """Apply pending migrations up to ``to``; return (revision before, revision after).

    Only tests ask for a revision before the head: to build an older ledger.
    """
    config = _alembic_config()
    with engine.connect() as connection:
        before = MigrationContext.configure(connection).get_current_revision()
        config.attributes["connection"] = connection
        command.upgrade(config, to)
        connection.commit()
        after = MigrationContext.configure(connection).get_current_revision()
    assert after is not None
    return before, after


def head_revision() -> str:
    """The newest revision the code knows."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None  # the versions folder ships with the code
    return head


class SchemaError(AdapterError):
    """The ledger is not at the schema this code needs."""


def require_head(engine: Engine) -> str:
    """The ledger's revision, if it is the newest; else SchemaError saying what to run."""
    url = shown_url(engine.url)
    revision = current_revision(engine)
    if revision is None:
        raise SchemaError(f"ledger {url} has no schema yet: run 'dicom-adapter db upgrade'")
    if revision != head_revision():
        raise SchemaError(
            f"ledger {url} is at revision {revision}, this version needs "
            f"{head_revision()}: run 'dicom-adapter db upgrade'"
        )
    return revision


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, None when empty."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
