"""Which INT8 recipe, if any, keeps the neighbours? NNCF's post-training quantization variants side by
side on one compiled model, judged by the gate `--precision auto` applies (simsearch/precision.py:
minimum cosine >= 0.99 and top-10 overlap >= 0.95 against FP32), on photos held out of calibration.
Prints figures; asserts nothing. Judge on a trained network (random weights make every photo alike).

    python bench/int8_recipes.py                                   # the trained stand-in
    python bench/int8_recipes.py --model MODULE_DIR --calibration 300 --held-out 200
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402


def _speed(compiled: Any, x: np.ndarray, batch: int = 32) -> tuple[np.ndarray, float]:
    out = np.concatenate([compiled(x[i:i + batch])[0] for i in range(0, len(x), batch)])  # warm-up, vectors
    best = 0.0
    for _ in range(2):
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            compiled(x[i:i + batch])
        best = max(best, len(x) / (time.perf_counter() - t))
    return out.reshape(len(x), -1), best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(SHARED / "mobilenet_v2_trained"))
    ap.add_argument("--calibration", type=int, default=300)
    ap.add_argument("--held-out", type=int, default=200)
    args = ap.parse_args()

    import nncf
    import openvino as ov

    from simsearch.compiler import compile_module
    from simsearch.embedder import HubEmbedder
    from simsearch.images import load_image, to_model_input
    from simsearch.precision import GATE_MIN_COSINE, GATE_TOP10, fidelity
    from simsearch.runtimes import Variant

    print(describe())
    print(f"nncf {nncf.__version__}, openvino {ov.__version__}; model {args.model}")
    hub = HubEmbedder(args.model)
    compiled = compile_module(hub, Variant())
    files = sorted((SHARED / "corel1k" / "images").rglob("*.jpg"))
    held = files[::len(files) // args.held_out][:args.held_out]
    rest = [f for f in files if f not in set(held)]
    calib_files = rest[::max(1, len(rest) // args.calibration)][:args.calibration]
    size = hub.spec.input_size

    def inputs(paths: list[Path]) -> np.ndarray:
        return to_model_input(np.stack([load_image(p, size)[0] for p in paths]))

    x, calib = inputs(held), inputs(calib_files)
    print(f"{len(calib)} calibration photos, {len(x)} held out (corel1k)")
    core = ov.Core()
    fp32_model = core.read_model(str(compiled.path))
    reference, fp32_speed = _speed(core.compile_model(fp32_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), x)
    ops = list(fp32_model.get_ordered_ops())
    convs = [op.get_friendly_name() for op in ops if op.get_type_name() in ("Convolution", "GroupConvolution")]
    depthwise = [op.get_friendly_name() for op in ops if op.get_type_name() == "GroupConvolution"]
    stem_head = [convs[0], convs[-1]]
    adv = nncf.quantization.advanced_parameters.AdvancedQuantizationParameters
    recipes: dict[str, Callable[[list[np.ndarray]], dict[str, Any]]] = {
        "default (performance preset, fast bias correction)": lambda c: {},
        "mixed preset (asymmetric activations)": lambda c: {"preset": nncf.QuantizationPreset.MIXED},
        "full bias correction": lambda c: {"fast_bias_correction": False},
        "stem and head kept FP32": lambda c: {"ignored_scope": nncf.IgnoredScope(names=stem_head)},
        "depthwise layers kept FP32": lambda c: {"ignored_scope": nncf.IgnoredScope(names=depthwise)},
        "SmoothQuant alpha 0.5 (transformer model type)": lambda c: {
            "model_type": nncf.ModelType.TRANSFORMER,
            "advanced_parameters": adv(smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(convolution=0.5,
                                                                                              matmul=0.5))},
        "stem, head and depthwise FP32, mixed, full bias correction": lambda c: {
            "preset": nncf.QuantizationPreset.MIXED, "fast_bias_correction": False,
            "ignored_scope": nncf.IgnoredScope(names=[*stem_head, *depthwise])},
    }
    print(f"fp32: {fp32_speed:.1f} img/s (OpenVINO, batch 32)")
    print(f"gate: minimum cosine >= {GATE_MIN_COSINE}, top-10 overlap >= {GATE_TOP10}")
    logging.getLogger("nncf").setLevel(logging.ERROR)
    dataset = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
    for name, options in recipes.items():
        t = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                q = nncf.quantize(core.read_model(str(compiled.path)), dataset, subset_size=len(calib),
                                  **options(calib))
        except Exception as exc:  # a recipe this model or NNCF version refuses: say so, go on
            print(f"{name}: failed: {str(exc).splitlines()[0][:160]}")
            continue
        took = time.perf_counter() - t
        vectors, speed = _speed(core.compile_model(q, "CPU"), x)
        cos, overlap = fidelity(reference, vectors)
        verdict = "passes" if cos >= GATE_MIN_COSINE and overlap >= GATE_TOP10 else "fails"
        print(f"{name}: {speed:.1f} img/s (x{speed / fp32_speed:.2f}), min cosine {cos:.4f}, "
              f"top-10 overlap {overlap:.3f}: {verdict} (quantized in {took:.0f} s)")


if __name__ == "__main__":
    main()
