"""How fast is indexing, and where does the time go? Prints figures; asserts nothing.

On one folder of photos, side by side in one run:
- direct:     the module's signature called by hand on preprocessed batches (hub.load + signature)
- model-only: simsearch's embedder on the same preprocessed batches (adds uint8->float, checks, L2 norm)
- end-to-end: `Store.index(folder)` into a fresh store: read, hash, decode, embed, write
- decode:     ms per photo with and without reduced-size JPEG decoding (Pillow's draft)
- query:      probe file (not in the store) -> top-10, p50/p95

    python bench/index_speed.py ../shared/data/corel1k/images --model MODULE_DIR
    python bench/index_speed.py /path/to/large/photos          # builds the random-weight test module
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cached_fraction, describe, drop_from_page_cache  # noqa: E402

from simsearch.config import Settings  # noqa: E402
from simsearch.embedder import HubEmbedder, import_tensorflow  # noqa: E402
from simsearch.store import Store  # noqa: E402
from simsearch.formats import find_images  # noqa: E402
from simsearch.images import load_image  # noqa: E402


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def decode_ms(files: list[Path], size: tuple[int, int], draft: bool) -> float:
    from PIL import Image

    original = Image.Image.draft
    if not draft:
        Image.Image.draft = lambda self, mode, size: None  # type: ignore[method-assign]
        from PIL import JpegImagePlugin

        jpeg_draft = JpegImagePlugin.JpegImageFile.draft
        JpegImagePlugin.JpegImageFile.draft = lambda self, mode, size: None  # type: ignore[method-assign]
    try:
        t = time.perf_counter()
        for f in files:
            load_image(f, size)
        return (time.perf_counter() - t) / len(files) * 1000
    finally:
        Image.Image.draft = original  # type: ignore[method-assign]
        if not draft:
            JpegImagePlugin.JpegImageFile.draft = jpeg_draft  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", help="TF-Hub handle; default: build the seeded random Inception V2 test module")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=Settings().workers)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of direct, model-only, end-to-end")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--cache", choices=["cold", "warm"], default="cold",
                        help="cold: the photos' pages are dropped from the page cache before each end-to-end round")
    args = parser.parse_args()
    print(describe())

    files = list(find_images(args.folder))
    tmp = Path(tempfile.mkdtemp(prefix="simsearch-bench-"))
    try:
        model = args.model
        if model is None:
            from tests.modules import build_tf1_hub_module, inception_v2

            model = str(build_tf1_hub_module(tmp / "inception_v2", inception_v2))
            print("model: full Inception V2 with SEEDED RANDOM weights (tests/modules.py)")
        tf, hub = import_tensorflow()
        embedder = HubEmbedder(model, batch_size=args.batch_size)
        size = embedder.spec.input_size
        print(f"folder: {args.folder} ({len(files)} images), model {embedder.spec.handle}, "
              f"batch {args.batch_size}, decode workers {args.workers}, cores {os.cpu_count()}")

        pixels = np.stack([load_image(f, size)[0] for f in files])
        floats = pixels.astype(np.float32) / 255.0
        sig = hub.load(embedder.spec.handle).signatures["image_feature_vector"]
        batches = [floats[i : i + args.batch_size] for i in range(0, len(floats), args.batch_size)]
        embedder.embed(pixels[: args.batch_size])  # warm both paths up
        sig(images=tf.constant(batches[0]))

        direct_s, ours_s, e2e_rates, reports, cached = [], [], [], [], []
        for r in range(args.rounds):  # interleaved, so machine noise hits all three alike
            t = time.perf_counter()
            for b in batches:
                sig(images=tf.constant(b))["default"].numpy()
            direct_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            embedder.embed(pixels)
            ours_s.append(time.perf_counter() - t)
            store = Store(tmp / f"store{r}", model=embedder, create=True,
                          settings=Settings(batch_size=args.batch_size, workers=args.workers))
            if args.cache == "cold":
                drop_from_page_cache(files)
            cached.append(cached_fraction(files))
            report = store.index(args.folder)
            e2e_rates.append(rate(report.added, report.seconds))
            reports.append(report)
        direct = rate(len(files), statistics.median(direct_s))
        model_only = rate(len(files), statistics.median(ours_s))
        # the median round itself (the lower middle one when rounds are even): its rate and its stages
        middle = sorted(range(len(e2e_rates)), key=e2e_rates.__getitem__)[(len(e2e_rates) - 1) // 2]
        e2e, report = e2e_rates[middle], reports[middle]

        probes = tmp / "probes"
        probes.mkdir()
        latencies = []
        for i, f in enumerate(files[: args.queries]):
            probe = shutil.copy(f, probes / f"{i}{f.suffix}")
            os.utime(probe, ns=(1, 1))  # not the indexed file: the query decodes and embeds it
            t = time.perf_counter()
            store.query(probe, k=10)
            latencies.append((time.perf_counter() - t) * 1000)
        store.close()

        sample = files[: min(len(files), 60)]
        with_draft, without_draft = decode_ms(sample, size, True), decode_ms(sample, size, False)

        print(f"{'direct module call':<24} {direct:8.1f} images/s")
        print(f"{'model-only (simsearch)':<24} {model_only:8.1f} images/s   ratio to direct {model_only / direct:.3f}")
        print(f"{'end-to-end index':<24} {e2e:8.1f} images/s   ratio to model-only {e2e / model_only:.3f}"
              f"   (rounds: {', '.join(f'{x:.1f}' for x in e2e_rates)}; round {middle + 1} is the median)")
        print(f"{'  stage seconds':<24} {report.timings}  (round {middle + 1}; decode summed over {args.workers} "
              f"workers)")
        shown = ", ".join("unknown (no fincore)" if c is None else f"{c:.0%}" for c in cached)
        print(f"{'  photos in page cache':<24} {shown} at the start of each round ({args.cache})")
        print(f"{'decode per photo':<24} {with_draft:8.1f} ms with draft, {without_draft:.1f} ms without "
              f"(x{without_draft / with_draft:.1f})")
        lat = np.array(latencies)
        print(f"{'query file -> top-10':<24} p50 {np.percentile(lat, 50):.1f} ms, p95 {np.percentile(lat, 95):.1f} ms "
              f"({len(lat)} probes)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
