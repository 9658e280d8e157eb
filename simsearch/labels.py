"""ImageNet labels: what a word means among the classifier's 1000 classes, and a photo's top classes.

Words come from the table scripts/imagenet_labels.py wrote from WordNet 3.0 (simsearch/data/
imagenet_labels.json, read once): a class's own names ("golden retriever") and every WordNet word above
it ("dog" covers the 118 dog classes, "vehicle" 67). These are ImageNet's 1000 classes, not free text.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

from .errors import ModelError, QueryError
from .results import Result

CLASSES = 1000
TOP = 10  # classes kept per photo: a general word sums what its classes have among them
MIN_PROBABILITY = 0.001  # below this a class is not kept for a photo (of 1000, chance is 0.001)
DEFAULT_MIN_PROBABILITY = 0.05  # a query by label: photos whose classes under the word add up to this


@dataclass(frozen=True)
class Label(Result):
    """One of a photo's classes: its index among the 1000 (0-based), its name, its probability."""

    index: int
    name: str
    probability: float


@dataclass(frozen=True)
class Meaning:
    """What a word names: the classes it covers (0-based), the word as the table has it."""

    word: str
    classes: tuple[int, ...]


class Vocabulary:
    """The shipped table: class names and WordNet words."""

    def __init__(self, classes: list[tuple[str, list[str]]], words: dict[str, list[int]]) -> None:
        self.wnids = [wnid for wnid, _ in classes]
        self.names = [names[0] for _, names in classes]
        self.words = words

    @classmethod
    @cache
    def shipped(cls) -> Vocabulary:
        table = json.loads(resources.files("simsearch").joinpath("data/imagenet_labels.json").read_text("utf-8"))
        return cls([(w, n) for w, n in table["classes"]], table["words"])

    def name(self, index: int) -> str:
        return self.names[index]

    def meaning(self, word: str) -> Meaning:
        """The classes a word covers, case-insensitive, a plural tried as its singular; an unknown word is a
        QueryError that suggests the nearest words of the table."""
        key = _normal(word)
        if not key:
            raise QueryError("a label is a word such as 'dog', 'sailboat' or 'golden retriever'")
        for candidate in (key, *_singulars(key)):
            if candidate in self.words:
                return Meaning(candidate, tuple(self.words[candidate]))
        near = difflib.get_close_matches(key, self.words, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(w) for w in near)}?" if near else ""
        raise QueryError(f"{word!r} is not one of ImageNet's 1000 classes or a WordNet word above them{hint} "
                         f"(labels name things such as 'dog', 'pizza' or 'sailboat', not free text)")


def _normal(word: str) -> str:
    return re.sub(r"\s+", " ", word.replace("_", " ")).strip().lower()


def _singulars(word: str) -> list[str]:
    if word.endswith("ies"):
        return [word[:-3] + "y"]
    if word.endswith("es"):
        return [word[:-2], word[:-1]]
    return [word[:-1]] if word.endswith("s") else []


def class_probabilities(logits: np.ndarray) -> np.ndarray:
    """[N, 1001] (TF-Slim's, background first) or [N, 1000] logits -> [N, 1000] softmax probabilities over
    the classifier's own classes (a 1001-class one keeps its background share out of the 1000)."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or logits.shape[1] not in (CLASSES, CLASSES + 1):
        raise ModelError(f"the classifier returned shape {list(logits.shape)}: labels need ImageNet's "
                         f"{CLASSES} classes ({CLASSES + 1} with TF-Slim's background class first)")
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    return (p[:, 1:] if logits.shape[1] == CLASSES + 1 else p).astype(np.float32)


def top_classes(probabilities: np.ndarray, k: int = TOP,
                floor: float = MIN_PROBABILITY) -> list[list[tuple[int, float]]]:
    """Each photo's k most probable classes (0-based) with their probabilities, those under floor left out
    but the first (so every photo labelled has a row, and is not labelled again)."""
    k = min(k, probabilities.shape[1])
    best = np.argsort(-probabilities, axis=1)[:, :k]
    return [[(int(c), float(row[c])) for n, c in enumerate(order) if n == 0 or row[c] >= floor]
            for row, order in zip(probabilities, best)]
