"""A store's classifier: the ImageNet classes of each photo (simsearch.labels), from a classification module
loaded, fingerprinted, compiled and cached exactly like the store's feature module (simsearch.embedder),
run on the pixels the feature module gets.

Labels are optional and remembered per store (catalog meta "labels": the classifier's handle and content
fingerprint). The TF-Hub classification module is a second network: its `image_classification` signature is
a function of its own. But Inception V2's head is one linear layer on the pooled features the store's model
computes anyway (TF-Slim's Logits/Conv2d_1c_1x1, 1024 -> 1001): where the classifier holds exactly one such
layer and it gives the classifier's own logits from the store's model's features (checked on test images,
both compiled), labels come from that head in the same pass (`Head`, kept in the store), else from the
classifier run as a second network.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import Catalog
from .config import Settings
from .embedder import load_embedder
from .errors import ImageError, ModelMismatchError, StoreError
from .files import atomic_write
from .handles import local_fingerprint, normalize_handle
from .labels import CLASSES, TOP, class_probabilities, top_classes
from .paths import display
from .prepare import Decoding
from .results import Progress
from .runtimes import check_images

log = logging.getLogger(__name__)

DEFAULT_CLASSIFIER = "https://tfhub.dev/google/imagenet/inception_v2/classification/1"
SIGNATURE = "image_classification"  # TF-Hub's name for logits; `simsearch model import-slim` writes it too
META = "labels"
HEAD_FILE = "labels-head.npz"  # in the store folder: the head, where labels take one pass (sha256 in META)


@dataclass(frozen=True)
class Head:
    """A classifier's last layer, logits = features @ weights + bias, applied to the store's model's own
    (not normalised) outputs: labels in the same pass as the vectors."""

    weights: np.ndarray  # [dim, classes]
    bias: np.ndarray  # [classes]

    def top(self, features: np.ndarray, k: int = TOP) -> list[list[tuple[int, float]]]:
        return top_classes(class_probabilities(self.logits(features)), k)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, np.float32) @ self.weights + self.bias

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, weights=self.weights, bias=self.bias)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Head:
        with np.load(io.BytesIO(data)) as z:
            return cls(z["weights"].astype(np.float32), z["bias"].astype(np.float32))


def find_head(handle: str, dim: int) -> Head | None:
    """The module's one linear layer from `dim` features to ImageNet's classes ([dim, C] or a 1x1 convolution
    [1, 1, dim, C], and a [C] bias), read from its variables' checkpoint (TF1 Hub format and TF2 SavedModels
    keep one); None where there is not exactly one."""
    from .hub import import_tensorflow

    tf, hub = import_tensorflow()
    reader = tf.train.load_checkpoint(os.path.join(hub.resolve(handle), "variables", "variables"))
    shapes = {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()
              if "OPTIMIZER_SLOT" not in name and shape}
    kernels = [n for n, sh in shapes.items() if len(sh) in (2, 4) and sh[-1] in (CLASSES, CLASSES + 1)
               and sh[-2] == dim and (len(sh) == 2 or sh[:2] == (1, 1))]
    biases = [n for n, sh in shapes.items() if len(sh) == 1 and sh[0] in (CLASSES, CLASSES + 1)]
    if len(kernels) != 1 or len(biases) != 1 or shapes[biases[0]][0] != shapes[kernels[0]][-1]:
        return None
    classes = shapes[kernels[0]][-1]
    return Head(np.asarray(reader.get_tensor(kernels[0]), np.float32).reshape(dim, classes),
                np.asarray(reader.get_tensor(biases[0]), np.float32))


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

    def __init__(self, root: Path, catalog: Catalog, classifier: str | os.PathLike[str] | Classifier | None,
                 settings: Settings) -> None:
        self.root, self.catalog, self.settings = root, catalog, settings
        self.recorded: dict[str, Any] | None = catalog.get_meta(META)
        self._arg = classifier
        self._classifier: Classifier | None = None
        self._head: Head | None = None
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
            (self.root / HEAD_FILE).unlink(missing_ok=True)
            self._head = None
        self._record({"classifier": self.handle, "fingerprint": self._fingerprint(),
                      "since": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        return True

    def _record(self, rec: dict[str, Any]) -> None:
        self.catalog.set_meta(**{META: rec})
        self.recorded = rec

    def head(self, embedder: Any) -> Head | None:
        """The classifier's head where it gives the classifier's logits from this model's own outputs (one
        pass), decided once per store and kept (HEAD_FILE); None: the classifier runs as a second network."""
        rec = self.recorded or {}
        if rec.get("passes") == 2:
            return None
        if self._head is None and rec.get("passes") == 1:
            data = (self.root / HEAD_FILE).read_bytes() if (self.root / HEAD_FILE).exists() else b""
            if hashlib.sha256(data).hexdigest() == rec.get("head_sha256"):
                self._head = Head.from_bytes(data)
            else:  # gone or damaged: decided again
                log.warning("labels: %s is missing or damaged; checking the classifier's head again", HEAD_FILE)
        if self._head is None:
            self._head = self._check_head(embedder)
            data = self._head.to_bytes() if self._head is not None else b""
            if data:
                atomic_write(self.root / HEAD_FILE, data)
            self._record({**rec, "passes": 1 if data else 2} |
                         ({"head_sha256": hashlib.sha256(data).hexdigest()} if data else {}))
        return self._head

    def _check_head(self, embedder: Any) -> Head | None:
        """The head, if the classifier holds exactly one linear layer on features of the model's size and it
        reproduces the classifier's own logits (both compiled) from the model's outputs on test images."""
        if isinstance(self._arg, Classifier) or not hasattr(embedder, "outputs"):
            return None
        classifier = self.classifier
        size = tuple(embedder.spec.input_size)
        if tuple(classifier.spec.input_size) != size:
            return None
        try:
            head = find_head(self.handle, embedder.spec.dim)
        except Exception as exc:  # a module TensorFlow cannot read as a whole: the second network it is
            log.info("labels: no head read from %s (%s)", self.handle, exc)
            return None
        if head is None:
            return None
        images = check_images(size)  # type: ignore[arg-type]
        want = classifier.model.outputs(images)
        got = head.logits(embedder.outputs(images))
        same_top = (np.argsort(-got, axis=1)[:, :5] == np.argsort(-want, axis=1)[:, :5]).all()
        close = float(np.abs(got - want).max()) <= 1e-3 * max(1.0, float(np.abs(want).max()))
        log.info("labels: the head of %s %s the classifier's logits from the model's outputs (largest difference "
                 "%.2g): %s", self.handle, "gives" if close and same_top else "does not give",
                 float(np.abs(got - want).max()), "one pass" if close and same_top else "a second network")
        return head if close and same_top else None

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
        try:
            self._record({**(self.recorded or {}), "fingerprint": fp})
        except StoreError as exc:
            log.warning("could not record the classifier's fingerprint: %s", exc)
