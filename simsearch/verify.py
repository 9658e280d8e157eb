"""Checking a candidate pair on the pixels: is one photo a copy of the other, and how was it changed?

The embedding only proposes candidates; whether two photos are copies is decided here, on evidence that
does not depend on the model's calibration:

- perceptual hashes (pHash and dHash, 64 bits each, for the four rotations by 90 degrees) catch resizes,
  recompression, format changes and colour or brightness edits: the picture as a whole is unchanged,
  provided the colour thumbnails agree once aligned (grey hashes cannot tell a silver motorbike from a
  gold one in the same pose; a brightness or contrast edit is normalised away first);
- local features (OpenCV's ORB, matched with Lowe's ratio test, a similarity transform fitted with RANSAC)
  catch crops, borders, rotations and overlays: one picture lies inside the other. A fitted transform must
  be a rotation by a multiple of 90 degrees, one image must lie wholly inside the other, and the contained
  image must correlate with the region it maps to, in grey and in colour (so a burst of the same scene,
  with the subject moved, or a second photo of the same monument, is not a copy).

A photo's `Fingerprint` is taken in two parts, each once, stored in the catalog by content hash:
its hashes, a 48 x 48 grey thumbnail and a 32 x 32 colour one (under 1 ms, about 5.5 KB) from the decode
that feeds the model at index time; its ORB keypoints (up to 160, about 5 KB; 2 ms more) only when
`duplicates` needs them, for a photo in a candidate pair that the hashes did not settle, from a fresh
decode. Most photos are never in such a pair, and none pays for keypoints while it is being indexed.
The thresholds were set on real photos (Corel-1k, bench/duplicates.py), not on the embedding.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

VERSION = 3  # bumped when a fingerprint's computation changes: older ones are recomputed
SIDE = 256  # fingerprints are taken on the photo fitted within SIDE x SIDE, in grey
DECODE_SIDE = 224  # decoded with each side at least this (a JPEG at reduced size), whatever the model's input
THUMB = 48
COLOUR = 32  # side of the colour thumbnail: the whole-picture verdict is checked on it
HASH_SIDE = 64  # hashes and the thumbnail come from the grey photo squashed to this square
NO_KEYPOINTS = 0xFFFF  # keypoint count of a fingerprint whose keypoints are not taken yet
FEATURES = 160
_HEADER = struct.Struct("<BHHH")  # version, width, height, keypoints

# the whole picture is the same: pHash and dHash distances (of 64 bits) at or under these, or a pHash
# distance under PHASH_LOOSE and grey thumbnails that correlate (watermarks, strong colour edits)
PHASH_MAX, DHASH_MAX = 6, 12
PHASH_LOOSE, THUMB_CORRELATION = 12, 0.95
# the thumbnails' correlation leaves out the pixels that differ most, up to this share: a watermark over a
# flat picture covers 0.2-2.7% of a 48 x 48 thumbnail and alone pulled it to 0.88-0.93
OVERLAY_SHARE = 0.03
# ... and the colour thumbnails, aligned, each channel brought to zero mean and unit spread (brightness and
# contrast edits cancel), differ by more than COLOUR_DELTA on at most this share of their pixels: a
# watermark or JPEG at quality 20 stays under 0.025, the same scene with its main object recoloured or
# replaced mostly does not (1-3 of 60 corel1k pairs pass, 55-56 did before; tests/test_duplicates.py)
COLOUR_DELTA, COLOUR_DIFFER_MAX = 0.7, 0.05
COLOUR_DIFFER_PLACED = 0.07  # the same, for one picture drawn inside the other (a crop's fit is coarser)
# naming the change, on the colour pixels that agree once normalised (so an overlay's own pixels do not
# pass for a colour edit): a channel's mean moved by more than COLOUR_SHIFT (of 255) or its spread by more
# than SPREAD_CHANGE (log ratio) is a colour edit (JPEG q20-50, resizes, re-encodes and screenshots of
# 150 corel1k photos stay under 1.3 and 0.048; 99% of brightness/contrast edits of 0.7-1.3 pass); grey
# thumbnails differing by more than OVERLAY_DELTA (normalised) on at least OVERLAID_AREA of their pixels is
# something drawn over a small part (none of the others there reach it); what lies outside a contained
# picture varying less than BORDER_SPREAD (of 255) is a border, as is a flat edge one thumbnail has and
# the other lacks by BORDER_PX pixels or more
COLOUR_SHIFT, SPREAD_CHANGE, BORDER_SPREAD = 3.0, 0.06, 12.0
OVERLAY_DELTA, OVERLAID_AREA, BORDER_PX = 0.4, 0.001, 2
# resized: the picture's own size changed; recompressed: same size and format, other bytes; re-encoded:
# another format; rotated by a multiple of 90 degrees (a mirror image is not a copy here); cropped;
# bordered (a frame or letterbox added); colour edited (brightness, contrast, colour); overlaid (text or a
# logo over a small part)
REASONS = ("resized", "recompressed", "re-encoded", "rotated", "cropped", "bordered", "colour edited", "overlaid")
# geometric verification
MIN_MATCHES, MIN_INLIERS, MIN_INLIER_RATIO = 10, 12, 0.3
ANGLE_TOLERANCE = 2.0  # degrees from a multiple of 90
SCALES = (0.2, 5.0)  # fingerprint images are fitted to one size: a copy is at most this much larger or smaller
CONTAIN_TOLERANCE = 0.04  # of the larger image's side: a corner may lie this far outside
MIN_CORRELATION = 0.93  # of the contained image and the region it maps to, grey thumbnails
CROPPED_BELOW = 0.9  # the contained image covers less than this of the other's area: a crop
_RATIO = 0.8


class FingerprintError(ValueError):
    """OpenCV could not take a photo's features (the photo itself may be fine)."""


@dataclass(frozen=True)
class Fingerprint:
    """What verification needs of one photo, small enough to keep for every photo."""

    width: int  # of the fingerprint image (the photo fitted within SIDE x SIDE)
    height: int
    phash: np.ndarray  # uint8 [4, 8]: the photo rotated by 0, 90, 180 and 270 degrees (counter-clockwise)
    dhash: np.ndarray  # uint8 [4, 8]
    thumb: np.ndarray  # uint8 [THUMB, THUMB], the whole photo squashed
    colour: np.ndarray  # uint8 [COLOUR, COLOUR, 3], the whole photo squashed, RGB
    points: np.ndarray | None = None  # float32 [n, 2], keypoints in the fingerprint image's pixels
    descriptors: np.ndarray | None = None  # uint8 [n, 32], ORB; None for both: not taken yet

    @property
    def has_keypoints(self) -> bool:
        return self.points is not None and self.descriptors is not None

    def to_bytes(self) -> bytes:
        head = [self.phash.tobytes(), self.dhash.tobytes(), self.thumb.tobytes(), self.colour.tobytes()]
        if self.points is None or self.descriptors is None:
            return b"".join([_HEADER.pack(VERSION, self.width, self.height, NO_KEYPOINTS), *head])
        pts = np.round(self.points * 64).astype("<u2")
        return b"".join([_HEADER.pack(VERSION, self.width, self.height, len(self.points)), *head, pts.tobytes(),
                         self.descriptors.tobytes()])

    @classmethod
    def from_bytes(cls, data: bytes) -> Fingerprint:
        version, w, h, n = _HEADER.unpack_from(data)
        if version != VERSION:
            raise ValueError(f"fingerprint version {version}, expected {VERSION}")
        buf = np.frombuffer(data, np.uint8, offset=_HEADER.size)
        taken = n != NO_KEYPOINTS
        n = n if taken else 0
        cut = np.cumsum([32, 32, THUMB * THUMB, COLOUR * COLOUR * 3, 4 * n, 32 * n])
        ph, dh, th, co, pts, desc, rest = np.split(buf, cut)
        if len(rest) or len(desc) != 32 * n:
            raise ValueError(f"fingerprint of {len(data)} bytes does not match its header")
        parts = (ph.reshape(4, 8), dh.reshape(4, 8), th.reshape(THUMB, THUMB), co.reshape(COLOUR, COLOUR, 3))
        if not taken:
            return cls(w, h, *parts)
        return cls(w, h, *parts, pts.view("<u2").reshape(n, 2).astype(np.float32) / 64, desc.reshape(n, 32))


def is_current(data: bytes) -> bool:
    """Whether a stored fingerprint is of this VERSION (an older one is stale, not damaged: retaken)."""
    return len(data) >= _HEADER.size and _HEADER.unpack_from(data)[0] == VERSION


def phashes(data: bytes) -> bytes:
    """The four rotations' pHashes (32 bytes) of a stored fingerprint, without parsing the rest."""
    return data[_HEADER.size : _HEADER.size + 32]


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


_DCT32 = _dct_matrix(32)


# The DCT of a picture turned by 90 degrees is the transposed DCT with the odd rows' signs flipped (a flip
# along an axis negates that axis's odd frequencies): one DCT gives the four rotations' pHashes.
_ODD = (-1.0) ** np.arange(8)


def _phashes(grey32: np.ndarray) -> np.ndarray:
    """pHash as imagehash computes it (the 8 x 8 lowest frequencies of a 32 x 32 DCT, above their median),
    of the picture turned by 0, 90, 180 and 270 degrees counter-clockwise (np.rot90)."""
    low = (_DCT32[:8] @ grey32 @ _DCT32[:8].T)
    turned = [low, _ODD[:, None] * low.T, _ODD[:, None] * _ODD[None, :] * low, _ODD[None, :] * low.T]
    return np.stack([np.packbits(t > np.median(t)) for t in turned])


def _dhashes(grey: Image.Image) -> np.ndarray:
    """dHash (is each pixel brighter than its left neighbour, on a 9 x 8 picture) of the four rotations:
    resizing commutes with turning by 90 degrees, so two resizes serve all four."""
    wide, tall = (np.asarray(grey.resize(s, Image.Resampling.LANCZOS), np.int16) for s in ((9, 8), (8, 9)))
    turned = (np.rot90(wide if k % 2 == 0 else tall, k) for k in range(4))
    return np.stack([np.packbits(px[:, 1:] > px[:, :-1]) for px in turned])


# a border (frame, letterbox) hides a copy from the plain pHash (52% of bench borders within PHASH_LOOSE):
# rows and columns at the thumbnail's edges within FLAT_EDGE (of 255) of their median are cut before hashing
FLAT_EDGE, LOOSE_EDGE = 10.0, 25.0


def trim_box(thumb: np.ndarray, tolerance: float = FLAT_EDGE) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a grey thumbnail inside the flat borders at its edges (rows and columns
    within tolerance of their median, at most a third of a side each); the whole of it where it has none."""
    t = np.asarray(thumb, np.float32)
    n, m = t.shape
    top, bottom, left, right = 0, n, 0, m

    def flat(line: np.ndarray, ref: float) -> bool:
        return float(np.abs(line - ref).max()) <= tolerance

    edge = float(np.median(t[0]))
    while top < n // 3 and flat(t[top], edge):
        top += 1
    edge = float(np.median(t[-1]))
    while bottom > n - n // 3 and flat(t[bottom - 1], edge):
        bottom -= 1
    edge = float(np.median(t[top:bottom, 0]))
    while left < m // 3 and flat(t[top:bottom, left], edge):
        left += 1
    edge = float(np.median(t[top:bottom, -1]))
    while right > m - m // 3 and flat(t[top:bottom, right - 1], edge):
        right -= 1
    return top, bottom, left, right


def trimmed_phash(thumb: np.ndarray) -> np.ndarray | None:
    """The pHash (uint8 [8]) of a grey thumbnail without its flat borders (trim_box), or None where it has
    none: a bordered copy's trimmed hash is its original's."""
    n, m = thumb.shape
    top, bottom, left, right = trim_box(thumb)
    if (top, bottom, left, right) == (0, n, 0, m):
        return None
    # one pixel further in: the thumbnail's filter blends the border into the picture's first pixels
    top, left = top + (top > 0), left + (left > 0)
    bottom, right = bottom - (bottom < n), right - (right < m)
    inner = Image.fromarray(np.ascontiguousarray(thumb[top:bottom, left:right]))
    return _phashes(np.asarray(inner.resize((32, 32), Image.Resampling.BILINEAR), np.float64))[0]


# a crop keeps most of its original's colours wherever it was cut: each photo's nearest neighbours by colour
# histogram (HIST_LEVELS per channel of the colour thumbnail) at Hellinger similarity >= HIST_MIN are
# candidates too (the bench's crops the embedding and the hashes missed: 15 of 15 proposed, all at >= 0.84)
HIST_LEVELS, HIST_MIN = 6, 0.8


def colour_histogram(colour: np.ndarray) -> np.ndarray:
    """The square root of a colour thumbnail's normalised histogram (float32 [HIST_LEVELS ** 3]): the dot
    product of two is their Bhattacharyya coefficient, 1 for the same colours in any arrangement."""
    c = colour.reshape(-1, 3).astype(np.int32) * HIST_LEVELS // 256
    h = np.bincount((c[:, 0] * HIST_LEVELS + c[:, 1]) * HIST_LEVELS + c[:, 2], minlength=HIST_LEVELS ** 3)
    return np.sqrt(h / h.sum()).astype(np.float32)


def _fitted(width: int, height: int) -> tuple[int, int]:
    """The size of a photo fitted within SIDE x SIDE, as Image.thumbnail makes it."""
    scale = min(1.0, SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def fingerprint(image: Image.Image, *, keypoints: bool = True) -> Fingerprint:
    """The fingerprint of a decoded, upright photo (reduced decodes are fine, down to DECODE_SIDE a side);
    keypoints False: the hashes and thumbnail alone (under 1 ms), what indexing takes."""
    colour = np.asarray(image.convert("RGB").resize((COLOUR, COLOUR), Image.Resampling.BOX), np.uint8)
    grey = image.convert("L")
    square = grey.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    phash = _phashes(np.asarray(square.resize((32, 32), Image.Resampling.LANCZOS), np.float64))
    dhash = _dhashes(square)
    thumb = np.asarray(square.resize((THUMB, THUMB), Image.Resampling.BILINEAR), np.uint8)
    if not keypoints:
        return Fingerprint(*_fitted(*grey.size), phash, dhash, thumb, colour)
    import cv2

    grey.thumbnail((SIDE, SIDE), Image.Resampling.BILINEAR, reducing_gap=3.0)
    g = np.asarray(grey)
    orb = cv2.ORB_create(nfeatures=FEATURES, edgeThreshold=15, patchSize=31, fastThreshold=10)
    try:
        found, desc = orb.detectAndCompute(g, None)
    except cv2.error as exc:
        raise FingerprintError(f"ORB failed: {exc}") from exc
    if desc is None:
        points, desc = np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    else:
        points = np.array([kp.pt for kp in found], np.float32).reshape(-1, 2)
    return Fingerprint(g.shape[1], g.shape[0], phash, dhash, thumb, colour, points, np.asarray(desc, np.uint8))


@dataclass(frozen=True)
class Evidence:
    """Why two photos are copies: the reason and what was measured."""

    # what changed, one or more of REASONS joined by " + " (e.g. "resized + re-encoded"), or "same bytes"
    reason: str
    hash_distance: int | None = None  # pHash bits that differ, at the best rotation
    inliers: int | None = None  # ORB matches that agree with the fitted transform
    correlation: float | None = None  # of the contained image and its region in the other
    rotation: int = 0  # degrees (counter-clockwise) that turn the first photo into the second
    # "copy", or "similar": the same scene (a burst, a second shot, the same item recoloured), not a copy
    kind: str = "copy"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1)  # bits set in each byte


def hash_distance(a: Fingerprint, b: Fingerprint) -> tuple[int, int, int]:
    """(pHash distance, dHash distance, rotation index) at the rotation of a that best matches b upright."""
    ph = _POPCOUNT[a.phash ^ b.phash[0]].sum(1)  # [4]: one per rotation
    dh = _POPCOUNT[a.dhash ^ b.dhash[0]].sum(1)
    k = int(np.lexsort((dh, ph))[0])  # the least pHash distance, then dHash (then the first rotation)
    return int(ph[k]), int(dh[k]), k


def _same_shape(fa: dict[str, Any], fb: dict[str, Any]) -> bool:
    wa, ha, wb, hb = fa.get("width"), fa.get("height"), fb.get("width"), fb.get("height")
    return bool(wa and ha and wb and hb) and (wa, ha) in ((wb, hb), (hb, wb))


def compare(a: Fingerprint, b: Fingerprint, facts_a: dict[str, Any] | None = None,
            facts_b: dict[str, Any] | None = None) -> Evidence | None:
    """Evidence that a and b are the same picture (kind "copy") or the same scene (kind "similar"), or None. facts: the photos' catalog rows (width,
    height, format) to name the change; the verdict itself comes from the pixels. Both need keypoints
    unless the whole pictures settle it (see whole_picture and geometric)."""
    return whole_picture(a, b, facts_a, facts_b) or geometric(a, b, facts_a, facts_b)


def _normalised(x: np.ndarray) -> np.ndarray:
    """Colour pixels [n, 3] with each channel at zero mean and unit spread (+8: a flat channel's noise is
    not stretched)."""
    x = x.astype(np.float32).reshape(-1, 3)
    return (x - x.mean(0)) / (x.std(0) + 8)


def _differing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Which of two aligned colour pictures' pixels differ once each is normalised (bool [n])."""
    return np.sqrt(((_normalised(a) - _normalised(b)) ** 2).sum(-1)) > COLOUR_DELTA


def colour_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The share of pixels where two aligned colour thumbnails (or the same pixels of each, [n, 3]) differ,
    after each channel of each is brought to zero mean and unit spread (so a brightness or contrast edit is
    no difference)."""
    return float(_differing(a, b).mean())


def _colour_edited(a: np.ndarray, b: np.ndarray, spread: bool) -> bool:
    """Whether aligned colour pixels ([..., 3]) that agree once normalised differ in a channel's mean or
    (spread) its spread: brightness, contrast, colour balance. A fitted picture's pixels are blurred by the
    fit: means only."""
    agree = ~_differing(a, b)
    if agree.sum() < 16:
        return False
    x, y = a.astype(np.float32).reshape(-1, 3)[agree], b.astype(np.float32).reshape(-1, 3)[agree]
    shift = float(np.abs(x.mean(0) - y.mean(0)).max())
    change = float(np.abs(np.log((x.std(0) + 4) / (y.std(0) + 4))).max()) if spread else 0.0
    return shift > COLOUR_SHIFT or change > SPREAD_CHANGE


def _grey_residual(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| per pixel of two aligned grey pictures, each brought to zero mean and unit spread (+8: a flat
    picture's noise is not stretched), flattened: what differs beyond brightness and contrast."""
    x, y = a.astype(np.float32).ravel(), b.astype(np.float32).ravel()
    return np.abs((x - x.mean()) / (x.std() + 8) - (y - y.mean()) / (y.std() + 8))


def _overlaid(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two aligned grey thumbnails differ, once normalised, on a small part: text or a logo drawn
    over the picture (resampling and recompression leave no such pixels at this size)."""
    return float((_grey_residual(a, b) > OVERLAY_DELTA).mean()) >= OVERLAID_AREA


def _border_added(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether one of two aligned grey thumbnails has a flat edge (trim_box) that the other lacks even at
    LOOSE_EDGE (so a row just flat enough in one and not in the other after recompression is no border)."""
    for x, y in ((a, b), (b, a)):
        (t, bo, le, r), (lt, lbo, lle, lr) = trim_box(x), trim_box(y, LOOSE_EDGE)
        if max(t - lt, lbo - bo, le - lle, lr - r) >= BORDER_PX:
            return True
    return False


def _named(first: list[str], a: np.ndarray, b: np.ndarray, facts_a: dict[str, Any], facts_b: dict[str, Any],
           fallback: str, grey: tuple[np.ndarray, np.ndarray] | None = None) -> str:
    """The reason: the geometric change found (first), then the format, colour and overlay changes seen on
    the aligned colour pixels a and b and (whole pictures) grey thumbnails; fallback when none shows. A
    fitted picture's pixels (no grey) are blurred by the fit: no spread, and its misfit would pass for an
    overlay."""
    found = list(first)
    fmt_a, fmt_b = facts_a.get("format"), facts_b.get("format")
    if fmt_a and fmt_b and fmt_a != fmt_b:
        found.append("re-encoded")
    if _colour_edited(a, b, spread=grey is not None):
        found.append("colour edited")
    elif grey is not None and _overlaid(*grey):
        found.append("overlaid")
    return " + ".join(found or [fallback])


def whole_picture(a: Fingerprint, b: Fingerprint, facts_a: dict[str, Any] | None = None,
                  facts_b: dict[str, Any] | None = None) -> Evidence | None:
    """Evidence from the hashes and thumbnails alone (a resize, recompression, format change, turn by 90
    degrees or colour edit of the whole picture), or None: then only geometric can tell."""
    fa, fb = facts_a or {}, facts_b or {}
    ph, dh, k = hash_distance(a, b)
    hashes = ph <= PHASH_MAX and dh <= DHASH_MAX or ph <= PHASH_LOOSE and _zncc(
        np.rot90(a.thumb, k), b.thumb, drop=OVERLAY_SHARE) >= THUMB_CORRELATION
    turned = np.rot90(a.colour, k)
    if hashes and colour_difference(turned, b.colour) <= COLOUR_DIFFER_MAX:
        grey = np.rot90(a.thumb, k), b.thumb
        if _border_added(*grey):  # a thin frame or letterbox (the size changed with it): no overlay
            first, grey = ["rotated", "bordered"] if k else ["bordered"], None
        elif k:
            first = ["rotated"]
        else:
            first = ["resized"] if not _same_shape(fa, fb) and fa.get("width") and fb.get("width") else []
        reason = _named(first, turned, b.colour, fa, fb, "recompressed", grey)
        return Evidence(reason, hash_distance=ph, rotation=90 * k)
    return None


def geometric(a: Fingerprint, b: Fingerprint, facts_a: dict[str, Any] | None = None,
              facts_b: dict[str, Any] | None = None) -> Evidence | None:
    """Evidence that one picture lies inside the other (a crop, border, overlay or rotation), from both
    fingerprints' keypoints (ValueError if either has none taken)."""
    import cv2
    import faiss

    if a.points is None or a.descriptors is None or b.points is None or b.descriptors is None:
        raise ValueError("geometric verification needs both fingerprints' keypoints")
    ph = hash_distance(a, b)[0]
    if len(a.descriptors) < MIN_MATCHES or len(b.descriptors) < MIN_MATCHES:
        return None
    # each of a's descriptors' two nearest in b (FAISS's Hamming search: 3x OpenCV's matcher, same distances)
    dist, nearest = faiss.knn_hamming(a.descriptors, b.descriptors, 2)
    good = np.flatnonzero(dist[:, 0] < _RATIO * dist[:, 1])  # Lowe's ratio test
    if len(good) < MIN_MATCHES:
        return None
    src, dst = a.points[good], b.points[nearest[good, 0]]
    m, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0,
                                          maxIters=2000, confidence=0.995)
    if m is None:
        return None
    inliers = int(mask.sum())
    if inliers < MIN_INLIERS or inliers < MIN_INLIER_RATIO * len(good):
        return None
    # the same scene from here on: many keypoints agree on one motion. Only the checks below make it a copy;
    # a pair that fails them is a look-alike (a burst, a second shot, the same item in another colour)
    scene = Evidence("same scene", hash_distance=ph, inliers=inliers, kind="similar")
    angle, scale = math.degrees(math.atan2(m[1, 0], m[0, 0])), math.hypot(m[0, 0], m[1, 0])
    if not SCALES[0] <= scale <= SCALES[1]:
        return scene
    quarter = round(angle / 90)
    if abs(angle - 90 * quarter) > ANGLE_TOLERANCE:
        return scene
    a_to_b = np.vstack([m, [0, 0, 1]])
    if _inside(a_to_b, a, b):
        inner, outer, t = a, b, a_to_b
    elif _inside(np.linalg.inv(a_to_b), b, a):
        inner, outer, t = b, a, np.linalg.inv(a_to_b)
    else:
        return scene  # overlapping but neither inside the other: another shot of the scene
    scale2 = abs(np.linalg.det(t[:2, :2]))  # area of inner, in outer's pixels, per inner pixel
    covered = inner.width * inner.height * scale2 / (outer.width * outer.height)
    corr = _correlation(inner, outer, t)
    placed = _placed_colour(inner, outer, t)
    # the whole picture drawn over the whole other fits as well as the whole-picture check's thumbnails do
    limit = COLOUR_DIFFER_MAX if covered >= CROPPED_BELOW else COLOUR_DIFFER_PLACED
    if corr < MIN_CORRELATION or placed is None or colour_difference(*placed[:2]) > limit:
        return scene  # in place, but what is there differs: the subject moved, another item, recoloured
    # image y points down, so atan2 above turned clockwise on screen; report counter-clockwise degrees
    rotation = (-90 * quarter) % 360
    first = ["rotated"] if rotation else []
    outside = placed[2]  # a frame around the picture: flat, however thin (a crop's margin is rarely flat)
    if outside is not None and float(outside.std(0).max()) < BORDER_SPREAD:
        first.append("bordered")
    elif covered < CROPPED_BELOW:
        first.append("cropped")
    inner_facts, outer_facts = (facts_a or {}, facts_b or {}) if inner is a else (facts_b or {}, facts_a or {})
    reason = _named(first, placed[1], placed[0], inner_facts, outer_facts, "overlaid")
    return Evidence(reason, hash_distance=ph, inliers=inliers, correlation=round(corr, 4), rotation=rotation)


def _corners(f: Fingerprint) -> np.ndarray:
    return np.array([[0, 0, 1], [f.width, 0, 1], [0, f.height, 1], [f.width, f.height, 1]], np.float64).T


def _inside(t: np.ndarray, inner: Fingerprint, outer: Fingerprint) -> bool:
    xy = (t @ _corners(inner))[:2]
    tol = CONTAIN_TOLERANCE * max(outer.width, outer.height)
    return bool((xy[0] >= -tol).all() and (xy[0] <= outer.width + tol).all()
                and (xy[1] >= -tol).all() and (xy[1] <= outer.height + tol).all())


def _correlation(inner: Fingerprint, outer: Fingerprint, t: np.ndarray) -> float:
    """Correlation of outer's thumbnail with inner's, drawn where t maps it (in outer's frame, so the
    contained image is the one scaled down, blurred first so that it is not aliased)."""
    import cv2

    to_px = np.diag([inner.width / THUMB, inner.height / THUMB, 1.0])
    to_thumb = np.diag([THUMB / outer.width, THUMB / outer.height, 1.0])
    m = (to_thumb @ t @ to_px)[:2]  # inner thumb pixel -> outer thumb pixel
    shrink = math.sqrt(abs(float(np.linalg.det(m[:, :2]))))
    src = cv2.GaussianBlur(inner.thumb.astype(np.float32), (0, 0), max(0.5 / shrink, 0.3))
    drawn = cv2.warpAffine(src, m, (THUMB, THUMB), flags=cv2.INTER_LINEAR)
    valid = cv2.warpAffine(np.ones((THUMB, THUMB), np.float32), m, (THUMB, THUMB), flags=cv2.INTER_LINEAR,
                           borderValue=0) > 0.99
    if valid.sum() < THUMB * THUMB // 8:
        return 0.0
    return _zncc(outer.thumb[valid], drawn[valid])


def _placed_colour(inner: Fingerprint, outer: Fingerprint,
                   t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(outer's colour pixels where t draws inner, inner's drawn there, outer's pixels well outside it or
    None), [n, 3] each; None when too little of inner lands on outer to judge."""
    import cv2

    to_px = np.diag([inner.width / COLOUR, inner.height / COLOUR, 1.0])
    to_thumb = np.diag([COLOUR / outer.width, COLOUR / outer.height, 1.0])
    m = (to_thumb @ t @ to_px)[:2]
    shrink = math.sqrt(abs(float(np.linalg.det(m[:, :2]))))
    src = cv2.GaussianBlur(inner.colour.astype(np.float32), (0, 0), max(0.5 / shrink, 0.5))
    drawn = cv2.warpAffine(src, m, (COLOUR, COLOUR), flags=cv2.INTER_LINEAR)
    # a pixel's worth of misfit at the edges and in textures is not a difference: both blurred alike, the
    # edge of the drawn region left out
    there = cv2.GaussianBlur(outer.colour.astype(np.float32), (0, 0), 0.5)
    valid = cv2.warpAffine(np.ones((COLOUR, COLOUR), np.float32), m, (COLOUR, COLOUR), flags=cv2.INTER_LINEAR,
                           borderValue=0) > 0.99
    footprint = valid
    valid = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if valid.sum() < COLOUR * COLOUR // 8:
        return None
    outside = ~cv2.dilate(footprint.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return there[valid], drawn[valid], outer.colour[outside].astype(np.float32) if outside.sum() >= 8 else None


def _zncc(x: np.ndarray, y: np.ndarray, drop: float = 0.0) -> float:
    """Zero-mean normalised correlation: 1 for the same picture under any brightness and contrast. drop:
    the share of pixels that differ most (once normalised) left out, so that text or a logo over a small
    part of a flat picture does not hide that the rest is the same."""
    if drop > 0:
        residual = _grey_residual(x, y)
        keep = residual <= np.quantile(residual, 1.0 - drop)
        x, y = x.ravel()[keep], y.ravel()[keep]
    x, y = x.astype(np.float32).ravel(), y.astype(np.float32).ravel()
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0
