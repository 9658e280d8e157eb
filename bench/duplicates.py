"""Duplicates: precision and recall per transform, and time and memory at scale. Prints; asserts nothing.

Quality: a near-duplicate set made from Corel-1k (tests/nearcopies.py: resizes, JPEG q20-50, crops of
60-90% off-centre, rotations by 90 degrees, borders, watermarks, brightness/contrast, PNG/WebP/HEIC,
screenshot-like copies; burst pairs of one scene, and Corel's own same-class photos as hard negatives),
indexed with the full Inception V2 with seeded random weights (tests/modules.py), then judged by, in one
run: simsearch's old rule (cosine >= 0.95, linked transitively), simsearch's verified groups, and the
perceptual hashes people use today, imagehash's phash and dhash at imagededup's default threshold (a
Hamming distance <= 10), pair by pair as imagededup reports them, and czkawka's Python binding (its groups,
at similarity levels 5 and 15). A pair counts as found when the method links the two photos (for a
grouping method: the two are in one group); precision is over every pair a method links.

Scale: a catalog of N synthetic photos (clustered vectors, so each has about ten close neighbours, and
fingerprints drawn from real photos, so every candidate pair is really verified), timed in a child
process for its peak memory.

    pip install imagehash czkawka                    # the others, for the bench only
    python bench/duplicates.py                       # quality, ~3 minutes
    python bench/duplicates.py --scale 10000 100000  # add the timing rows
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402

import simsearch  # noqa: E402
from simsearch.duplicates import UnionFind, Verifier  # noqa: E402
from tests.nearcopies import TRANSFORMS, make_set  # noqa: E402

COREL = ROOT.parent / "shared" / "data" / "corel1k" / "images"


def linked_by_groups(groups: list[set[str]]) -> set[frozenset[str]]:
    return {frozenset(p) for g in groups for p in itertools.combinations(sorted(g), 2)}


def old_rule(store: simsearch.Store, threshold: float) -> set[frozenset[str]]:
    links = UnionFind()
    for same in store.catalog.same_content():
        for other in same[1:]:
            links.join(same[0], other)
    for a, b, _ in store.collection.close_pairs(threshold):
        for i, j in zip(a.tolist(), b.tolist()):
            links.join(i, j)
    recs = store.catalog.records(store.catalog.vector_ids())
    return linked_by_groups([{recs[i]["path"] for i in ids} for ids in links.groups().values()])


def hash_pairs(paths: list[str], kind: str, threshold: int = 10) -> set[frozenset[str]]:
    import imagehash
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    fn = imagehash.phash if kind == "phash" else imagehash.dhash
    bits = np.stack([fn(Image.open(p)).hash.ravel() for p in paths])  # [N, 64] bool
    packed = np.packbits(bits, axis=1)
    out: set[frozenset[str]] = set()
    table = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1)
    for i in range(len(paths)):
        d = table[np.bitwise_xor(packed[i + 1 :], packed[i])].sum(1)
        out |= {frozenset((paths[i], paths[i + 1 + j])) for j in np.flatnonzero(d <= threshold)}
    return out


def czkawka_pairs(folder: Path, level: int) -> set[frozenset[str]]:
    """czkawka's own grouping (its Python binding: gradient hash, 8x8) at a similarity level (0-50, bits)."""
    from czkawka import ImageSimilarity

    finder = ImageSimilarity()
    finder.set_directories([folder])
    finder.set_similarity(level)
    return linked_by_groups([{str(p) for p in g} for g in finder.find_similar()])


# the reason a copy made by each transform of tests/nearcopies.py should carry (among others)
EXPECTED = {"resize": "resized", "jpeg": "recompressed", "crop": "cropped", "rotate90": "rotated",
            "border": "bordered", "watermark": "overlaid", "brightness": "colour edited", "reencode": "re-encoded",
            "screenshot": "resized"}


def judge(name: str, linked: set[frozenset[str]], truth: dict[frozenset[str], str]) -> dict[str, float]:
    """Recall per transform (original, copy) and precision over every linked pair (same family = true)."""
    def family(path: str) -> str:  # o0003_crop0.jpg goes with o0003.jpg; any other photo is its own
        name = Path(path).stem
        return name.split("_")[0] if name.startswith("o") else name

    per: dict[str, list[bool]] = defaultdict(list)
    for pair, t in truth.items():
        per[t].append(pair in linked)
    good = sum(1 for p in linked if len({family(x) for x in p}) == 1)
    row = {t: float(np.mean(v)) for t, v in sorted(per.items())}
    row["recall"] = float(np.mean([x for v in per.values() for x in v]))
    row["precision"] = good / len(linked) if linked else 1.0
    row["linked"] = len(linked)
    return row


def quality(args: argparse.Namespace, work: Path) -> None:
    from tests import modules

    photos = sorted(COREL.glob("*.jpg"))
    if not photos:
        sys.exit(f"Corel-1k not found at {COREL} (../shared beside the checkout)")
    folder = work / "set"
    t = time.perf_counter()
    ns = make_set(photos, folder, originals=args.originals, bursts=args.bursts, others=args.others, seed=args.seed,
                  recolour=args.recoloured)
    module = Path(args.module) if args.module else modules.build_tf1_hub_module(work / "inception_v2", modules.inception_v2)
    print(f"set: {args.originals} originals x {len(TRANSFORMS)} transforms, {args.bursts} burst pairs, "
          f"{args.others} other photos, {args.recoloured} photos beside their centre recoloured ({time.perf_counter() - t:.0f} s to make, module {module})")
    with simsearch.open(work / "store", model=module, create=True) as store:
        t = time.perf_counter()
        r = store.index(folder)
        print(f"indexed {r.added} photos in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        groups = store.duplicates()
        verified_s = time.perf_counter() - t
        alike = [{m.path for m in g.members} for g in store.duplicates(similar=True)]
        path_of = {m.id: m.path for g in groups for m in g.members}
        reasons = {frozenset((path_of[p["a"]], path_of[p["b"]])): p["reason"] for g in groups for p in g.pairs}
        methods = {"cosine >= 0.95 (old)": old_rule(store, 0.95),
                   "simsearch verified": linked_by_groups([{m.path for m in g.members} for g in groups])}
    paths = sorted(str(p) for p in folder.iterdir())
    for kind in ("phash", "dhash"):
        methods[f"imagehash {kind} <= 10"] = hash_pairs(paths, kind)
    try:
        for level in (5, 15):  # czkawka's "high" similarity and the binding's "moderately similar"
            methods[f"czkawka level {level}"] = czkawka_pairs(folder, level)
    except ImportError:
        print("czkawka not installed (pip install czkawka): its rows are left out")
    truth = {frozenset((o, c)): t for o, c, t in ns.copies}
    bursts = {frozenset(p) for p in ns.bursts}
    recoloured = {frozenset(p) for p in ns.recoloured}
    print(f"duplicates (verified) took {verified_s:.1f} s for {len(paths)} photos\n")
    rows = {name: judge(name, linked, truth) for name, linked in methods.items()}
    cols = list(TRANSFORMS) + ["recall", "precision", "linked"]
    print("| method | " + " | ".join(cols) + " | bursts merged | recoloured merged |")
    print("|---" * (len(cols) + 3) + "|")
    for name, row in rows.items():
        cells = [str(row[c]) if c == "linked" else f"{row[c]:.3f}" if c in ("recall", "precision") else f"{row[c]:.2f}"
                 for c in cols]
        print(f"| {name} | " + " | ".join(cells) + f" | {len(bursts & methods[name])}/{len(bursts)} "
              f"| {len(recoloured & methods[name])}/{len(recoloured)} |")
    named: dict[str, list[bool]] = defaultdict(list)
    for pair, t in truth.items():
        if pair in reasons:  # a copy verified directly against its original (not only through the group)
            named[t].append(EXPECTED[t] in reasons[pair].split(" + "))
    together = sum(any(set(pair) <= g for g in alike) for pair in bursts)
    strays = [g for g in alike if not any(set(pair) <= g for pair in bursts | recoloured)]
    one = sum(len({Path(p).stem.split("_")[0] for p in g}) == 1 for g in strays)  # o0003.jpg, o0003_crop0.jpg
    print(f"\nlook-alikes (duplicates --similar): {together}/{len(bursts)} burst pairs and "
          f"{sum(any(set(p) <= g for g in alike) for p in recoloured)}/{len(recoloured)} recoloured pairs in one "
          f"group; {len(alike)} groups, {len(strays)} holding neither: {one} an original with copies the copy "
          f"checks missed, {len(strays) - one} other photos")
    print("\nsimsearch's reason names the transform (of the copies verified against their original):")
    print("| " + " | ".join(named) + " |\n" + "|---" * len(named) + "|")
    print("| " + " | ".join(f"{np.mean(v):.2f} ({len(v)})" for v in named.values()) + " |")
    said: dict[str, Counter[str]] = defaultdict(Counter)
    for pair, t in truth.items():
        if pair in reasons:
            said[t][reasons[pair]] += 1
    print("every reason given, per transform:")
    for t, counts in said.items():
        print(f"  {t}: " + ", ".join(f"{r} x{n}" for r, n in counts.most_common()))


def _own_parts(fp: bytes, colour_from: bytes, rng: np.random.Generator) -> bytes:
    """A pooled fingerprint with hashes of its own (random), so that photos sharing a pooled one are not
    all hash candidates of each other (every candidate then comes from the embedding or the colours and goes
    on to ORB), and the colour thumbnail of another pooled photo, so that its colour neighbours are mostly
    photos with other keypoints, as in a real library."""
    from dataclasses import replace

    from simsearch.verify import Fingerprint

    f = Fingerprint.from_bytes(fp)
    phash, dhash = rng.integers(0, 256, (2, 4, 8), dtype=np.uint8)
    return replace(f, phash=phash, dhash=dhash, colour=Fingerprint.from_bytes(colour_from).colour).to_bytes()


def _colour_of(i: int, pool: int) -> int:
    """The pooled photo whose colours photo i takes: never its own keypoints' photo, and never the same for
    two photos with the same keypoints (that pair would be the same picture, a copy, in every part)."""
    return (i % pool + 1 + (i // pool) % (pool - 1)) % pool


def setup_child(n: int, folder: Path, pool_file: Path) -> None:
    """In a child process: a catalog of n synthetic photos, written in bulk."""
    from datetime import datetime

    from sqlalchemy import insert, text

    from simsearch.catalog import FingerprintRecord, ImageRecord, VectorRecord
    from simsearch.verify import phashes

    rng = np.random.default_rng(0)
    pool = json.loads(pool_file.read_text())
    dim = 1024  # as Inception V2's
    embedder = simsearch.CallableEmbedder(lambda x: np.ones((len(x), dim), np.float32), name="trivial",
                                          input_size=(32, 32))
    store = simsearch.open(folder / "store", model=embedder, create=True)
    from PIL import Image

    (folder / "one").mkdir()
    Image.new("RGB", (64, 48), (90, 120, 200)).save(folder / "one" / "first.png")
    store.index(folder / "one")  # records the model and the folder; the rest is written in bulk below
    centres = rng.standard_normal((n // 10 + 1, dim)).astype(np.float32)
    t = time.perf_counter()
    with store.catalog.engine.begin() as conn:  # written in bulk: the catalog's own writes are issue 15
        for s in range(0, n - 1, 10_000):
            ids = range(s + 2, min(n, s + 10_000) + 1)
            vec = centres[np.array(ids) // 10] + 0.3 * rng.standard_normal((len(ids), dim)).astype(np.float32)
            vec /= np.linalg.norm(vec, axis=1, keepdims=True)
            conn.execute(insert(ImageRecord), [
                {"id": i, "path": f"/photos/{i:07d}.jpg", "size": 1, "mtime_ns": 1, "sha256": f"{i:064x}", "width": 640,
                 "height": 480, "format": "JPEG", "indexed_at": datetime(2026, 1, 1), "status": "ok"} for i in ids])
            conn.execute(insert(VectorRecord), [{"image_id": i, "data": v.tobytes()} for i, v in zip(ids, vec)])
            fps = [_own_parts(bytes.fromhex(pool[i % len(pool)]), bytes.fromhex(pool[_colour_of(i, len(pool))]), rng)
                   for i in ids]
            conn.execute(insert(FingerprintRecord), [{"sha256": f"{i:064x}", "phash": phashes(fp), "data": fp}
                                                     for i, fp in zip(ids, fps)])
        conn.execute(text("UPDATE meta SET value = '1000000' WHERE key = 'vectors_version'"))
    store.close()
    print(json.dumps({"setup_s": round(time.perf_counter() - t, 1)}))


def run_child(folder: Path) -> None:
    """In a fresh child process: one timed duplicates run over the catalog setup_child wrote."""
    embedder = simsearch.CallableEmbedder(lambda x: np.ones((len(x), 1024), np.float32), name="trivial",
                                          input_size=(32, 32))
    store = simsearch.open(folder / "store", model=embedder)
    _ = store.collection.vector_index  # the FAISS index, rebuilt from the catalog, before the timed run
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    checked = 0
    original = Verifier.check

    def counting(self: Verifier, pairs: list, records: dict) -> list:  # type: ignore[type-arg]
        nonlocal checked
        checked += len(pairs)
        return original(self, pairs, records)

    Verifier.check = counting  # type: ignore[method-assign]
    t = time.perf_counter()
    groups = store.duplicates()
    took = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"duplicates_s": round(took, 1), "groups": len(groups),
                      "peak_rss_mb": round(rss / 1024), "rss_before_mb": round(rss0 / 1024),
                      "candidates": checked}))


def scale(sizes: list[int], work: Path) -> None:
    from simsearch.images import load_photo
    from simsearch.verify import fingerprint

    pool = [fingerprint(load_photo(str(p), (224, 224))[2]).to_bytes().hex() for p in sorted(COREL.glob("*.jpg"))[:300]]
    pool_file = work / "pool.json"
    pool_file.write_text(json.dumps(pool))
    print("\n| photos | duplicates | peak RSS | groups | pairs verified |\n|---|---|---|---|---|")
    for n in sizes:
        folder = Path(tempfile.mkdtemp(dir=work))
        r: dict = {}  # type: ignore[type-arg]
        for child in (["setup", str(n), str(folder), str(pool_file)], ["run", "0", str(folder), ""]):
            out = subprocess.run([sys.executable, __file__, "--child", *child], check=False, capture_output=True,
                                 text=True)
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            r |= json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {n:,} | {r['duplicates_s']} s | {r['peak_rss_mb']} MB (before: {r['rss_before_mb']} MB) | {r['groups']} "
              f"| {r['candidates']:,} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--originals", type=int, default=100)
    ap.add_argument("--bursts", type=int, default=50)
    ap.add_argument("--others", type=int, default=300)
    ap.add_argument("--recoloured", type=int, default=50, help="hard negatives: a photo and its centre recoloured")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--module", help="an Inception V2 module folder already built (else built here, ~1 min)")
    ap.add_argument("--scale", type=int, nargs="*", default=[], help="photo counts for the timing rows")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        what, n, folder, pool = args.child
        setup_child(int(n), Path(folder), Path(pool)) if what == "setup" else run_child(Path(folder))
        return
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_quality:
            quality(args, Path(tmp))
        if args.scale:
            scale(args.scale, Path(tmp))


if __name__ == "__main__":
    main()
