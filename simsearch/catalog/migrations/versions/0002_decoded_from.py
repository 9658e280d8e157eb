"""Schema 2: images.decoded_from, which picture fed the model (thumbnail, scaled or full decode), so that a
later decode policy can re-embed exactly the photos it changes. NULL for photos indexed before.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_META = sa.table("meta", sa.column("key", sa.String), sa.column("value", sa.Text))


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("decoded_from", sa.String(16), nullable=True))
    op.execute(_META.update().where(_META.c.key == "schema_version").values(value="2"))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("decoded_from")
    op.execute(_META.update().where(_META.c.key == "schema_version").values(value="1"))
