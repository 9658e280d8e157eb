"""A near-duplicate set made from real photos: the copies people meet, and pairs that only look alike.

Used by the duplicate tests and by bench/duplicates.py, so both judge the same transforms. Each copy is
made from an original with one transform; `burst` pairs are two shots of one scene (the camera moved by a
tenth of the frame, the subject moved too) made from a photo that is not itself in the set, so neither is
a copy of the other or of anything else.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

Transform = Callable[[Image.Image, np.random.Generator], tuple[Image.Image, str, dict]]


def _resize(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    s = rng.uniform(0.3, 0.7)
    return img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.LANCZOS), \
        "jpg", {"quality": 90}


def _jpeg(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    return img, "jpg", {"quality": int(rng.integers(20, 51))}


def _crop(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    f = rng.uniform(0.6, 0.9)  # of each side
    w, h = round(img.width * f), round(img.height * f)
    x, y = int(rng.integers(0, img.width - w + 1)), int(rng.integers(0, img.height - h + 1))
    return img.crop((x, y, x + w, y + h)), "jpg", {"quality": 90}


def _rotate(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    turn = [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270][rng.integers(3)]
    return img.transpose(turn), "jpg", {"quality": 90}


def _border(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    pad = round(min(img.size) * rng.uniform(0.05, 0.15))
    letterbox = bool(rng.integers(2))
    colour = (0, 0, 0) if letterbox else (255, 255, 255)
    size = (img.width, img.height + 2 * pad) if letterbox else (img.width + 2 * pad, img.height + 2 * pad)
    out = Image.new("RGB", size, colour)
    out.paste(img, (0 if letterbox else pad, pad))
    return out, "jpg", {"quality": 90}


def _watermark(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    out = img.copy()
    draw = ImageDraw.Draw(out)
    x, y = int(rng.integers(5, img.width // 3)), int(rng.integers(img.height // 2, img.height - 20))
    for dx in range(3):  # bold enough to see
        draw.text((x + dx, y), "(c) 2026 simsearch photos", fill=(255, 255, 255))
    return out, "jpg", {"quality": 90}


def _brightness(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    out = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    return ImageEnhance.Contrast(out).enhance(rng.uniform(0.7, 1.3)), "jpg", {"quality": 90}


def _reencode(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    ext = ["png", "webp", "heic"][rng.integers(3)]
    return img, ext, {"quality": 80} if ext != "png" else {}


def _screenshot(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    s = rng.uniform(0.4, 0.6)
    small = img.resize((round(img.width * s), round(img.height * s)), Image.Resampling.BILINEAR)
    return small.filter(ImageFilter.SHARPEN), "png", {}


TRANSFORMS: dict[str, Transform] = {
    "resize": _resize, "jpeg": _jpeg, "crop": _crop, "rotate90": _rotate, "border": _border,
    "watermark": _watermark, "brightness": _brightness, "reencode": _reencode, "screenshot": _screenshot,
}


def burst(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """Two shots of one scene: frames of 85% of each side, 10-15% apart, the subject (centre) moved."""
    w, h = round(img.width * 0.85), round(img.height * 0.85)
    shift = round(img.width * rng.uniform(0.10, 0.15))
    first = img.crop((0, 0, w, h))
    second = img.crop((shift, img.height - h, shift + w, img.height)).copy()
    box = (w // 3, h // 3, 2 * w // 3, 2 * h // 3)
    subject = second.crop(box)
    second.paste(subject, (box[0] + round(w * 0.12), box[1]))
    return first, ImageEnhance.Brightness(second).enhance(0.95)


def recoloured(img: Image.Image) -> Image.Image:
    """The same scene with its main object recoloured: the centre's hue turned by a third and its colour
    strengthened, layout, shapes and background kept (a gold motorbike where a silver one stood). Not a
    copy: what a catalogue of items shot in one pose looks like to grey hashes."""
    hsv = np.asarray(img.convert("HSV")).copy()
    h, w = hsv.shape[:2]
    centre = (slice(h // 5, 4 * h // 5), slice(w // 4, 3 * w // 4))
    hsv[centre + (0,)] = (hsv[centre + (0,)].astype(int) + 85) % 256
    hsv[centre + (1,)] = np.clip(hsv[centre + (1,)].astype(int) + 60, 0, 255)
    return Image.fromarray(hsv, "HSV").convert("RGB")


def save(img: Image.Image, path: Path, options: dict) -> None:
    if path.suffix == ".heic":
        import pillow_heif

        pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    img.save(buf, {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".heic": "HEIF"}[path.suffix], **options)
    path.write_bytes(buf.getvalue())


@dataclass(frozen=True)
class NearCopies:
    """Where the set was written and what it holds."""

    copies: list[tuple[str, str, str]]  # (original, copy, transform), paths
    bursts: list[tuple[str, str]]
    others: list[str]  # photos with no copy, the distractors
    recoloured: list[tuple[str, str]] = field(default_factory=list)  # (photo, its centre recoloured): not copies


def make_set(photos: list[Path], folder: Path, *, originals: int, per_transform: int = 1, bursts: int = 0,
             others: int = 0, seed: int = 0, transforms: list[str] | None = None, recolour: int = 0) -> NearCopies:
    """originals photos each get per_transform copies of every transform (or those named); bursts
    further photos give a burst pair each (the photo itself left out); others are copied as they are;
    recolour further photos give a pair each, the photo and its centre recoloured (not copies)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(photos))
    need = originals + bursts + others + recolour
    if need > len(photos):
        raise ValueError(f"{need} photos needed, {len(photos)} given")
    chosen = [photos[i] for i in order[:need]]
    folder.mkdir(parents=True, exist_ok=True)
    names = transforms or list(TRANSFORMS)
    copies: list[tuple[str, str, str]] = []
    for n, src in enumerate(chosen[:originals]):
        img = Image.open(src).convert("RGB")
        orig = folder / f"o{n:04d}.jpg"
        save(img, orig, {"quality": 95})
        for t in names:
            for r in range(per_transform):
                out, ext, options = TRANSFORMS[t](img, rng)
                path = folder / f"o{n:04d}_{t}{r}.{ext}"
                save(out, path, options)
                copies.append((str(orig), str(path), t))
    pairs: list[tuple[str, str]] = []
    for n, src in enumerate(chosen[originals : originals + bursts]):
        a, b = burst(Image.open(src).convert("RGB"), rng)
        pa, pb = folder / f"b{n:04d}_1.jpg", folder / f"b{n:04d}_2.jpg"
        save(a, pa, {"quality": 92})
        save(b, pb, {"quality": 92})
        pairs.append((str(pa), str(pb)))
    hard = []
    for n, src in enumerate(chosen[originals + bursts + others :]):
        img = Image.open(src).convert("RGB")
        pa, pb = folder / f"r{n:04d}_1.jpg", folder / f"r{n:04d}_2.jpg"
        save(img, pa, {"quality": 92})
        save(recoloured(img), pb, {"quality": 92})
        hard.append((str(pa), str(pb)))
    rest = []
    for n, src in enumerate(chosen[originals + bursts : originals + bursts + others]):
        path = folder / f"x{n:04d}.jpg"
        save(Image.open(src).convert("RGB"), path, {"quality": 95})
        rest.append(str(path))
    return NearCopies(copies, pairs, rest, hard)
