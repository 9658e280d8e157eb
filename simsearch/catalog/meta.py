"""The catalog's meta rows: provenance, settings and decisions as JSON by key, and the version row that
writers take turns on.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .engine import Database, _db_errors
from .schema import MetaRecord


class Meta(Database):
    # provenance -----------------------------------------------------------------------------
    @_db_errors
    def get_meta(self, key: str) -> Any:
        with self._session() as s:
            row = s.get(MetaRecord, key)
            return None if row is None else json.loads(row.value)

    @_db_errors
    def set_meta(self, **values: Any) -> None:
        with self._session() as s:
            self._take_turn(s)  # two writers adding the same new key must not both insert it
            for key, value in values.items():
                s.merge(MetaRecord(key=key, value=json.dumps(value)))

    @staticmethod
    def _take_turn(s: Session) -> MetaRecord:
        """Lock the version row first thing: writers take turns, and what each then reads is current.

        A row lock on PostgreSQL. SQLite ignores FOR UPDATE and its driver starts a transaction only at the
        first write, so a writer's reads could predate another's commit (two stores recording their model
        into one new catalog collided on the meta key): a no-op write takes the database's write lock first."""
        version = MetaRecord.key == "vectors_version"
        if s.get_bind().dialect.name == "sqlite":
            s.connection().exec_driver_sql(f"UPDATE {MetaRecord.__tablename__} SET value = value "
                                           f"WHERE key = 'vectors_version'")
        return s.scalars(select(MetaRecord).where(version).with_for_update()).one()
