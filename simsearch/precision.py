"""Choosing a store's arithmetic: the fastest precision this CPU runs that keeps each photo's neighbours.

`--precision auto`, the default, decides once, when a store is made: it embeds a sample of the folder's
own photos in FP32 and in each faster precision this CPU has (BF16 where it has AVX512_BF16 or AMX, INT8
where it has VNNI or AMX and NNCF is installed), and keeps the fastest that passes the gate against FP32
on that sample: every vector at cosine >= 0.99 to its FP32 vector, and each photo's 10 nearest
neighbours within the sample at least 95% the same. A candidate must also be at least 1.15x FP32's
speed to be worth any change at all. What was measured is recorded in the store (`simsearch stats`).

The gate judges fidelity to FP32, rankings above all: with random weights every photo looks alike
(cosine > 0.99), so the cosine passes at once and the neighbour lists decide. Fewer than MIN_SAMPLE
photos cannot be judged: such a store stays FP32.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .embedding import Embedder

GATE_MIN_COSINE = 0.99
GATE_TOP10 = 0.95
MIN_GAIN = 1.15  # over FP32's images/s
SAMPLE_PHOTOS = 160
MIN_SAMPLE = 40
NEIGHBOURS = 10


@dataclass(frozen=True)
class Trial:
    """One precision measured on the sample; fidelity against FP32 (FP32's own trial has none)."""

    precision: str
    images_per_s: float | None = None
    min_cosine: float | None = None
    top10_overlap: float | None = None
    passed: bool = False
    note: str | None = None  # why it was not measured, or why it failed

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Choice:
    """The precision kept and the trials that decided it, as recorded in the store."""

    precision: str
    sample: int
    trials: list[Trial] = field(default_factory=list)
    reason: str = ""

    def as_meta(self) -> dict[str, Any]:
        return {"chosen": self.precision, "sample_photos": self.sample, "reason": self.reason,
                "gate": {"min_cosine": GATE_MIN_COSINE, "top10_overlap": GATE_TOP10, "min_gain": MIN_GAIN},
                "trials": [t.as_dict() for t in self.trials]}


def fidelity(reference: np.ndarray, candidate: np.ndarray, k: int = NEIGHBOURS) -> tuple[float, float]:
    """(minimum cosine between each photo's two vectors, mean share of each photo's k nearest neighbours
    within the sample that the candidate's vectors keep)."""
    a = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    b = candidate / np.linalg.norm(candidate, axis=1, keepdims=True)
    cos = float((a * b).sum(axis=1).min())
    k = min(k, len(a) - 1)
    if k < 1:
        return cos, 1.0

    def top(x: np.ndarray) -> np.ndarray:
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1, kind="stable")[:, :k]

    ra, rb = top(a), top(b)
    overlap = np.mean([len(set(p) & set(q)) / k for p, q in zip(ra.tolist(), rb.tolist())])
    return cos, float(overlap)


def measure(embedder: Embedder, photos: np.ndarray, rounds: int = 2) -> tuple[np.ndarray, float]:
    """The sample's vectors and the best images/s of `rounds` passes, after a warm-up batch."""
    embedder.embed(photos[: min(len(photos), 8)])
    best, vectors = 0.0, np.zeros((0, 0), np.float32)
    for _ in range(rounds):
        t = time.perf_counter()
        vectors = embedder.embed(photos)
        best = max(best, len(photos) / max(time.perf_counter() - t, 1e-9))
    return vectors, best


def judge(precision: str, reference: np.ndarray, vectors: np.ndarray, images_per_s: float) -> Trial:
    cos, overlap = fidelity(reference, vectors)
    passed = cos >= GATE_MIN_COSINE and overlap >= GATE_TOP10
    note = None if passed else (f"fails the gate: minimum cosine {cos:.4f} (>= {GATE_MIN_COSINE}), "
                                f"top-{NEIGHBOURS} overlap {overlap:.3f} (>= {GATE_TOP10})")
    return Trial(precision, round(images_per_s, 1), round(cos, 5), round(overlap, 4), passed, note)


def choose(fp32: Trial, others: list[Trial]) -> Choice:
    """The fastest trial that passed and is worth it; FP32 otherwise."""
    worth = [t for t in others if t.passed and t.images_per_s and fp32.images_per_s
             and t.images_per_s >= MIN_GAIN * fp32.images_per_s]
    if not worth:
        reason = "no faster precision passed the gate" if others else "this CPU has no faster precision"
        return Choice("fp32", 0, [fp32, *others], reason)
    best = max(worth, key=lambda t: t.images_per_s or 0.0)
    return Choice(best.precision, 0, [fp32, *others],
                  f"{best.precision} ran {best.images_per_s / (fp32.images_per_s or 1):.2f}x fp32 and passed the gate")


def auto(photos: np.ndarray, fp32: Embedder, candidates: dict[str, Callable[[], Embedder]]) -> Choice:
    """Measure FP32 and each candidate (a factory: an INT8 one quantizes first) on the sample and choose.
    A candidate that cannot be built (ModelError) is recorded with why, never fatal."""
    from .errors import ModelError

    if len(photos) < MIN_SAMPLE:
        return Choice("fp32", len(photos), [], f"{len(photos)} photos are too few to judge another precision "
                                                f"(at least {MIN_SAMPLE})")
    reference, fp32_speed = measure(fp32, photos)
    trials = []
    for name, make in candidates.items():
        try:
            vectors, speed = measure(make(), photos)
        except ModelError as exc:
            trials.append(Trial(name, note=f"not available: {exc}"))
            continue
        trials.append(judge(name, reference, vectors, speed))
    choice = choose(Trial("fp32", round(fp32_speed, 1), passed=True), trials)
    return Choice(choice.precision, len(photos), choice.trials, choice.reason)
