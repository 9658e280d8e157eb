"""Duplicate groups: exact copies by content hash, near copies by cosine similarity, linked transitively.

Close pairs come from range searches a chunk of photos at a time (simsearch.collection), so memory
follows the number of close pairs, never N x N; union-find joins them into groups.
"""

from __future__ import annotations

from typing import Any

from .collection import Collection
from .errors import QueryError
from .results import DuplicateGroup

DEFAULT_DUPLICATE_THRESHOLD = 0.95
MEMBER_FIELDS = ("id", "path", "size", "width", "height", "taken_at", "mtime", "sha256")


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def root(self, i: int) -> int:
        parent = self.parent
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(self, a: int, b: int) -> None:
        self.parent[self.root(b)] = self.root(a)

    def groups(self) -> dict[int, list[int]]:
        members: dict[int, list[int]] = {}
        for i in list(self.parent):
            members.setdefault(self.root(i), []).append(i)
        return {r: sorted(m) for r, m in members.items() if len(m) > 1}


def keeper(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The one to keep: the largest resolution, then the oldest (date taken, then file time), then the path."""
    return min(rows, key=lambda r: (-(r["width"] or 0) * (r["height"] or 0), r["taken_at"] or "9999",
                                    r["mtime"] or float("inf"), r["path"]))


def find_duplicates(collection: Collection, threshold: float = DEFAULT_DUPLICATE_THRESHOLD, *,
                    chunk: int = 1024) -> list[DuplicateGroup]:
    """Groups of exact copies (same content hash) and near-duplicates (cosine >= threshold), largest first."""
    if not 0 < threshold <= 1:
        raise QueryError(f"threshold must be in (0, 1], got {threshold}")
    links = UnionFind()
    for same in collection.catalog.same_content():
        for other in same[1:]:
            links.join(same[0], other)
    pairs: list[tuple[int, float]] = []  # (one end, score) of every close pair, for each group's weakest link
    for a, b, scores in collection.close_pairs(threshold, chunk):
        for i, j, sc in zip(a.tolist(), b.tolist(), scores.tolist()):
            links.join(i, j)
            pairs.append((i, sc))
    weakest: dict[int, float] = {}
    for i, sc in pairs:
        r = links.root(i)
        weakest[r] = min(weakest.get(r, 1.0), sc)
    groups = []
    for r, ids in links.groups().items():
        recs = collection.catalog.records(ids)
        rows = [recs[i] for i in ids if i in recs]
        if len(rows) < 2:  # removed meanwhile
            continue
        exact = len({row["sha256"] for row in rows}) == 1
        groups.append(DuplicateGroup(
            kind="exact" if exact else "near", keep=keeper(rows)["path"],
            min_score=1.0 if exact else round(weakest.get(r, 1.0), 6),
            members=[{k: row[k] for k in MEMBER_FIELDS} for row in rows]))
    return sorted(groups, key=lambda g: (-len(g.members), g.keep))
