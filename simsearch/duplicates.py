"""Duplicate groups people can trust: candidates from the embedding, verdicts from the pixels.

Candidates are exact copies (same SHA-256), each photo's nearest neighbours above a loose cosine, and
photos with close perceptual hashes (at any rotation by 90 degrees, or with flat borders trimmed), and the
nearest by colour histogram (a crop keeps its colours), found a chunk of photos at a time, so memory
follows the number of candidate pairs, never N x N. Each candidate pair is then checked on the photos'
stored fingerprints (simsearch.verify): perceptual hashes first, then, for the pairs those do not settle,
ORB features with RANSAC, taken now from a fresh decode of each photo in such a pair that has none yet
(and stored: later runs have them), on a thread pool. Only verified pairs are linked (union-find) into
groups, and each pair says why it matched. So the cosine threshold only bounds the work: precision does
not hang on a number that cannot be calibrated for every model.

A group's id comes from its members' content hashes. A decision ("not duplicates", or "keep this one")
is recorded in the catalog with the hashes it covered: a group whose members are all covered stays
resolved across index and duplicates runs; one that gained a photo comes back with only its new pairs.
A split acts on pairs instead: the links between its parts are dropped, so each part is a group of its own.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import faiss
import numpy as np

from .collection import Collection
from .errors import ChangedError, ImageError, NotFoundError, QueryError, SimsearchError
from .files import move_to_trash
from .paths import display
from .results import DuplicateGroup, Member, Progress, Undone
from .verify import (HIST_MIN, PHASH_LOOSE, Evidence, Fingerprint, colour_histogram, geometric, trimmed_phash,
                     whole_picture)

DEFAULT_MIN_COSINE = 0.5  # loose: candidates only, every pair is verified on the pixels
DEFAULT_NEIGHBOURS = 10
DECISIONS = "duplicate_decisions"  # catalog meta: group id -> {decision, keep, members (hashes), at, trashed}
LISTED = "duplicate_groups"  # catalog meta: group id -> member ids, as last listed (what resolve refers to)
LISTED_SURE = "duplicate_groups_sure"  # catalog meta: the ids of those that were sure (DuplicateGroup.sure)
NOT_DUPLICATES, KEEP, SPLIT = "not-duplicates", "keep", "split"
SIMILAR = "similar"  # a group of look-alikes (bursts, second shots): listed apart, never proposed for the trash
# formats photos are made in (cameras, phones); the others are usually conversions (screenshots, web copies)
DERIVED_FORMATS = frozenset({"PNG", "WEBP", "AVIF", "GIF", "BMP", "PPM", "ICO"})
_CACHE = 50_000  # fingerprints kept while verifying (about 8 KB each)

FingerprintOf = Callable[[str], bytes]  # a photo's path -> its fingerprint, decoding it (raises ImageError)


def group_id(hashes: Iterable[str | None], kind: str = "copies") -> str:
    """Stable from the members' contents; look-alikes and copies of the same photos are different groups."""
    key = "\n".join(sorted({h or "" for h in hashes})) + ("\nsimilar" if kind == SIMILAR else "")
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def _covering(decisions: dict[str, Any], hashes: set[str],
              kind: str = "copies") -> tuple[dict[str, Any] | None, set[str]]:
    """The decision on a group of this kind that covers every member, if any; else the hashes earlier
    decisions already saw. Deciding that photos are not copies says nothing of whether they look alike."""
    seen: set[str] = set()
    for d in decisions.values():
        if d.get("kind", "copies") != kind or d["decision"] == SPLIT:  # a split settles pairs, not its parts
            continue
        covered = set(d["members"])
        if hashes <= covered:
            return d, covered
        if hashes & covered:
            seen |= covered
    return None, seen


def record_decision(collection: Collection, group: DuplicateGroup, decision: str, keep: str | list[str] | None = None,
                    trashed: list[str] | None = None, parts: list[list[str]] | None = None) -> None:
    decisions = dict(collection.catalog.get_meta(DECISIONS) or {})
    decisions[group.id] = {"decision": decision, "kind": SIMILAR if group.kind == SIMILAR else "copies", "keep": keep, "members": sorted({m.sha256 for m in group.members}),
                           "paths": [m.path for m in group.members], "trashed": trashed or [],
                           "at": datetime.now(timezone.utc).isoformat(timespec="seconds")} | ({"parts": parts} if parts else {})
    collection.catalog.set_meta(**{DECISIONS: decisions})


def _unsplit(collection: Collection, pairs: list[tuple[int, int, dict[str, Any]]], decisions: dict[str, Any],
             kind: str) -> list[tuple[int, int, dict[str, Any]]]:
    """The pairs less those that join two parts of a split group (by content: the split outlives re-indexing;
    a part split again is a second split, so a photo may be in several)."""
    part_of: dict[str, dict[int, int]] = {}  # content -> {split: its part}
    for n, d in enumerate(d for d in decisions.values() if d["decision"] == SPLIT and d.get("kind", "copies") == kind):
        for p, hashes in enumerate(d["parts"]):
            for h in hashes:
                part_of.setdefault(h, {})[n] = p
    if not part_of or not pairs:
        return pairs
    records = collection.catalog.records({x for p in pairs for x in p[:2]})
    parts = {i: part_of.get(r["sha256"], {}) for i, r in records.items()}

    def apart(a: int, b: int) -> bool:
        pa, pb = parts.get(a, {}), parts.get(b, {})
        return any(pb.get(n, p) != p for n, p in pa.items())

    return [p for p in pairs if not apart(p[0], p[1])]


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
    """The one to keep: the largest resolution, then an original format (a camera's, not a conversion),
    then the oldest (date taken, then file time), then the path."""
    return min(rows, key=lambda r: (-(r["width"] or 0) * (r["height"] or 0), (r.get("format") or "").upper() in DERIVED_FORMATS,
                                    r["taken_at"] or "9999", r["mtime"] or float("inf"), r["path"]))


class Verifier:
    """Checks candidate pairs on their fingerprints: read from the catalog, or taken now (and stored) for
    photos indexed without one (`--no-fingerprints`, a Ray cluster, an older fingerprint version) and for
    the keypoints of photos in pairs that the hashes do not settle."""

    def __init__(self, collection: Collection, fingerprint_of: FingerprintOf | None, workers: int) -> None:
        self.catalog, self.fingerprint_of, self.workers = collection.catalog, fingerprint_of, workers
        self.cache: dict[str, Fingerprint | None] = {}
        self.taken = 0  # fingerprints taken from a fresh decode in this run

    def _load(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        todo = {r["sha256"]: r for r in rows if r["sha256"] not in self.cache}
        if len(self.cache) + len(todo) > _CACHE:
            self.cache.clear()  # and this batch's photos all read again: each pair needs both its photos
            todo = {r["sha256"]: r for r in rows}
        parsed = {sha: _parse(fp) for sha, fp in self.catalog.fingerprints(todo).items()}
        missing = [r for sha, r in todo.items() if parsed.get(sha) is None]  # or of another fingerprint version
        parsed |= self._take_all(missing)
        for sha in todo:
            self.cache[sha] = parsed.get(sha)

    def _take_all(self, rows: list[dict[str, Any]]) -> dict[str, Fingerprint | None]:
        """Whole fingerprints (keypoints too) of these photos from a fresh decode, stored for later runs."""
        if not rows or self.fingerprint_of is None:
            return {}
        with ThreadPoolExecutor(self.workers) as pool:  # Pillow's decoders and OpenCV release the GIL
            taken = dict(zip([r["sha256"] for r in rows], pool.map(self._take, rows)))
        fresh = {sha: data for sha, data in taken.items() if data is not None}
        if fresh:
            self.catalog.add_fingerprints(fresh)
        self.taken += len(fresh)
        return {sha: _parse(data) for sha, data in fresh.items()}

    def _take(self, row: dict[str, Any]) -> bytes | None:
        assert self.fingerprint_of is not None
        try:
            return self.fingerprint_of(row["path"])
        except ImageError:  # gone or changed since it was indexed: the pair cannot be verified now
            return None

    def check(self, pairs: list[tuple[int, int, float]], records: dict[int, dict[str, Any]]) -> list[Evidence | None]:
        """Each pair's evidence, or None: the hashes first; keypoints only for the pairs they leave open."""
        self._load(records.values())
        found: list[Evidence | None] = []
        open_pairs: list[int] = []
        for n, (a, b, _) in enumerate(pairs):
            fa, fb = self.cache.get(records[a]["sha256"]), self.cache.get(records[b]["sha256"])
            found.append(None if fa is None or fb is None else whole_picture(fa, fb, records[a], records[b]))
            if found[-1] is None and fa is not None and fb is not None:
                open_pairs.append(n)
        need = {records[x]["sha256"]: records[x] for n in open_pairs for x in pairs[n][:2]}
        lacking = [r for sha, r in need.items() if not self.cache[sha].has_keypoints]  # type: ignore[union-attr]
        for sha, fp in self._take_all(lacking).items():
            self.cache[sha] = fp

        def one(n: int) -> Evidence | None:
            fa, fb = (self.cache.get(records[x]["sha256"]) for x in pairs[n][:2])
            if fa is None or fb is None or not fa.has_keypoints or not fb.has_keypoints:
                return None  # gone or changed since it was indexed: the pair cannot be verified now
            return geometric(fa, fb, records[pairs[n][0]], records[pairs[n][1]])

        def some(part: list[int]) -> list[Evidence | None]:
            faiss.omp_set_num_threads(1)  # this thread's own setting: a pair's matching is too small to share
            return [one(n) for n in part]

        # a slice of the pairs per thread (FAISS's matching and OpenCV's RANSAC release the GIL): a task per pair
        # cost as much as checking a pair of photos that do not match
        slices = [open_pairs[w :: self.workers] for w in range(self.workers)]
        with ThreadPoolExecutor(self.workers) as pool:
            for part, evidence in zip(slices, pool.map(some, slices)):
                for n, ev in zip(part, evidence):
                    found[n] = ev
        return found


def _parse(data: bytes | None) -> Fingerprint | None:
    try:
        return None if data is None else Fingerprint.from_bytes(data)
    except ValueError:  # another fingerprint version
        return None


def verified_pairs(collection: Collection, min_cosine: float, neighbours: int, chunk: int, verifier: Verifier,
                   progress: Callable[[Progress], None] | None = None) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(a, b, evidence) for every candidate pair that verification confirms, each pair once; progress
    counts the photos whose candidates are done, once for the neighbours and once for the hashes."""
    total, done, started = 2 * len(collection.vector_index), 0, time.perf_counter()
    for same in collection.catalog.same_content():
        for other in same[1:]:
            yield same[0], other, {"reason": "same bytes", "cosine": 1.0}
    seen: set[tuple[int, int]] = set()
    for a, b, scores, photos in _candidates(collection, min_cosine, neighbours, chunk):
        todo = []
        for i, j, sc in zip(a.tolist(), b.tolist(), scores.tolist()):
            key = (min(i, j), max(i, j))
            if key not in seen:
                seen.add(key)
                todo.append((key[0], key[1], sc))
        records = collection.catalog.records({x for p in todo for x in p[:2]})
        todo = [p for p in todo if p[0] in records and p[1] in records
                and records[p[0]]["sha256"] != records[p[1]]["sha256"]]  # same bytes: linked above
        for (i, j, sc), ev in zip(todo, verifier.check(todo, records)):
            if ev is not None:
                yield i, j, ev.to_dict() | {"cosine": round(sc, 6)}
        done = min(done + photos, total)
        if progress:
            progress(Progress(done, total, 0, time.perf_counter() - started))
    if progress and done < total:  # contents without a fingerprint (or copies sharing one) have no hash step
        progress(Progress(total, total, 0, time.perf_counter() - started))


def _candidates(collection: Collection, min_cosine: float, neighbours: int,
                chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """(a, b, cosine, photos covered) chunks: each photo's nearest neighbours, then the photos whose pHash,
    at any rotation by 90 degrees, is close to its own (so a turned or recoloured copy is a candidate
    whatever the embedding makes of it; cosine is then the pair's own), then those close to its pHash with
    flat borders trimmed (a framed or letterboxed copy: verify.trimmed_phash), then its nearest neighbours
    by colour histogram (a crop: verify.colour_histogram)."""
    yield from collection.neighbours(neighbours, min_cosine, chunk)
    shas, hashes = collection.catalog.perceptual_hashes()
    if len(shas) < 2:
        return
    id_of = collection.catalog.ok_hashes()
    ids = np.array([id_of.get(sha, -1) for sha in shas], np.int64)
    index = faiss.IndexBinaryFlat(64)
    index.add(np.ascontiguousarray(hashes[:, 0]))

    def near(query_ids: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The photos whose pHash is within PHASH_LOOSE of each query (uint8 [n, 8], one id each)."""
        lims, _, found = index.range_search(np.ascontiguousarray(queries), PHASH_LOOSE + 1)
        a = np.repeat(query_ids, np.diff(lims).astype(np.int64))
        b = ids[found]
        keep = (a != b) & (a >= 0) & (b >= 0)
        a, b = a[keep], b[keep]
        return a, b, collection.cosines(a, b) if len(a) else np.zeros(0, np.float32)

    for start in range(0, len(shas), chunk):
        part = hashes[start : start + chunk]
        yield *near(np.repeat(ids[start : start + len(part)], 4), part.reshape(-1, 8)), len(part)
    trimmed_ids, trimmed, hist_ids, hists = [], [], [], []
    for sha, data in collection.catalog.iter_fingerprints():
        f = _parse(data)
        if f is None or id_of.get(sha, -1) < 0:
            continue
        hist_ids.append(id_of[sha])
        hists.append(colour_histogram(f.colour))
        if (h := trimmed_phash(f.thumb)) is not None:
            trimmed_ids.append(id_of[sha])
            trimmed.append(h)
    if trimmed:
        yield *near(np.array(trimmed_ids, np.int64), np.stack(trimmed)), 0
    if len(hists) > 1:
        yield from _colour_neighbours(collection, np.array(hist_ids, np.int64), np.stack(hists), neighbours, chunk)


def _colour_neighbours(collection: Collection, ids: np.ndarray, hists: np.ndarray, k: int,
                       chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Each photo's k nearest by colour histogram at HIST_MIN or more: a crop, which neither the embedding
    nor a hash of the whole picture may place near its original, keeps its colours."""
    index = faiss.IndexFlatIP(hists.shape[1])
    index.add(hists)
    for start in range(0, len(ids), chunk):
        scores, found = index.search(hists[start : start + chunk], min(k + 1, len(ids)))
        a = np.repeat(ids[start : start + chunk], found.shape[1])
        b = ids[np.maximum(found.ravel(), 0)]
        keep = (found.ravel() >= 0) & (a != b) & (scores.ravel() >= HIST_MIN)
        a, b = a[keep], b[keep]
        yield a, b, collection.cosines(a, b) if len(a) else np.zeros(0, np.float32), 0


def find_duplicates(collection: Collection, min_cosine: float = DEFAULT_MIN_COSINE, *,
                    neighbours: int = DEFAULT_NEIGHBOURS, chunk: int = 1024, include_resolved: bool = False,
                    fingerprint_of: FingerprintOf | None = None, workers: int | None = None,
                    progress: Callable[[Progress], None] | None = None, similar: bool = False) -> list[DuplicateGroup]:
    """Groups of verified copies, largest first; groups already resolved are left out unless
    include_resolved. fingerprint_of takes a fingerprint that the catalog lacks. similar: the groups of
    look-alikes instead (the same scene, not the same picture: bursts, second shots), linked by pairs that
    are not copies; both kinds are remembered for resolve."""
    if not 0 < min_cosine <= 1:
        raise QueryError(f"the candidates' cosine must be in (0, 1], got {min_cosine}")
    if neighbours < 1:
        raise QueryError(f"neighbours must be at least 1, got {neighbours}")
    verifier = Verifier(collection, fingerprint_of, workers or min(8, os.cpu_count() or 1))
    found: dict[str, list[tuple[int, int, dict[str, Any]]]] = {"copies": [], SIMILAR: []}
    for a, b, evidence in verified_pairs(collection, min_cosine, neighbours, chunk, verifier, progress):
        found[SIMILAR if evidence.get("kind") == SIMILAR else "copies"].append((a, b, evidence))
    copies = UnionFind()
    for a, b, _ in found["copies"]:
        copies.join(a, b)
    # look-alikes: pairs of the same scene, less those inside one copy group (copies of one photo, seen twice)
    kinds = {"copies": found["copies"], SIMILAR: [p for p in found[SIMILAR] if copies.root(p[0]) != copies.root(p[1])]}
    decisions = collection.catalog.get_meta(DECISIONS) or {}
    groups: dict[str, list[DuplicateGroup]] = {"copies": [], SIMILAR: []}
    listed, sure = {}, []
    for kind, pairs in kinds.items():
        pairs = _unsplit(collection, pairs, decisions, kind)
        links = UnionFind()
        by_root: dict[int, list[tuple[int, int, dict[str, Any]]]] = {}
        for a, b, _ in pairs:
            links.join(a, b)
        for a, b, evidence in pairs:
            by_root.setdefault(links.root(a), []).append((a, b, evidence))
        for r, ids in links.groups().items():
            group = _group(collection, ids, by_root.get(r, []), decisions, kind)
            if group is None:
                continue
            listed[group.id] = [m.id for m in group.members]
            sure += [group.id] if group.sure else []
            if group.resolution is None or include_resolved:
                groups[kind].append(group)
    collection.catalog.set_meta(**{LISTED: listed, LISTED_SURE: sure})
    return sorted(groups[SIMILAR if similar else "copies"], key=lambda g: (-len(g.members), g.keeper.path))


def _group(collection: Collection, ids: list[int], pairs: list[tuple[int, int, dict[str, Any]]],
           decisions: dict[str, Any], kind: str = "copies") -> DuplicateGroup | None:
    recs = collection.catalog.records(ids)
    rows = [recs[i] for i in ids if i in recs]
    if len(rows) < 2:  # removed meanwhile
        return None
    hashes = {row["sha256"] for row in rows}
    decided, seen = _covering(decisions, hashes, kind)
    members = [Member.from_record(row, new=bool(seen) and row["sha256"] not in seen) for row in rows]
    new = {m.id for m in members if m.new}
    shown = [{"a": a, "b": b} | ev for a, b, ev in sorted(pairs, key=lambda p: p[:2])
             if not new or a in new or b in new]  # a group that came back: only what is new
    named = SIMILAR if kind == SIMILAR else "exact" if len(hashes) == 1 else "near"
    return DuplicateGroup(kind=named, keep=int(keeper(rows)["id"]),
                          min_score=min((p["cosine"] for p in shown), default=1.0), members=members,
                          id=group_id(hashes, kind), resolution=decided["decision"] if decided else None, pairs=shown)


def listed_group(collection: Collection, group: str) -> DuplicateGroup:
    """A group as `duplicates` last listed it, if its photos are still the same."""
    ids = (collection.catalog.get_meta(LISTED) or {}).get(group)
    if ids is None:
        raise NotFoundError(f"no duplicate group {group} (`simsearch duplicates` shows the ids)")
    decisions = collection.catalog.get_meta(DECISIONS) or {}
    group_now = next((g for kind in ("copies", SIMILAR) if (g := _group(collection, ids, [], decisions, kind))
                      is not None and g.id == group), None)  # the ids say which kind it was
    if group_now is None:
        raise NotFoundError(f"duplicate group {group} changed since it was listed; run `simsearch duplicates` again")
    return group_now


def resolve_group(collection: Collection, group: str, *, keep: int | Sequence[int] | None, trash_others: bool,
                  forget: Callable[[list[str]], object], verify: Callable[[Member], None]) -> DuplicateGroup:
    """Record "not duplicates" (keep None) or "keep these" (one id, or several) on a listed group;
    trash_others moves the others to the platform's trash (never a deletion) and `forget`s them.

    Trash acts only on what was verified: every member's file must still hold the bytes the catalog
    recorded (`verify`: SHA-256 and size, read now), the keeper's first of all, or nothing is moved. Each
    photo is checked again just before it moves, so one changed meanwhile stays."""
    found = listed_group(collection, group)
    if keep is None:
        if trash_others:
            raise QueryError("trashing the others needs the photo to keep")
        record_decision(collection, found, NOT_DUPLICATES)
        return found
    wanted = [keep] if isinstance(keep, int) else list(dict.fromkeys(keep))
    strangers = [i for i in wanted if i not in {m.id for m in found.members}]
    if strangers or not wanted:
        raise QueryError(f"image {(strangers or ['(none)'])[0]} is not in group {group}")
    keepers = [m for m in found.members if m.id in wanted]
    kept = [m.path for m in keepers]
    others = [m for m in found.members if m.id not in wanted] if trash_others else []
    if others:
        for m in [*keepers, *others]:  # the keepers first: never trash the others of a photo that is gone
            _still_verified(group, m, verify)
    trashed = []
    try:
        for m in others:
            _still_verified(group, m, verify, moved=len(trashed))
            move_to_trash(m.path)
            trashed.append(m.path)
    finally:
        if trashed:
            forget(trashed)
    record_decision(collection, found, KEEP, keep=kept[0] if len(kept) == 1 else kept, trashed=trashed)
    return found


def split_group(collection: Collection, group: str, parts: Sequence[Sequence[int]]) -> DuplicateGroup:
    """Record that a listed group is several: each part (ids) stays linked inside, the links between parts
    are dropped, and members named in no part form one more part. Photos with the same bytes stay together."""
    found = listed_group(collection, group)
    by_id = {m.id: m for m in found.members}
    named = [list(dict.fromkeys(p)) for p in parts if p]
    flat = [i for p in named for i in p]
    strangers = [i for i in flat if i not in by_id]
    if strangers:
        raise QueryError(f"image {strangers[0]} is not in group {group}")
    if len(flat) != len(set(flat)):
        raise QueryError("a photo can be in one part only")
    rest = [i for i in by_id if i not in set(flat)]
    named += [rest] if rest else []
    if len(named) < 2:
        raise QueryError(f"a split needs at least two parts; name the photos to set apart from the others of group {group}")
    hashes = [sorted({by_id[i].sha256 for i in p}) for p in named]
    shared = {h for a, x in enumerate(hashes) for y in hashes[a + 1:] for h in set(x) & set(y)}
    if shared:
        twins = [m.id for m in found.members if m.sha256 in shared]
        raise QueryError(f"images {', '.join(map(str, twins))} have the same bytes: they cannot be split apart")
    record_decision(collection, found, SPLIT, parts=hashes)
    return found


def resolve_sure(collection: Collection, groups: Sequence[str], *, trash_others: bool,
                 forget: Callable[[list[str]], object], verify: Callable[[Member], None]) -> list[DuplicateGroup]:
    """Keep the suggested photo of each of these groups, all of them sure (DuplicateGroup.sure) when they were
    listed, checked before any is resolved."""
    found = [listed_group(collection, g) for g in groups]
    sure = set(collection.catalog.get_meta(LISTED_SURE) or [])
    unsure = [g.id for g in found if g.id not in sure]
    if unsure:
        raise QueryError(f"group {unsure[0]} needs a look: not every pair is the same bytes or resized")
    return [resolve_group(collection, g.id, keep=g.keep, trash_others=trash_others, forget=forget, verify=verify)
            for g in found]


def undo_decision(collection: Collection, group: str | None,
                  restore: Callable[[str], None]) -> tuple[Undone, dict[str, Any]]:
    """Take back a decision (group's, else the latest): the photos it moved to the trash are put back where
    they were (restore; one that cannot be is reported, never overwritten), and the decision is forgotten,
    so the group is listed again. Returns the report and the decision as it was."""
    decisions = dict(collection.catalog.get_meta(DECISIONS) or {})
    if not decisions and group is None:
        raise NotFoundError("no duplicate decision to take back")
    gid = group if group is not None else max(decisions, key=lambda g: str(decisions[g].get("at", "")))
    if gid not in decisions:
        raise NotFoundError(f"no decision on duplicate group {gid} (`simsearch duplicates --all` lists them)")
    decision = decisions.pop(gid)
    restored, problems = [], []
    for path in decision.get("trashed") or []:
        try:
            restore(path)
            restored.append(path)
        except SimsearchError as exc:
            problems.append(str(exc))
    collection.catalog.set_meta(**{DECISIONS: decisions})
    return Undone(gid, str(decision.get("decision")), restored, problems), decision


def _still_verified(group: str, member: Member, verify: Callable[[Member], None], *,
                    moved: int = 0) -> None:
    try:
        verify(member)
    except (NotFoundError, ChangedError) as exc:
        done = "nothing was moved to the trash" if not moved else f"{moved} moved to the trash before it, none after"
        raise ChangedError(f"group {group}: {display(member.path)} is not the photo that was verified ({exc}); "
                           f"{done}. Run `simsearch index`, then `simsearch duplicates` again") from exc
