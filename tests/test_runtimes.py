"""The compiled runtimes: equal to TensorFlow, cached by content, and no TensorFlow at query time."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import simsearch
from simsearch.cli import main
from simsearch.embedder import HubEmbedder, load_embedder
from simsearch.errors import ModelError, ModelMismatchError
from simsearch.images import load_image

from . import modules
from .conftest import TINY_SIZE, photo

COMPILED = ("onnxruntime", "openvino")
MIN_COSINE = 0.99999


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())  # both sides are unit rows


def _real_photos(folder: Path, size: tuple[int, int], n: int = 24) -> np.ndarray:
    files = sorted(folder.glob("*.jpg"))[:n]
    assert len(files) == n
    return np.stack([load_image(f, size)[0] for f in files])


def _run_python(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter: what a user's next command starts from."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("runtime", COMPILED)
def test_compiled_tf2_saved_model_equals_tensorflow_on_real_photos(runtime: str, tf2_module: Path,
                                                                   corel_images: Path) -> None:
    compiled = load_embedder(tf2_module, runtime=runtime)
    assert not isinstance(compiled, HubEmbedder) and compiled.spec.runtime == runtime  # not a silent fallback
    reference = HubEmbedder(tf2_module)
    assert compiled.spec.fingerprint == reference.spec.fingerprint and compiled.spec.dim == reference.spec.dim
    x = _real_photos(corel_images, compiled.spec.input_size)
    assert _min_cosine(compiled.embed(x), reference.embed(x)) >= MIN_COSINE


@pytest.mark.slow
@pytest.mark.parametrize("runtime", COMPILED)
def test_compiled_inception_v2_hub_module_equals_tensorflow_on_real_photos(
        runtime: str, inception_module: Path, corel_images: Path) -> None:
    """The TF1 Hub format, full Inception V2 (its [-1, 1] scaling inside is part of what is compiled)."""
    compiled = load_embedder(inception_module, runtime=runtime)
    assert not isinstance(compiled, HubEmbedder) and compiled.spec.runtime == runtime
    reference = HubEmbedder(inception_module)
    x = _real_photos(corel_images, (224, 224), n=40)
    vectors = compiled.embed(x)
    assert _min_cosine(vectors, reference.embed(x)) >= MIN_COSINE
    np.testing.assert_allclose(compiled.embed(x[7:8])[0], vectors[7], atol=1e-5)  # batch-independent


def _store_with_photos(tmp_path: Path, module: Path, n: int = 8) -> tuple[Path, Path]:
    folder = tmp_path / "photos"
    for i in range(n):
        photo(folder / f"p{i}.jpg", seed=i)
    store = tmp_path / "store"
    r = CliRunner().invoke(main, ["index", str(folder), "--store", str(store), "--model", str(module)])
    assert r.exit_code == 0, r.output
    return folder, store


_QUERY_IN_A_NEW_PROCESS = """
import json, sys
from simsearch.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"exit": code, "tensorflow": "tensorflow" in sys.modules,
                  "onnxruntime": "onnxruntime" in sys.modules}), file=sys.stderr)
"""


def _cli_in_new_process(*args: str) -> tuple[dict[str, object], str]:
    done = _run_python(_QUERY_IN_A_NEW_PROCESS, *args)
    lines = done.stderr.strip().splitlines()
    return json.loads(lines[-1]), done.stdout + "\n".join(lines[:-1])


def test_a_query_in_a_fresh_process_never_imports_tensorflow(tmp_path: Path, tiny_module: Path) -> None:
    folder, store = _store_with_photos(tmp_path, tiny_module)
    probe = tmp_path / "probe.jpg"  # a copy, not the indexed path: the model must run
    shutil.copy(folder / "p5.jpg", probe)
    state, out = _cli_in_new_process("query", str(probe), "--store", str(store), "--json")
    assert state == {"exit": 0, "tensorflow": False, "onnxruntime": True}, out
    hits = json.loads(out[: out.rindex("]") + 1])
    assert hits[0]["path"] == str(folder / "p5.jpg") and hits[0]["score"] > 0.9999


def test_a_probe_that_is_not_an_image_fails_before_any_model_loads(tmp_path: Path, tiny_module: Path) -> None:
    _, store = _store_with_photos(tmp_path, tiny_module, n=3)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    state, out = _cli_in_new_process("query", str(bad), "--store", str(store))
    assert state == {"exit": 1, "tensorflow": False, "onnxruntime": False}, out
    assert "not an image" in out


def test_a_missing_model_folder_fails_before_tensorflow_is_imported(tmp_path: Path) -> None:
    done = _run_python("import sys\nfrom simsearch.embedder import load_embedder\n"
                       "try:\n    load_embedder(sys.argv[1])\nexcept Exception as exc:\n    print(exc)\n"
                       "print('tensorflow' in sys.modules)", str(tmp_path / "missing"))
    assert done.stdout.splitlines() == [f"model folder {tmp_path / 'missing'} does not exist "
                                        f"(expected an unpacked TF-Hub module)", "False"], done.stderr


def test_a_copied_or_moved_module_opens_the_store_and_another_module_is_refused(
        tmp_path: Path, tiny_module: Path) -> None:
    folder, store = _store_with_photos(tmp_path, tiny_module, n=4)
    copy = tmp_path / "elsewhere" / "tiny"
    shutil.copytree(tiny_module, copy)
    probe = (folder / "p2.jpg").read_bytes()
    with simsearch.open(store, model=copy, create=False) as s:
        hit = s.query(probe, k=1)[0]  # bytes: the copied module runs
        assert hit.path == str(folder / "p2.jpg") and hit.score > 0.9999
        assert s.stats().model == str(tiny_module)  # the store keeps the handle it was built with
    moved = tmp_path / "moved"
    copy.rename(moved)
    with simsearch.open(store, model=moved, create=False) as s:
        assert s.query(probe, k=1)[0].path == str(folder / "p2.jpg")

    other = modules.build_tf1_hub_module(tmp_path / "other", modules.tiny, TINY_SIZE, seed=1)
    with pytest.raises(ModelMismatchError, match="Vectors of different models cannot be mixed"):
        simsearch.open(store, model=other, create=False)


def test_a_store_made_before_fingerprints_learns_its_module_on_open(tmp_path: Path, tiny_module: Path) -> None:
    _, store = _store_with_photos(tmp_path, tiny_module, n=2)
    with simsearch.open(store, create=False) as s:
        fingerprint = s.stats().fingerprint
        assert fingerprint and fingerprint.startswith("sha256:")
        old = {k: v for k, v in s.catalog.get_meta("model").items() if k not in ("fingerprint", "precision")}
        s.catalog.set_meta(model=old)  # as an older simsearch wrote it
    with simsearch.open(store, create=False) as s:
        assert s.stats().fingerprint == fingerprint and s.stats().precision == "fp32"


def test_a_model_the_runtimes_cannot_run_falls_back_to_tensorflow_and_says_why(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    odd = modules.build_tf2_saved_model(tmp_path / "igamma", igamma=True)
    with caplog.at_level(logging.WARNING, logger="simsearch"):
        emb = load_embedder(odd, runtime="onnxruntime")
    assert isinstance(emb, HubEmbedder) and emb.spec.runtime == "tensorflow"
    assert any("running it on TensorFlow" in r.getMessage() and str(odd) in r.getMessage() for r in caplog.records)
    x = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    assert np.isfinite(emb.embed(x)).all()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="simsearch"):  # the next run does not try again
        assert isinstance(load_embedder(odd, runtime="onnxruntime"), HubEmbedder)
    messages = [r.getMessage() for r in caplog.records]
    assert not any("compiling" in m for m in messages), messages
    assert any("could not be compiled for onnxruntime" in m and "to try again" in m for m in messages), messages


def test_runtime_choice(tiny_module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(load_embedder(tiny_module, runtime="tensorflow"), HubEmbedder)
    monkeypatch.setenv("SIMSEARCH_RUNTIME", "openvino")
    assert load_embedder(tiny_module).spec.runtime == "openvino"
    with pytest.raises(ModelError, match="unknown runtime 'tpu'"):
        load_embedder(tiny_module, runtime="tpu")
    with pytest.raises(ValueError, match="runtime must be one of"):
        simsearch.Settings(runtime="tpu")


def test_a_model_server_that_never_answers_ends_within_the_bound(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_stay_silent() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_stay_silent, daemon=True)
    thread.start()
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub"))
    monkeypatch.setenv("SIMSEARCH_DOWNLOAD_TIMEOUT", "2")
    url = f"http://127.0.0.1:{server.getsockname()[1]}/google/imagenet/inception_v2/feature_vector/1"
    t0 = time.monotonic()
    try:
        with pytest.raises(ModelError) as info:
            load_embedder(url)
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
    elapsed = time.monotonic() - t0
    assert held, "the client never connected: the stall was not exercised"
    assert elapsed < 30, f"took {elapsed:.1f} s"
    assert f"cannot fetch model {url}: the server sent nothing for 2 s" in str(info.value)
    assert "SIMSEARCH_DOWNLOAD_TIMEOUT" in str(info.value)


def test_an_int8_store_is_calibrated_on_its_folder_and_never_mixes_with_fp32(tmp_path: Path,
                                                                            tiny_module: Path) -> None:
    folder = tmp_path / "photos"
    for i in range(30):
        photo(folder / f"p{i:02d}.jpg", seed=i)
    r = CliRunner().invoke(main, ["index", str(folder), "--store", str(tmp_path / "int8"), "--model",
                                  str(tiny_module), "--precision", "int8"])
    assert r.exit_code == 0, r.output
    assert "quantizing the model to int8 on 30 photos" in r.output
    meta = json.loads((tmp_path / "int8" / "model-int8" / "meta.json").read_text())
    assert meta["precision"] == "int8" and meta["calibration_photos"] == 24  # one in five held out to check
    probes = [(folder / f"p{i:02d}.jpg").read_bytes() for i in (3, 17, 29)]
    with simsearch.open(tmp_path / "int8", create=False) as s, \
            simsearch.open(tmp_path / "fp32", model=tiny_module, create=True) as ref:
        assert (s.stats().precision, s.stats().runtime) == ("int8", "openvino")
        assert s.embedder.spec.precision == "int8"
        ref.index(folder)
        for i, data in zip((3, 17, 29), probes):
            assert s.query(data, k=1)[0].path == str(folder / f"p{i:02d}.jpg")
            assert float(s.query_vector(data) @ ref.query_vector(data)) >= 0.99
    with pytest.raises(ModelMismatchError, match="precision fp32"):
        simsearch.open(tmp_path / "int8", settings=simsearch.Settings(precision="fp32"), create=False)
    weights = tmp_path / "int8" / "model-int8" / "model.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with simsearch.open(tmp_path / "int8", create=False) as s, \
            pytest.raises(ModelError, match="not the one this store was built with"):
        s.query(probes[0])


@pytest.mark.parametrize("runtime", COMPILED)
def test_compiled_embedders_give_each_thread_its_own_vectors(runtime: str, tiny_module: Path) -> None:
    """The server embeds uploads on several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    emb = load_embedder(tiny_module, runtime=runtime)
    images = np.random.default_rng(3).integers(0, 256, (8, *TINY_SIZE, 3), dtype=np.uint8)
    alone = [emb.embed(images[i : i + 1])[0] for i in range(len(images))]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda i: emb.embed(images[i % 8 : i % 8 + 1])[0], range(200)))
    for i, vec in enumerate(together):
        np.testing.assert_allclose(vec, alone[i % 8], atol=1e-6)


def test_a_store_built_from_the_url_queries_after_the_tfhub_cache_is_cleared(
        tmp_path: Path, tiny_module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TF-Hub cache in the temp folder (TFHUB_CACHE_DIR) may be cleared at reboot: the compiled model is
    found by the fingerprint the store recorded, without the module's files or a network."""
    import hashlib

    from simsearch.config import DEFAULT_MODEL

    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub"))
    downloaded = tmp_path / "hub" / hashlib.sha1(DEFAULT_MODEL.encode()).hexdigest()
    shutil.copytree(tiny_module, downloaded)  # as tensorflow-hub leaves a download
    folder = tmp_path / "photos"
    for i in range(4):
        photo(folder / f"p{i}.jpg", seed=i)
    with simsearch.open(tmp_path / "store", create=True) as s:
        s.index(folder)
        assert s.stats().model == DEFAULT_MODEL and s.stats().fingerprint.startswith("sha256:")
    shutil.rmtree(tmp_path / "hub")
    with simsearch.open(tmp_path / "store", create=False) as s:
        assert s.query((folder / "p1.jpg").read_bytes(), k=1)[0].path == str(folder / "p1.jpg")
        assert s.embedder.spec.runtime == "onnxruntime" and s.embedder.spec.handle == DEFAULT_MODEL
