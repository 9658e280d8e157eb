"""Where the compiled model runs: the choice of provider or device, with and without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from simsearch.cli import main
from simsearch.devices import onnxruntime_device, onnxruntime_providers, openvino_device
from simsearch.embedder import load_embedder
from simsearch.errors import ModelError

from .conftest import photo

CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]  # what the onnxruntime wheel lists
WITH_CUDA = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]  # onnxruntime-gpu


def test_onnxruntime_takes_cuda_when_installed_and_the_cpu_otherwise() -> None:
    assert onnxruntime_providers("auto", WITH_CUDA) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnxruntime_providers("gpu", WITH_CUDA) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnxruntime_providers("auto", CPU_ONLY) == ["CPUExecutionProvider"]
    assert onnxruntime_providers("cpu", WITH_CUDA) == ["CPUExecutionProvider"]  # never looks
    with pytest.raises(ModelError, match=r"no GPU provider .*simsearch\[gpu\]"):
        onnxruntime_providers("gpu", CPU_ONLY)


def test_a_cuda_provider_that_does_not_start_is_the_cpu_for_auto_and_an_error_for_gpu() -> None:
    """ONNX Runtime drops a CUDA provider that cannot start (no driver) with only a log line."""
    assert onnxruntime_device("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == "gpu"
    assert onnxruntime_device("auto", ["CPUExecutionProvider"]) == "cpu"
    with pytest.raises(ModelError, match="could not start its GPU provider"):
        onnxruntime_device("gpu", ["CPUExecutionProvider"])


def test_openvino_takes_its_gpu_for_fp32_only() -> None:
    assert openvino_device("auto", ["CPU", "GPU.1", "GPU.0"]) == "GPU.0"
    assert openvino_device("auto", ["CPU"]) == "CPU"
    assert openvino_device("cpu", ["CPU", "GPU"]) == "CPU"
    assert openvino_device("auto", ["CPU", "GPU"], precision="bf16") == "CPU"  # chosen for the CPU's arithmetic
    with pytest.raises(ModelError, match="runs on the CPU"):
        openvino_device("gpu", ["CPU", "GPU"], precision="int8")
    with pytest.raises(ModelError, match="OpenVINO lists no GPU"):
        openvino_device("gpu", ["CPU"])


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_on_this_machine_auto_runs_where_it_can_and_gpu_says_what_is_missing(runtime: str,
                                                                            tiny_module: Path) -> None:
    import onnxruntime
    import openvino

    has_gpu = ("CUDAExecutionProvider" in onnxruntime.get_available_providers() if runtime == "onnxruntime"
               else any(d.startswith("GPU") for d in openvino.Core().available_devices))
    emb = load_embedder(tiny_module, runtime=runtime, device="auto")
    assert emb.device == ("gpu" if has_gpu else "cpu")
    assert load_embedder(tiny_module, runtime=runtime, device="cpu").device == "cpu"
    if not has_gpu:
        with pytest.raises(ModelError, match="--device gpu"):
            load_embedder(tiny_module, runtime=runtime, device="gpu")


def test_the_cli_refuses_a_gpu_it_does_not_have(tmp_path: Path, tiny_module: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has ONNX Runtime's CUDA provider: the refusal cannot be seen here")
    photo(tmp_path / "photos" / "a.jpg", seed=1)
    r = CliRunner().invoke(main, ["index", str(tmp_path / "photos"), "--store", str(tmp_path / "s"), "--model",
                                  str(tiny_module), "--runtime", "onnxruntime", "--device", "gpu"])
    assert r.exit_code != 0 and "--device gpu" in r.output and "Traceback" not in r.output
