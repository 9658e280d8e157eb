"""Where a compiled model runs: a GPU when one is present and usable, else the CPU.

`auto` (the default) takes ONNX Runtime's CUDA provider when it is installed (the `gpu` extra:
onnxruntime-gpu in place of onnxruntime) and a session on it really starts, or OpenVINO's GPU device
when it lists one; otherwise the CPU, without a word. `gpu` insists: no usable GPU is an error that
says what to install. `cpu` never looks. BF16 and INT8 stores run on OpenVINO's CPU plugin, whose
arithmetic they were chosen for; a GPU runs FP32 stores.
"""

from __future__ import annotations

from collections.abc import Iterable

from .config import DEVICES
from .errors import ModelError

GPU_PROVIDERS = ("CUDAExecutionProvider",)
_INSTALL = ("pip install 'simsearch[gpu]' after pip uninstall onnxruntime (onnxruntime-gpu provides the same "
            "module), with an NVIDIA driver and CUDA 12")


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ModelError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    return device


def onnxruntime_providers(device: str, available: Iterable[str]) -> list[str]:
    """ONNX Runtime's providers for a device, best first, from those this installation has."""
    gpu = [p for p in GPU_PROVIDERS if p in set(available)]
    if check_device(device) == "cpu":
        return ["CPUExecutionProvider"]
    if device == "gpu" and not gpu:
        raise ModelError(f"--device gpu: this ONNX Runtime has no GPU provider ({_INSTALL})")
    return [*gpu, "CPUExecutionProvider"]


def onnxruntime_device(device: str, providers_in_use: list[str]) -> str:
    """"gpu" or "cpu": what a session really runs on (ONNX Runtime falls back to the CPU, with only a log
    line, when a CUDA provider cannot start: no driver, no device); --device gpu refuses that."""
    on_gpu = bool(providers_in_use) and providers_in_use[0] in GPU_PROVIDERS
    if device == "gpu" and not on_gpu:
        raise ModelError(f"--device gpu: ONNX Runtime could not start its GPU provider here (no NVIDIA driver "
                         f"or device visible?); it runs on {', '.join(providers_in_use) or 'nothing'}")
    return "gpu" if on_gpu else "cpu"


def openvino_device(device: str, available: Iterable[str], precision: str = "fp32") -> str:
    """OpenVINO's device name: its first GPU when asked for or present (FP32 only), else CPU."""
    gpus = sorted(d for d in available if d.startswith("GPU"))
    if check_device(device) == "cpu":
        return "CPU"
    if precision != "fp32":
        if device == "gpu":
            raise ModelError(f"--device gpu: a {precision} store runs on the CPU, whose arithmetic it was "
                             f"chosen for")
        return "CPU"
    if device == "gpu" and not gpus:
        raise ModelError("--device gpu: OpenVINO lists no GPU here (Intel GPUs need their compute runtime; "
                         "for NVIDIA GPUs use --runtime onnxruntime with the gpu extra)")
    return gpus[0] if gpus else "CPU"
