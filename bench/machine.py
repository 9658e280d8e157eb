"""What a figure was measured on: every bench prints this first, since figures differ from one CPU to the next.

    python bench/machine.py
"""

from __future__ import annotations

import os
import platform
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


def describe() -> str:
    return f"CPU: {cpu()}\nversions: {versions()}\nthreads: {threads()}"


if __name__ == "__main__":
    print(describe())
