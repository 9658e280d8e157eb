"""A phone's library, end to end: how fast does `simsearch index` go, how near what the cores allow, and
against the script people write first? Prints figures; asserts nothing.

Builds a library from corel1k photos as phones write them: 12-megapixel JPEGs (4032x3024, quality 90,
EXIF orientation set on a third), 12-megapixel HEICs from libheif's `heif-enc -q 80 -t 320` (a 320x240
thumbnail inside, as iPhones write; x265 preset ultrafast to build it quickly; Debian package
libheif-examples) and a few PNG screenshots (1170x2532). Then, in one run, each in a fresh process with the compiled model already cached:
`simsearch index` at the default precision (auto) and at FP32, with the CPU per photo by stage, the
bound (cores / CPU per photo) and the share of it reached (the index report's `cpu`); and a naive
TF-Hub script on the same files (PIL open, resize to 224x224, one module call per photo).

    python bench/phone_library.py                      # the random-weight Inception V2, 40+40+8 photos
    python bench/phone_library.py --model ../shared/data/mobilenet_v2_trained --photos 60 --keep /tmp/lib
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
COREL = ROOT.parent / "shared" / "data" / "corel1k" / "images"
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402

_NAIVE = r"""
import sys, time
from pathlib import Path
import numpy as np, tensorflow as tf, tensorflow_hub as hub
from PIL import Image
import pillow_heif
pillow_heif.register_heif_opener()
module = hub.load(sys.argv[1], tags=set())
f = module.signatures["image_feature_vector"]
files = sorted(p for p in Path(sys.argv[2]).rglob("*") if p.is_file() and not p.name.startswith("."))
f(images=tf.zeros((1, 224, 224, 3)))
t = time.perf_counter()
for p in files:
    img = Image.open(p).convert("RGB").resize((224, 224))
    x = np.asarray(img, np.float32)[None] / 255.0
    f(images=tf.constant(x))
print(len(files) / (time.perf_counter() - t))
"""


def build(folder: Path, photos: int, screenshots: int) -> dict[str, int]:
    """The library, unless folder already holds it (--keep)."""
    if (folder / ".complete").exists():
        return json.loads((folder / ".complete").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(COREL.glob("*.jpg"))
    picked = sources[:: max(1, len(sources) // (2 * photos))][: 2 * photos]
    for i, src in enumerate(picked):
        big = Image.open(src).convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC)
        if i % 2 == 0:  # a JPEG as a camera app writes it; a third turned by EXIF orientation
            exif = Image.Exif()
            exif[0x0112] = 6 if i % 3 == 0 else 1
            exif[0x9003] = f"2024:0{1 + i % 9}:1{i % 10} 12:00:00"
            big.save(folder / f"IMG_{1000 + i}.JPG", quality=90, exif=exif)
        else:
            png = folder / f".tmp_{i}.png"
            big.save(png, compress_level=1)
            subprocess.run(["heif-enc", "-q", "80", "-t", "320", "-p", "preset=ultrafast", "-o", str(folder / f"IMG_{1000 + i}.HEIC"),
                            str(png)], check=True, capture_output=True)
            png.unlink()
    for i in range(screenshots):  # flat colours, text-like bars and a photo: what a screenshot holds
        shot = Image.new("RGB", (1170, 2532), (245, 245, 247))
        draw = ImageDraw.Draw(shot)
        for row in range(40):
            y = 300 + row * 50
            draw.rectangle((60, y, 60 + (row * 97 + i * 131) % 1000 + 50, y + 22), fill=(30 + i * 20, 30, 40))
        shot.paste(Image.open(sources[i * 7]).convert("RGB").resize((1050, 700)), (60, 2400 - 700))
        shot.save(folder / f"Screenshot_{i}.png")
    counts = {"jpeg": len(picked[::2]), "heic": len(picked[1::2]), "png": screenshots}
    (folder / ".complete").write_text(json.dumps(counts))
    return counts


def index(folder: Path, store: Path, model: str, env: dict[str, str], *extra: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "simsearch", "index", str(folder), "--store", str(store),
                           "--model", model, "--json", *extra], env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"simsearch index failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="module folder [default: build the random-weight Inception V2]")
    ap.add_argument("--photos", type=int, default=40, help="JPEGs, and as many HEICs")
    ap.add_argument("--screenshots", type=int, default=8)
    ap.add_argument("--keep", type=Path, help="build the library here and keep it for the next run")
    args = ap.parse_args()
    if not COREL.is_dir():
        sys.exit(f"needs {COREL} (../shared beside the checkout)")
    if shutil.which("heif-enc") is None:
        sys.exit("needs heif-enc: apt-get install libheif-examples")
    work = Path(tempfile.mkdtemp(prefix="simsearch-bench-phone-"))
    env = {**os.environ, "SIMSEARCH_CACHE_DIR": str(work / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(ROOT)}
    env.pop("SIMSEARCH_PRECISION", None)
    model = args.model
    if model is None:
        model = str(work / "inception_v2")
        subprocess.run([sys.executable, str(ROOT / "tests" / "modules.py"), model], check=True, env=env,
                       capture_output=True)
    print(describe())
    print(f"model: {model}{' (seeded random weights)' if args.model is None else ''}")
    library = args.keep or work / "library"
    t = time.perf_counter()
    counts = build(library, args.photos, args.screenshots)
    print(f"library: {counts} in {library} (built or found in {time.perf_counter() - t:.0f} s)")
    warm = work / "warm"
    warm.mkdir()
    shutil.copy(next(library.glob("*.JPG")), warm)
    index(warm, work / "warm-store", model, env, "--precision", "fp32")  # compiles the model, once

    print("\nsimsearch index, each a fresh process (the model's load and compile excluded from the rates):")
    for name, extra in (("default (auto)", ()), ("fp32", ("--precision", "fp32"))):
        store = work / f"store-{name.split()[0]}"
        report = index(library, store, model, env, *extra)
        cpu = report["cpu"]
        stats = json.loads(subprocess.run([sys.executable, "-m", "simsearch", "stats", "--store", str(store),
                                           "--json"], env=env, capture_output=True, text=True).stdout)
        trials = (stats.get("precision_choice") or {}).get("trials", [])
        print(f"  {name:15s} precision {stats['precision']}: {cpu['per_s']:.1f} img/s; CPU per photo: decode "
              f"{cpu['decode_ms']:.1f} ms, model {cpu['model_ms']:.1f} ms, other {cpu['other_ms']:.1f} ms; "
              f"bound {cpu['bound_per_s']:.1f} img/s on {cpu['cores']} cores, reached {cpu['of_bound']:.2f}")
        for trial in trials:
            print(f"    auto measured {trial}")
        if name.startswith("fp32"):
            fp32_rate = float(cpu["per_s"])
    naive = subprocess.run([sys.executable, "-c", _NAIVE, model, str(library)], env=env, capture_output=True,
                           text=True)
    if naive.returncode:
        print(f"  naive TF-Hub script failed: {naive.stderr.strip().splitlines()[-1]}")
    else:
        rate = float(naive.stdout.strip().splitlines()[-1])
        print(f"  naive TF-Hub script (PIL open, resize, one call a photo): {rate:.1f} img/s; "
              f"simsearch fp32 {fp32_rate / rate:.1f}x that")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
