"""A store's classifier: the ImageNet classes of each photo (simsearch.labels), from a classification module
loaded, fingerprinted, compiled and cached exactly like the store's feature module (simsearch.embedder),
run on the pixels the feature module gets.

Labels are optional and remembered per store (catalog meta "labels": the classifier's handle and content
fingerprint). The TF-Hub classification module is a second network: its `image_classification` signature is
a function of its own, so a photo costs one more model pass (measured in the README), not a free head.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .catalog import Catalog
from .config import Settings
from .embedder import load_embedder
from .errors import ImageError, ModelMismatchError, StoreError
from .handles import local_fingerprint, normalize_handle
from .labels import TOP, class_probabilities, top_classes
from .paths import display
from .prepare import Decoding
from .results import Progress

log = logging.getLogger(__name__)

DEFAULT_CLASSIFIER = "https://tfhub.dev/google/imagenet/inception_v2/classification/1"
SIGNATURE = "image_classification"  # TF-Hub's name for logits; `simsearch model import-slim` writes it too
META = "labels"


class Classifier:
    """A model whose outputs are ImageNet logits ([N, 1001] with TF-Slim's background first, or [N, 1000]):
    anything with `spec` and `outputs(images)` (simsearch.embedding.BatchingEmbedder)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @property
    def spec(self) -> Any:
        return self.model.spec

    def top(self, images: np.ndarray, k: int = TOP) -> list[list[tuple[int, float]]]:
        """uint8 [N, H, W, 3] model inputs -> each photo's top classes (0-based) with probabilities."""
        size = tuple(self.spec.input_size)
        if images.shape[1:3] != size:  # another input size than the feature module's: resized here
            import cv2

            images = np.stack([cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_AREA) for im in images])
        return top_classes(class_probabilities(self.model.outputs(images)), k)


def load_classifier(handle: str, *, settings: Settings, fingerprint: str | None = None) -> Classifier:
    """The module's `image_classification` signature, compiled for this CPU like the feature module (FP32)."""
    return Classifier(load_embedder(handle, runtime=settings.runtime, fingerprint=fingerprint, signature=SIGNATURE,
                                    batch_size=settings.batch_size, device=str(settings.device)))


class StoreLabels:
    """Whether a store keeps labels, with which classifier, and that classifier loaded on first use."""

    def __init__(self, catalog: Catalog, classifier: str | os.PathLike[str] | Classifier | None,
                 settings: Settings) -> None:
        self.catalog, self.settings = catalog, settings
        self.recorded: dict[str, Any] | None = catalog.get_meta(META)
        self._arg = classifier
        self._classifier: Classifier | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.recorded)

    @property
    def handle(self) -> str:
        arg = self._arg
        if isinstance(arg, Classifier):
            return str(arg.spec.handle)
        if arg is not None:
            return normalize_handle(arg)
        return str(self.recorded["classifier"]) if self.recorded else DEFAULT_CLASSIFIER

    def enable(self) -> bool:
        """Keep labels from now on, with this open's classifier; another classifier than the one recorded
        replaces it, and the labels it gave are forgotten (they are computed again). Returns whether it changed."""
        if self.recorded and self._same(self.recorded):
            return False
        if self.recorded:
            log.info("labels: classifier %s replaces %s; every photo is labelled again",
                     self.handle, self.recorded["classifier"])
            self.catalog.clear_labels()
        self.recorded = {"classifier": self.handle, "fingerprint": self._fingerprint(),
                         "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.catalog.set_meta(**{META: self.recorded})
        return True

    def _fingerprint(self) -> str | None:
        if isinstance(self._arg, Classifier):
            return self._arg.spec.fingerprint
        return local_fingerprint(self.handle)

    def _same(self, rec: dict[str, Any]) -> bool:
        if self._arg is None:
            return True
        fp = self._fingerprint()
        return fp == rec.get("fingerprint") if fp and rec.get("fingerprint") else self.handle == rec["classifier"]

    @property
    def classifier(self) -> Classifier:
        """Loaded on first use, once; its content must be the recorded classifier's."""
        with self._lock:
            if self._classifier is None:
                rec = self.recorded or {}
                if isinstance(self._arg, Classifier):
                    found = self._arg
                else:
                    found = load_classifier(self.handle, settings=self.settings, fingerprint=rec.get("fingerprint"))
                fp, want = found.spec.fingerprint, rec.get("fingerprint")
                if fp and want and fp != want:
                    raise ModelMismatchError(
                        f"this store's labels came from classifier {rec['classifier']} (content {want}), not "
                        f"{found.spec.handle} (content {fp}): pass --classifier with `simsearch index --labels` "
                        f"to label the photos again with it")
                if fp and rec and not want:
                    self._learn_fingerprint(fp)
                self._classifier = found
            return self._classifier

    def fill(self, decoding: Decoding, *, workers: int = 4,
             progress: Callable[[Progress], None] | None = None) -> int:
        """Label the indexed photos that have none (a store that has just asked for labels, photos embedded on
        Ray, a content whose first copy was indexed before): decoded again as the model had them, never
        embedded again. A photo that cannot be decoded now is left for the next run. Returns how many."""
        total = max(0, self.catalog.counts()["images"] - self.catalog.labelled())
        done = failed = after = 0
        started = time.perf_counter()
        batch = max(1, self.settings.batch_size)

        def decode(row: tuple[int, str, str]) -> np.ndarray | None:
            try:
                return decoding.load(row[1])[0]
            except ImageError as exc:
                log.warning("labels: %s left for the next run: %s", display(row[1]), exc.reason)
                return None

        with ThreadPoolExecutor(max(1, workers)) as pool:
            while rows := self.catalog.unlabelled(after, batch):
                after = rows[-1][0]
                pixels = list(pool.map(decode, rows))
                ok = [(row, p) for row, p in zip(rows, pixels) if p is not None]
                if ok:
                    tops = self.classifier.top(np.stack([p for _, p in ok]))
                    self.catalog.add_labels({row[2]: top for (row, _), top in zip(ok, tops)})
                done += len(ok)
                failed += len(rows) - len(ok)
                if progress:
                    progress(Progress(done + failed, max(total, done + failed), failed, time.perf_counter() - started))
        return done

    def _learn_fingerprint(self, fp: str) -> None:
        rec = {**(self.recorded or {}), "fingerprint": fp}
        try:
            self.catalog.set_meta(**{META: rec})
        except StoreError as exc:
            log.warning("could not record the classifier's fingerprint: %s", exc)
            return
        self.recorded = rec
