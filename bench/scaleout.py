"""Indexing throughput: this process alone vs a Ray cluster of one and of two nodes. Prints figures; asserts nothing.

Each configuration indexes the same folder into a fresh store with the same model, in rounds
interleaved so machine noise hits all of them alike. Throughput counts the seconds after the driver
has loaded the model (`seconds - model_load`); the Ray runs include starting the actors (each loads the
model once), which is part of what Ray costs.

    python bench/scaleout.py ../shared/data/corel1k/images --model MODULE_DIR [--rounds 2]

The nodes are started with `ray start` on this machine (so two nodes share its cores: on one machine the
two-node figure measures overhead, not scaling). `ray stop --force` runs between configurations and
stops every Ray process on the machine.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402

from simsearch.distributed import RayOptions  # noqa: E402
from simsearch.store import Store  # noqa: E402

RAY = Path(sys.executable).with_name("ray")
PORT = "6391"


def ray_cli(*args: str) -> None:
    subprocess.run([str(RAY), *args], check=True, capture_output=True, timeout=180)


def start_cluster(nodes: int, cpus: int) -> str:
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # nodes joining, and this driver, present the head's token
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))  # `ray start --head` makes none itself
    ray_cli("stop", "--force")
    common = ["--num-cpus", str(cpus), "--object-store-memory", str(1 << 30), "--disable-usage-stats"]
    ray_cli("start", "--head", "--port", PORT, "--include-dashboard", "false", *common)
    for _ in range(nodes - 1):
        ray_cli("start", "--address", f"127.0.0.1:{PORT}", *common)
    return f"127.0.0.1:{PORT}"


def run(folder: Path, model: str, ray: RayOptions | None, shard_size: int) -> tuple[float, dict[str, float]]:
    store_dir = Path(tempfile.mkdtemp(prefix="scaleout-"))
    try:
        with Store(store_dir, model=model, create=True) as store:
            report = store.index(folder, ray=ray)
        busy = report.seconds - report.timings.get("model_load", 0.0)
        return report.added / busy, report.timings
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
        if ray is not None:
            import ray as ray_module

            ray_module.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--model", required=True, help="TF-Hub handle: URL or module folder")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs each Ray node offers")
    args = ap.parse_args()
    print(describe())
    n = sum(1 for _ in args.folder.rglob("*") if _.is_file())
    print(f"{n} files in {args.folder}; model {args.model}; {os.cpu_count()} cores; shards of {args.shard_size}")

    rates: dict[str, list[float]] = {"local": [], "ray, 1 node": [], "ray, 2 nodes": []}
    timings: dict[str, dict[str, float]] = {}
    for r in range(args.rounds):
        for name in rates:
            if name == "local":
                options = None
            else:
                nodes = 1 if "1 node" in name else 2
                options = RayOptions(address=start_cluster(nodes, args.cpus), shard_size=args.shard_size)
            t = time.perf_counter()
            rate, timings[name] = run(args.folder, args.model, options, args.shard_size)
            rates[name].append(rate)
            print(f"round {r + 1} {name:>13}: {rate:6.1f} images/s ({time.perf_counter() - t:.1f} s wall)", flush=True)
    ray_cli("stop", "--force")

    local = statistics.median(rates["local"])
    print("\nmedian images/s and ratio to the single-machine indexer:")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"  {name:>13}: {med:6.1f} images/s  x{med / local:.2f}   timings of the last round: {timings[name]}")
    one, two = statistics.median(rates["ray, 1 node"]), statistics.median(rates["ray, 2 nodes"])
    print(f"scaling 1 -> 2 nodes: x{two / one:.2f}")
    print(f"Ray's overhead per image on one node: {1000 / one - 1000 / local:+.1f} ms "
          f"({1000 / local:.1f} ms per image alone, {1000 / one:.1f} ms on Ray)")


if __name__ == "__main__":
    main()
