"""Who stored an instance over STOW-RS: ``instances.http_user``.

A C-STORE names its sender by calling AE title and address; a STOW-RS
request by the HTTP user who signed in (and the client's address, in
``peer_address`` as for DICOM).  NULL for every instance received before,
and for every C-STORE.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("http_user", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("http_user")
