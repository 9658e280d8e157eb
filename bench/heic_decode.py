"""HEIC at model size: CPU per photo to model input from the embedded thumbnail against the full decode,
and how close the vectors of the two are on a trained network.

Builds N 12-megapixel HEIC photos as phones write them (libheif's `heif-enc -q 80 -t 320`: a 320x240
thumbnail beside the image; Debian package libheif-examples) from corel1k photos enlarged to 4032x3024
(bicubic: softer than a phone's own 12 MP, which a 320-pixel thumbnail hides anyway), then, in one run:

- CPU ms per photo from the file's bytes to the model's input (simsearch.images.load_photo), with the
  thumbnail (what simsearch does) and with a full decode (the thumbnail ignored: as before);
- the cosine between the two inputs' vectors on the trained stand-in (mobilenet_v2_trained), min and mean;
- the same two figures for the same photos as 12 MP JPEGs (quality 90), decoded at reduced size by libjpeg
  against in full: the policy JPEGs have had all along, for scale.

    python bench/heic_decode.py --photos 20 --model ../shared/data/mobilenet_v2_trained
"""

from __future__ import annotations

import argparse
import subprocess
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


def make_photos(n: int, folder: Path) -> tuple[list[Path], list[Path]]:
    """(HEIC, JPEG) files of the same n photos."""
    heics, jpegs = [], []
    for src in sorted(COREL.glob("*.jpg"))[:: max(1, 1000 // n)][:n]:
        png = folder / f"{src.stem}.png"
        big = Image.open(src).convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC)
        big.save(png)
        big.save(folder / f"{src.stem}.jpg", quality=90)
        heic = folder / f"{src.stem}.heic"
        subprocess.run(["heif-enc", "-q", "80", "-t", "320", "-o", str(heic), str(png)], check=True,
                       capture_output=True)
        png.unlink()
        heics.append(heic)
        jpegs.append(folder / f"{src.stem}.jpg")
    return heics, jpegs


def to_inputs(files: list[Path], size: tuple[int, int], scaled: bool) -> tuple[np.ndarray, float]:
    """Model inputs and CPU ms per photo; scaled False switches the reduced decode off for the run."""
    formats = images.SCALED_DECODE
    images.SCALED_DECODE = formats if scaled else frozenset()
    try:
        data = [f.read_bytes() for f in files]
        t = time.process_time()
        pixels = [images.load_photo(d, size, name=str(f))[0] for d, f in zip(data, files)]
        return np.stack(pixels), (time.process_time() - t) * 1000 / len(files)
    finally:
        images.SCALED_DECODE = formats


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
        heics, jpegs = make_photos(args.photos, Path(tmp))
        print(f"{len(heics)} photos of 4032x3024, as HEIC with a 320x240 thumbnail and as JPEG, made in "
              f"{time.perf_counter() - t:.0f} s")
        rows = [(name, *to_inputs(files, size, scaled=True), *to_inputs(files, size, scaled=False))
                for name, files in (("HEIC from its thumbnail", heics), ("JPEG at reduced size", jpegs))]
    print(f"CPU to model input ({size[1]}x{size[0]}) and cosine to the full decode's vector "
          f"({embedder.spec.handle}):")
    for name, small, small_ms, full, full_ms in rows:
        cos = np.sum(embedder.embed(small) * embedder.embed(full), axis=1)
        print(f"  {name:<24} {small_ms:6.1f} ms/photo, full decode {full_ms:6.1f} ms/photo ({full_ms / small_ms:.0f}x); "
              f"cosine min {cos.min():.4f}, mean {cos.mean():.4f}")


if __name__ == "__main__":
    main()
