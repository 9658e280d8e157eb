"""Where should the model run? TensorFlow, the compiled FP32 model on ONNX Runtime and OpenVINO, and
INT8, side by side in one run. Prints figures; asserts nothing.

For each: batch-32 images/s and batch-1 latency (p50) on corel1k photos, load time and peak RSS of a
fresh process that loads the model and embeds, and the minimum cosine to TensorFlow's vectors
(INT8: also to FP32, and the top-10 overlap and mAP on corel1k's 100 queries against its 900 photos).
Then the cold CLI: `simsearch query NEW.jpg` on an indexed store against `python -c "import
tensorflow"`, each in fresh processes, interleaved; and `simsearch index` of corel1k per runtime.

    python bench/runtime.py                          # the random-weight Inception V2 test module
    python bench/runtime.py --model MODULE_DIR --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COREL = ROOT.parent / "shared" / "data" / "corel1k"
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402

# One fresh process per measurement: load time and peak RSS are the process's own.
_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np
kind, handle, store, files, out = sys.argv[1:6]
from simsearch.images import load_image
if kind == "int8":
    from pathlib import Path
    from simsearch.quantize import open_int8
    sha = json.loads((Path(store) / "model-int8" / "meta.json").read_text())["sha256"]
    emb = open_int8(Path(store) / "model-int8", handle, sha256=sha)
else:
    from simsearch.embedder import load_embedder
    emb = load_embedder(handle, runtime=kind)
load_s = time.perf_counter() - t0
x = np.stack([load_image(f, emb.spec.input_size)[0] for f in json.loads(files)])
emb.embed(x[:32])  # warm-up
rates = []
for _ in range(3):
    t = time.perf_counter(); emb.embed(x[:64]); rates.append(64 / (time.perf_counter() - t))
lat = []
for i in range(30):
    t = time.perf_counter(); emb.embed(x[i:i + 1]); lat.append(time.perf_counter() - t)
np.save(out, emb.embed(x))
print(json.dumps({"load_s": load_s, "rate": float(np.median(rates)), "b1_ms": float(np.median(lat)) * 1000,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "runtime": emb.spec.runtime}))
"""


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("tensorflow", "onnxruntime", "openvino", "nncf", "tf2onnx"))


def run_timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Wall seconds and peak RSS (MB, from wait4: this process's own) of one fresh process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return wall, usage.ru_maxrss / 1024, subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())


def store_vectors(store: Path) -> dict[str, np.ndarray]:
    import simsearch

    with simsearch.open(store, create=False) as s:
        dim = int(s.stats().dim)
        ids = {r["id"]: r["path"] for r in (s.get(int(i)) for i in s.catalog.vector_ids())}
        return {ids[int(i)]: v for chunk_ids, vecs in s.catalog.iter_vectors(dim) for i, v in zip(chunk_ids, vecs)}


def top10_overlap(a: dict[str, np.ndarray], b: dict[str, np.ndarray], queries: list[str], db: list[str]) -> float:
    def top(vecs: dict[str, np.ndarray]) -> list[set[str]]:
        d = np.stack([vecs[p] for p in db])
        return [set(np.array(db)[np.argsort(-(d @ vecs[q]))[:10]]) for q in queries]

    return float(np.mean([len(x & y) / 10 for x, y in zip(top(a), top(b))]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="module folder [default: build the random-weight Inception V2]")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not (COREL / "images").is_dir():
        sys.exit(f"needs {COREL} (../shared beside the checkout)")
    work = Path(tempfile.mkdtemp(prefix="simsearch-bench-runtime-"))
    env = {**os.environ, "SIMSEARCH_CACHE_DIR": str(work / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(ROOT)}
    model = args.model
    if model is None:
        model = str(work / "inception_v2")
        subprocess.run([sys.executable, str(ROOT / "tests" / "modules.py"), model], check=True, env=env,
                       capture_output=True)
    print(describe())
    print(f"{versions()}; OMP/ORT/OpenVINO threads: their defaults (one per core)")
    print(f"model: {model}{' (seeded random weights)' if args.model is None else ''}\n")

    rows = list(csv.DictReader((COREL / "labels.csv").open()))
    db = [str((COREL / r["file"]).resolve()) for r in rows if r["split"] == "db"]
    queries = [str((COREL / r["file"]).resolve()) for r in rows if r["split"] == "query"]
    sample = json.dumps(queries[:64])

    # index corel1k once per precision (this also compiles the model and makes the INT8 model)
    simsearch_cli = [sys.executable, "-m", "simsearch"]
    index_rates: dict[str, list[float]] = {}
    stores = {}
    for kind, extra in (("tensorflow", ["--runtime", "tensorflow"]), ("onnxruntime", ["--runtime", "onnxruntime"]),
                        ("openvino", ["--runtime", "openvino"]), ("int8", ["--precision", "int8"])):
        stores[kind] = work / f"store-{kind}"
        _, _, done = run_timed([*simsearch_cli, "index", str(COREL / "images"), "--store", str(stores[kind]),
                                "--model", model, *extra], env)
        if done.returncode:
            sys.exit(done.stderr)
        found = re.search(r"\(([\d.]+) images/s after loading the model\)", done.stdout)
        index_rates[kind] = [float(found.group(1))] if found else []

    # the embedders, each in fresh processes, rounds interleaved
    results: dict[str, list[dict[str, float]]] = {k: [] for k in stores}
    for r in range(args.rounds):
        for kind in stores:
            out = work / f"{kind}-{r}.npy"
            _, _, done = run_timed([sys.executable, "-c", _CHILD, kind, model, str(stores[kind]), sample, str(out)], env)
            if done.returncode:
                sys.exit(done.stderr)
            results[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
    vectors = {k: np.load(work / f"{k}-0.npy") for k in stores}

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float((a * b).sum(axis=1).min())

    tf = statistics.median(x["rate"] for x in results["tensorflow"])
    tf_b1 = statistics.median(x["b1_ms"] for x in results["tensorflow"])
    fp32_best = max(("onnxruntime", "openvino"), key=lambda k: statistics.median(x["rate"] for x in results[k]))
    print(f"{'':<12} {'batch-32 img/s':>15} {'x TF':>6} {'batch-1 p50':>12} {'x TF':>6} {'load s':>7} "
          f"{'peak RSS':>9} {'min cos TF':>11} {'index img/s':>12}")
    for kind in stores:
        rate = statistics.median(x["rate"] for x in results[kind])
        b1 = statistics.median(x["b1_ms"] for x in results[kind])
        load = statistics.median(x["load_s"] for x in results[kind])
        rss = max(x["rss_mb"] for x in results[kind])
        ix = f"{index_rates[kind][0]:.1f}" if index_rates[kind] else "?"
        print(f"{kind:<12} {rate:>15.1f} {rate / tf:>6.2f} {b1:>10.1f}ms {b1 / tf_b1:>6.2f} {load:>7.2f} "
              f"{rss:>7.0f}MB {cosine(vectors[kind], vectors['tensorflow']):>11.7f} {ix:>12}")
    int8_rate = statistics.median(x["rate"] for x in results["int8"])
    fp32_rate = statistics.median(x["rate"] for x in results[fp32_best])
    print(f"\nINT8 vs FP32 ({fp32_best}): x{int8_rate / fp32_rate:.2f} throughput, min cosine "
          f"{cosine(vectors['int8'], vectors[fp32_best]):.4f} on 64 query photos")
    fp32_vecs, int8_vecs = store_vectors(stores["onnxruntime"]), store_vectors(stores["int8"])
    all_cos = np.array([float(fp32_vecs[p] @ int8_vecs[p]) for p in fp32_vecs])
    print(f"over all 1000 photos: min cosine {all_cos.min():.4f}, mean {all_cos.mean():.5f}; top-10 overlap "
          f"with FP32 (100 queries, 900 photos): {top10_overlap(fp32_vecs, int8_vecs, queries, db):.3f}")
    for kind in ("onnxruntime", "int8"):
        done = subprocess.run([*simsearch_cli, "eval", str(COREL / "labels.csv"), "--store", str(stores[kind])],
                              capture_output=True, text=True, env=env)
        print(f"eval {kind}: {done.stdout.strip()}")

    # cold CLI: a new photo on an indexed store, against importing TensorFlow; fresh processes, interleaved
    probe = work / "new.jpg"
    shutil.copy(queries[0], probe)
    cold: dict[str, list[float]] = {"query": [], "import tensorflow": []}
    rss_query = 0.0
    for _ in range(3):
        wall, rss, done = run_timed([*simsearch_cli, "query", str(probe), "--store", str(stores["onnxruntime"])], env)
        assert done.returncode == 0, done.stderr
        cold["query"].append(wall)
        rss_query = max(rss_query, rss)
        wall, _, _ = run_timed([sys.executable, "-c", "import tensorflow"], env)
        cold["import tensorflow"].append(wall)
    q, imp = statistics.median(cold["query"]), statistics.median(cold["import tensorflow"])
    print(f"\ncold `simsearch query NEW.jpg` (onnxruntime): {q:.2f} s median of 3, peak RSS {rss_query:.0f} MB; "
          f"`python -c 'import tensorflow'`: {imp:.2f} s; ratio {q / imp:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
