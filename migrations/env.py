"""Alembic environment for the ledger.

The adapter runs migrations on a connection it made itself (Alembic cookbook
"Sharing a Connection"), passed in ``config.attributes["connection"]``.
SQLite DDL is not transactional by default in Alembic; with the BEGIN
handling of ``ledger.db`` and ``transactional_ddl=True`` each migration is
applied whole or not at all.
"""

from alembic import context

from ledger.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    transactional_ddl=True,
    transaction_per_migration=True,
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
