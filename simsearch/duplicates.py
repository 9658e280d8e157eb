"""Duplicate groups: exact copies by content hash, near copies by cosine similarity, linked transitively,
and the decisions people made about them.

Close pairs come from range searches a chunk of photos at a time (simsearch.collection), so memory
follows the number of close pairs, never N x N; union-find joins them into groups. A group's id comes
from its members' content hashes. A decision ("not duplicates", or "keep this one") is recorded in the
catalog with the hashes it covered: a group whose members are all covered stays resolved across index
and duplicates runs; one that gained a photo comes back, with the new photo marked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from .collection import Collection
from .errors import NotFoundError, QueryError
from .files import move_to_trash
from .results import DuplicateGroup

DEFAULT_DUPLICATE_THRESHOLD = 0.95
MEMBER_FIELDS = ("id", "path", "size", "width", "height", "taken_at", "mtime", "sha256")
DECISIONS = "duplicate_decisions"  # catalog meta: group id -> {decision, keep, members (hashes), at, trashed}
NOT_DUPLICATES, KEEP = "not-duplicates", "keep"


def group_id(hashes: Iterable[str | None]) -> str:
    return hashlib.sha1("\n".join(sorted({h or "" for h in hashes})).encode()).hexdigest()[:12]


def _covering(decisions: dict[str, Any], hashes: set[str]) -> tuple[dict[str, Any] | None, set[str]]:
    """The decision that covers every member, if any; else the hashes earlier decisions already saw."""
    seen: set[str] = set()
    for d in decisions.values():
        covered = set(d["members"])
        if hashes <= covered:
            return d, covered
        if hashes & covered:
            seen |= covered
    return None, seen


def record_decision(collection: Collection, group: DuplicateGroup, decision: str, keep: str | None = None,
                    trashed: list[str] | None = None) -> None:
    decisions = dict(collection.catalog.get_meta(DECISIONS) or {})
    decisions[group.id] = {"decision": decision, "keep": keep, "members": sorted({m["sha256"] for m in group.members}),
                           "paths": [m["path"] for m in group.members], "trashed": trashed or [],
                           "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    collection.catalog.set_meta(**{DECISIONS: decisions})


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
                    chunk: int = 1024, include_resolved: bool = False) -> list[DuplicateGroup]:
    """Groups of exact copies (same content hash) and near-duplicates (cosine >= threshold), largest first;
    groups already resolved are left out unless include_resolved."""
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
    decisions = collection.catalog.get_meta(DECISIONS) or {}
    groups = []
    for r, ids in links.groups().items():
        recs = collection.catalog.records(ids)
        rows = [recs[i] for i in ids if i in recs]
        if len(rows) < 2:  # removed meanwhile
            continue
        hashes = {row["sha256"] for row in rows}
        decided, seen = _covering(decisions, hashes)
        if decided is not None and not include_resolved:
            continue
        exact = len(hashes) == 1
        groups.append(DuplicateGroup(
            kind="exact" if exact else "near", keep=keeper(rows)["path"],
            min_score=1.0 if exact else round(weakest.get(r, 1.0), 6),
            members=[{k: row[k] for k in MEMBER_FIELDS} | {"new": bool(seen) and row["sha256"] not in seen}
                     for row in rows],
            id=group_id(hashes), resolution=decided["decision"] if decided else None))
    return sorted(groups, key=lambda g: (-len(g.members), g.keep))


def resolve_group(collection: Collection, groups: list[DuplicateGroup], group: str, *, keep: int | None,
                  trash_others: bool, forget: Callable[[list[str]], object]) -> DuplicateGroup:
    """Record "not duplicates" (keep None) or "keep this one"; trash_others moves the others to the
    platform's trash (never a deletion) and `forget`s them from the store."""
    found = next((g for g in groups if g.id == group), None)
    if found is None:
        raise NotFoundError(f"no duplicate group {group} (`simsearch duplicates` shows the ids)")
    if keep is None:
        if trash_others:
            raise QueryError("trashing the others needs the photo to keep")
        record_decision(collection, found, NOT_DUPLICATES)
        return found
    kept = [m["path"] for m in found.members if m["id"] == keep]
    if not kept:
        raise QueryError(f"image {keep} is not in group {group}")
    others = [m["path"] for m in found.members if m["id"] != keep] if trash_others else []
    for path in others:
        move_to_trash(path)
    if others:
        forget(others)
    record_decision(collection, found, KEEP, keep=kept[0], trashed=others)
    return found
