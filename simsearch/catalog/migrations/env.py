"""Alembic's environment: run the revisions on the connection (and its transaction) that
simsearch.catalog.migrate hands over, in batch mode so that SQLite can alter tables."""

from alembic import context

from simsearch.catalog.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("simsearch's catalog is migrated when a store is opened (simsearch.catalog.migrate); "
                     "the command line is for `alembic revision` only")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
