"""Alembic's migration scripts for the catalog: env.py runs them on the connection simsearch hands it
(simsearch.catalog.migrate), versions/ holds one revision per schema version, numbered 0001, 0002, ...

A new revision, from the repository root:
    alembic -c simsearch/catalog/migrations/alembic.ini revision -m "what changes" --rev-id 000N
then write its upgrade (batch operations, so SQLite can take it), set `meta.schema_version` to N in it,
and raise SCHEMA_VERSION in simsearch/catalog/schema.py; tests/test_migrations.py checks that the models
and the revisions agree.
"""
