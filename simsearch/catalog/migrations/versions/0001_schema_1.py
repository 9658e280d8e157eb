"""Schema 1, as simsearch 0.1.0 made it: images, vectors, fingerprints and meta.

Written out here rather than taken from the models, which move on with later revisions. Stores made before
simsearch used Alembic have exactly these tables and are stamped with this revision when first opened.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# byte-wise on PostgreSQL (see schema._Path), where 0.1.0 made it VARCHAR COLLATE "C"
_Path = sa.Text().with_variant(sa.String(collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("path", _Path, nullable=False),
        sa.Column("size", sa.BigInteger()),
        sa.Column("mtime_ns", sa.BigInteger()),
        sa.Column("sha256", sa.String(64)),
        sa.Column("width", sa.Integer()),
        sa.Column("height", sa.Integer()),
        sa.Column("format", sa.String(16)),
        sa.Column("taken_at", sa.DateTime()),
        sa.Column("indexed_at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("error", sa.Text()),
        sa.UniqueConstraint("path"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_images_status", "images", ["status"])
    op.create_index("ix_images_sha256", "images", ["sha256"])
    op.create_table(
        "fingerprints",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("phash", sa.LargeBinary(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    meta = op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_table(
        "vectors",
        sa.Column("image_id", _Id, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.bulk_insert(meta, [{"key": "schema_version", "value": "1"}, {"key": "vectors_version", "value": "0"}])


def downgrade() -> None:
    for table in ("vectors", "meta", "fingerprints", "images"):
        op.drop_table(table)
