"""What a figure was measured on: every bench prints this first, since figures differ from one CPU to the next.

    python bench/machine.py
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

FLAGS = ("avx2", "fma", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
LIBRARIES = ("numpy", "faiss-cpu", "tensorflow", "onnxruntime", "openvino", "pillow", "sqlalchemy", "psycopg",
             "pyarrow", "ray")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
              "TF_NUM_INTEROP_THREADS")


def cpu() -> str:
    """Model name, cores this process may use, and the instruction-set flags the figures depend on."""
    flags = ""
    name = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        have = set(next(line for line in info.splitlines() if line.startswith("flags")).split())
        flags = " ".join(f for f in FLAGS if f in have)
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {usable} cores usable of {os.cpu_count()}, flags: {flags or 'none of ' + ' '.join(FLAGS)}"


def versions() -> str:
    """Installed versions, read from package metadata (importing TensorFlow alone would cost seconds)."""
    found = []
    for lib in LIBRARIES:
        try:
            found.append(f"{lib} {metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            continue
    return f"Python {platform.python_version()}; " + ", ".join(found)


def threads() -> str:
    """Thread settings: the environment's, and those of the libraries already loaded in this process."""
    parts = [f"{k}={os.environ[k]}" for k in THREAD_ENV if k in os.environ] or ["no thread variables set"]
    try:
        from threadpoolctl import threadpool_info

        parts += [f"{p['internal_api']} {p['num_threads']} threads" for p in threadpool_info()]
    except ImportError:
        pass
    return "; ".join(parts)


def drop_from_page_cache(files: list[Path]) -> None:
    """Ask the kernel to forget the files' cached pages (clean pages go; no root needed), so what follows
    reads from the disk as a first run would, not from memory an earlier step filled."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_fraction(files: list[Path]) -> float | None:
    """How much of the files is in the page cache (util-linux's fincore), or None where it cannot be told."""
    if not shutil.which("fincore"):
        return None
    resident = 0
    for start in range(0, len(files), 500):
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES",
                              *map(str, files[start : start + 500])], capture_output=True, text=True)
        if out.returncode != 0:
            return None
        resident += sum(int(x) for x in out.stdout.split())
    page = os.sysconf("SC_PAGE_SIZE")  # fincore counts whole pages
    total = sum(-(-f.stat().st_size // page) * page for f in files)
    return resident / total if total else None


def describe() -> str:
    return f"CPU: {cpu()}\nversions: {versions()}\nthreads: {threads()}"


if __name__ == "__main__":
    print(describe())
