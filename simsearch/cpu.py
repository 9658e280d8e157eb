"""What this machine's processor can do fast: the instruction sets that decide a model's precision.

Read, never guessed from a model name: Linux's /proc/cpuinfo flags, and OpenVINO's own report of the
precisions its CPU plugin runs natively (it knows AMX and AVX512_BF16 on every platform it supports).
"""

from __future__ import annotations

import functools
from pathlib import Path

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.cache
def flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them; empty where they cannot be read (another system)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


@functools.cache
def openvino_capabilities() -> frozenset[str]:
    """OpenVINO's CPU plugin's optimisation capabilities (e.g. FP32, BF16, INT8); empty without OpenVINO."""
    try:
        import openvino as ov

        return frozenset(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # not installed, or no CPU plugin: nothing is fast beyond FP32
        return frozenset()


def has_bf16() -> bool:
    """Native BF16 arithmetic (AVX512_BF16 or AMX): where OpenVINO runs a model in BF16, not emulates it."""
    return "BF16" in openvino_capabilities()


def has_int8() -> bool:
    """INT8 dot products (VNNI or AMX), without which an INT8 model is no faster than FP32."""
    return bool(flags() & INT8_FLAGS)
