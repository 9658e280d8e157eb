"""One exception hierarchy: front ends catch SimsearchError and nothing else from the library."""

from __future__ import annotations

from pathlib import Path


class SimsearchError(Exception):
    """Base class of every error simsearch raises on purpose."""


class ImageError(SimsearchError):
    """A file could not be turned into an image; carries the file and the specific reason."""

    def __init__(self, source: str | Path | None, reason: str) -> None:
        self.source = None if source is None else str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}" if self.source else reason)


class ModelError(SimsearchError):
    """The model could not be fetched, loaded or run, or returned something unusable."""


class StoreError(SimsearchError):
    """The store (catalog, vector index or their files) is unusable or busy."""


class ChangedError(StoreError):
    """A file is no longer what was indexed (edited, replaced, swapped for a link); re-index it."""


class ModelMismatchError(StoreError):
    """The store was built with another model or preprocessing; mixing vectors would be silent garbage."""


class NotFoundError(SimsearchError):
    """An id or path asked for is not in the store."""


class EmptyStoreError(StoreError):
    """A query was made on a store that holds no vectors yet."""


class QueryError(SimsearchError):
    """A probe that cannot be turned into a query vector (wrong type, wrong dimension)."""
