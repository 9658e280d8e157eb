"""What the store hands back: frozen dataclasses that print as JSON through one `to_dict`.

Every result is plain data (no handles to the store), so the CLI, the server and library users format
the same objects; `to_dict` never yields NaN or infinity (JSON has neither): they become None.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class Result:
    """Mixin for result dataclasses: `to_dict()` is what `--json` and the HTTP API print."""

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))  # type: ignore[call-overload, no-any-return]


@dataclass(frozen=True)
class Progress:
    """Reported once before the first batch (done 0) and after every committed batch; `total` counts the
    files that needed work."""

    done: int
    total: int
    failed: int
    elapsed: float


@dataclass(frozen=True)
class IndexReport(Result):
    folder: str
    scanned: int
    added: int
    updated: int
    moved: int
    removed: int
    unchanged: int
    failed: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (decode summed over workers)
    ray: dict[str, float] = field(default_factory=dict)  # with --ray: shards run and reused
    # CPU ms per photo embedded (decode, model, other), the bound cores / CPU per photo and the share of it
    # this run reached (simsearch.indexing.CpuMeter); {} when nothing was embedded on this machine
    cpu: dict[str, float] = field(default_factory=dict)
    labelled: int = 0  # photos given labels (a store with labels: those embedded, and any that had none)


@dataclass(frozen=True)
class Photo(Result):
    """An indexed photo as the catalog describes it: what browse() and get() return, and a duplicate
    group's members (Member); a query's Hit carries the same facts with its score."""

    id: int
    path: str
    size: int | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    taken_at: str | None = None
    mtime: float | None = None
    mtime_ns: int | None = None
    sha256: str | None = None
    indexed_at: str | None = None
    status: str | None = None
    error: str | None = None
    decoded_from: str | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any], **extra: Any) -> Any:
        """A catalog record (Catalog.records), with what a subclass adds."""
        return cls(**{f.name: record.get(f.name) for f in fields(cls) if f.name in record}, **extra)


@dataclass(frozen=True)
class Hit(Photo):
    """A query's answer: the photo and its score (cosine similarity to the query, 1.0 for the same)."""

    score: float = field(kw_only=True)

    @classmethod
    def from_record(cls, record: dict[str, Any], score: float) -> Hit:  # type: ignore[override]
        return super().from_record(record, score=score)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Member(Photo):
    """A photo of a duplicate group."""

    new: bool = False  # added since the group was last resolved


@dataclass(frozen=True)
class Failure(Result):
    id: int
    path: str
    reason: str
    size: int | None
    indexed_at: str

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Failure:
        return cls(id=record["id"], path=record["path"], reason=record["error"], size=record["size"],
                   indexed_at=record["indexed_at"])


SURE_REASONS = frozenset({"same bytes", "resized"})


@dataclass(frozen=True)
class DuplicateGroup(Result):
    """Photos that are copies of each other: `exact` when every file has the same bytes, else `near`."""

    kind: str
    keep: int  # the id of the member suggested to keep (largest resolution, then oldest): resolve --keep takes it
    min_score: float  # the lowest similarity that links the group (1.0 for exact copies)
    members: list[Member]
    id: str = ""  # stable: from the members' content hashes, so a decision can name the group
    resolution: str | None = None  # "not-duplicates" or "keep" once resolved (listed with --all only)
    pairs: list[dict[str, Any]] = field(default_factory=list)  # verified pairs: a, b (ids), reason, evidence

    @property
    def keeper(self) -> Member:
        """The member suggested to keep."""
        return next(m for m in self.members if m.id == self.keep)

    @property
    def sure(self) -> bool:
        """Whether it can be resolved without a look: copies only, every pair the same bytes or the same
        picture at another size, so keeping the suggested (largest, then oldest) photo loses nothing."""
        return self.kind in ("exact", "near") and bool(self.pairs) and all(p["reason"] in SURE_REASONS for p in self.pairs)

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {"sure": self.sure}


@dataclass(frozen=True)
class Undone(Result):
    """A duplicate decision taken back: what it was, the photos put back from the trash, and any that could
    not be (each with the reason)."""

    group: str
    decision: str
    restored: list[str]
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class IndexSettings(Result):
    """How the store searches: exact (`flat`) or IVF with its tuned probe count, as optimize recorded it."""

    kind: str = "flat"
    nlist: int | None = None
    nprobe: int | None = None
    recall_at_10: float | None = None
    refine: int | None = None  # candidates re-scored exactly per result wanted (None: the default, 4)

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None) -> IndexSettings:
        return cls(**meta) if meta else cls()


@dataclass(frozen=True)
class OptimizeReport(Result):
    kind: str
    nlist: int
    nprobe: int
    recall_at_10: float
    vectors: int
    seconds: float
    refine: int = 4
    note: str | None = None  # set when nothing was changed, and why


@dataclass(frozen=True)
class StoreStats(Result):
    store: str
    db: str
    model: str
    fingerprint: str | None
    precision: str
    runtime: str | None
    dim: int | None
    input_size: list[int] | None
    resize: str | None
    images: int
    failed: int
    vectors: int
    folders: list[str]
    last_indexed_at: str | None
    index_bytes: int
    index_kind: str
    nlist: int | None = None
    nprobe: int | None = None
    recall_at_10: float | None = None
    # how `--precision auto` chose, when it did: the trials measured on the folder's photos (simsearch.precision)
    precision_choice: dict[str, Any] | None = None
    # what each folder's scans leave out, as its last `index` chose: {"exclude": [globs], "include_hidden": bool}
    folder_options: dict[str, dict[str, Any]] | None = None
    # ImageNet labels (`index --labels`): {"classifier", "fingerprint", "since", "labelled": photos}; None: none
    labels: dict[str, Any] | None = None


@dataclass(frozen=True)
class Problem(Result):
    """One thing `simsearch check` found wrong: in which part, what, and whether --repair mended it."""

    part: str  # catalog | index | fingerprints | renditions | temp-files
    detail: str
    repaired: bool = False


@dataclass(frozen=True)
class CheckReport(Result):
    store: str
    checked: list[str]
    problems: list[Problem]

    @property
    def healthy(self) -> bool:
        """Nothing wrong, or everything wrong mended."""
        return all(p.repaired for p in self.problems)
