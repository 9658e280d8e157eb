"""Schema 3: labels, each photo's top ImageNet classes with their probabilities, by content (simsearch.labels),
for stores that ask for them (`simsearch index --labels`); empty otherwise.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_META = sa.table("meta", sa.column("key", sa.String), sa.column("value", sa.Text))


def upgrade() -> None:
    op.create_table(
        "labels",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("label", sa.SmallInteger(), primary_key=True),
        sa.Column("probability", sa.REAL(), nullable=False),
    )
    op.create_index("ix_labels_label_probability", "labels", ["label", "probability"])
    op.execute(_META.update().where(_META.c.key == "schema_version").values(value="3"))


def downgrade() -> None:
    op.drop_index("ix_labels_label_probability", "labels")
    op.drop_table("labels")
    op.execute(_META.update().where(_META.c.key == "schema_version").values(value="2"))
