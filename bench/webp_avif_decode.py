"""WebP and AVIF at model size: CPU per photo to the model's input, and what libwebp's scaled decode costs
in fidelity.

Pillow decodes WebP and AVIF only in full (no `draft`). libwebp itself can scale while it decodes; simsearch
calls it for WebP (simsearch.webp: no maintained binding exposes the option). AV1 has no reduced decode,
and an AVIF's embedded thumbnail would need libheif with an AV1 decoder, which the pillow-heif wheels do not
carry, so AVIF is decoded in full. On N 12 MP photos made from corel1k (4032x3024, bicubic), in one run, CPU
ms per photo from the file's bytes to the model's input:

- JPEG (quality 90) at reduced size (for scale);
- WebP (quality 85) in full by Pillow (as before), and scaled by libwebp (simsearch now);
- AVIF (quality 60) in full by Pillow's libavif;

and the cosine between the scaled and the full WebP inputs' vectors on the trained stand-in.

    python bench/webp_avif_decode.py --photos 20 --model ../shared/data/mobilenet_v2_trained
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

import simsearch.images as images  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COREL = ROOT.parent / "shared" / "data" / "corel1k" / "images"


def make_photos(n: int, folder: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {"jpg": [], "webp": [], "avif": []}
    for src in sorted(COREL.glob("*.jpg"))[:: max(1, 1000 // n)][:n]:
        big = Image.open(src).convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC)
        for ext, opts in (("jpg", {"quality": 90}), ("webp", {"quality": 85}), ("avif", {"quality": 60, "speed": 8})):
            path = folder / f"{src.stem}.{ext}"
            big.save(path, **opts)
            out[ext].append(path)
    return out


def through_simsearch(files: list[Path], size: tuple[int, int]) -> tuple[np.ndarray, float]:
    data = [f.read_bytes() for f in files]
    t = time.process_time()
    pixels = [images.load_photo(d, size, name=str(f))[0] for d, f in zip(data, files)]
    return np.stack(pixels), (time.process_time() - t) * 1000 / len(files)


def webp_in_full(files: list[Path], size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """As simsearch decoded WebP before: Pillow, in full (libwebp's scaling switched off for the run)."""
    scaled = images.scaled_decode
    images.scaled_decode = lambda data, at_least: None
    try:
        return through_simsearch(files, size)
    finally:
        images.scaled_decode = scaled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=20)
    ap.add_argument("--model", default=str(ROOT.parent / "shared" / "data" / "mobilenet_v2_trained"))
    args = ap.parse_args()
    print(describe())
    from simsearch.embedder import load_embedder

    embedder = load_embedder(args.model)
    size = embedder.spec.input_size
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        files = make_photos(args.photos, Path(tmp))
        print(f"{args.photos} photos of 4032x3024 as JPEG, WebP and AVIF, made in {time.perf_counter() - t:.0f} s")
        jpeg = through_simsearch(files["jpg"], size)
        full = webp_in_full(files["webp"], size)
        scaled = through_simsearch(files["webp"], size)
        avif = through_simsearch(files["avif"], size)
    print(f"CPU ms per photo to model input ({size[1]}x{size[0]}):")
    print(f"  JPEG at reduced size (simsearch)   {jpeg[1]:7.1f}")
    print(f"  WebP in full (Pillow, as before)   {full[1]:7.1f}")
    cos = np.sum(embedder.embed(scaled[0]) * embedder.embed(full[0]), axis=1)
    print(f"  WebP scaled by libwebp (simsearch) {scaled[1]:7.1f}  ({full[1] / scaled[1]:.2f}x less; cosine to "
          f"the full decode's vector min {cos.min():.4f}, mean {cos.mean():.4f})")
    print(f"  AVIF in full (simsearch, libavif)  {avif[1]:7.1f}")


if __name__ == "__main__":
    main()
