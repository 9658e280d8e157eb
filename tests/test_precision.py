"""`--precision auto`: the fastest precision this CPU runs that passes the gate on the folder's own photos;
BF16 stores; a store opened where its precision's instructions are missing still answers."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import simsearch
from simsearch import CallableEmbedder, cpu
from simsearch import precision as precisions
from simsearch.cli import main
from simsearch.embedder import HubEmbedder
from simsearch.images import load_image
from simsearch.runtimes import CompiledModel, Variant

from .conftest import photo


def _lookup_embedder(table: dict[bytes, np.ndarray], noise: float, name: str) -> CallableEmbedder:
    """A model that answers from vectors computed beforehand (so it is faster than any network), plus
    seeded noise of the given size: a stand-in for a low-precision model, faithful or broken."""
    rng = np.random.default_rng(0)
    dim = len(next(iter(table.values())))

    def run(x: np.ndarray) -> np.ndarray:
        zero = np.zeros(dim, np.float32)  # the embedder's own probe of its output size
        found = np.stack([table.get(hashlib.sha1(img.tobytes()).digest(), zero) for img in x])
        return found + noise * rng.standard_normal((len(x), dim)).astype(np.float32)

    return CallableEmbedder(run, name=name, input_size=(224, 224))


def test_the_gate_keeps_fp32_against_a_faster_model_that_loses_the_neighbours(
        corel_images: Path, trained_embedder: HubEmbedder) -> None:
    """Judged on a trained network, where neighbours mean something: a broken low-precision model is
    refused however fast it is, and a faithful one that is faster is kept."""
    photos = np.stack([load_image(f, (224, 224))[0] for f in sorted(corel_images.glob("*.jpg"))[::20]])
    reference = trained_embedder.embed(photos)
    from simsearch.images import to_model_input

    inputs = to_model_input(photos)
    table = {hashlib.sha1(x.tobytes()).digest(): v for x, v in zip(inputs, reference)}
    spread = float(np.linalg.norm(reference, axis=1).mean()) / np.sqrt(reference.shape[1])
    broken = _lookup_embedder(table, noise=2.0 * spread, name="broken")
    faithful = _lookup_embedder(table, noise=0.001 * spread, name="faithful")

    refused = precisions.auto(photos, trained_embedder, {"int8": lambda: broken})
    assert refused.precision == "fp32" and refused.sample == len(photos) == 50
    (fp32, trial), = [refused.trials]
    assert fp32.precision == "fp32" and trial.precision == "int8" and not trial.passed
    assert trial.images_per_s > precisions.MIN_GAIN * fp32.images_per_s  # faster, and refused all the same
    assert trial.min_cosine < precisions.GATE_MIN_COSINE and "fails the gate" in trial.note

    kept = precisions.auto(photos, trained_embedder, {"int8": lambda: broken, "bf16": lambda: faithful})
    assert kept.precision == "bf16" and "passed the gate" in kept.reason
    bf16 = next(t for t in kept.trials if t.precision == "bf16")
    assert bf16.passed and bf16.min_cosine >= 0.99 and bf16.top10_overlap >= 0.95


def test_fidelity_counts_the_neighbours_each_photo_keeps() -> None:
    x = np.eye(12, dtype=np.float32) + 0.01
    assert precisions.fidelity(x, x) == (pytest.approx(1.0), 1.0)
    swapped = x[:, ::-1].copy()  # every vector elsewhere: nothing kept but the ranking of a symmetric set
    assert precisions.fidelity(x, swapped)[0] < 0.1


def _sample_folder(corel_images: Path, folder: Path, n: int) -> Path:
    folder.mkdir()
    for f in sorted(corel_images.glob("*.jpg"))[::1000 // n][:n]:
        (folder / f.name).symlink_to(f)
    return folder


@pytest.mark.slow
def test_an_auto_store_records_its_trials_and_keeps_what_the_rule_says(
        tmp_path: Path, corel_images: Path, trained_embedder: HubEmbedder) -> None:
    """On the trained stand-in, compiled: FP32 measured beside each precision this CPU runs fast; the
    precision kept is the fastest that passed the gate and gained at least MIN_GAIN, else FP32."""
    folder = _sample_folder(corel_images, tmp_path / "photos", 100)
    store = tmp_path / "store"
    r = CliRunner().invoke(main, ["index", str(folder), "--store", str(store), "--model",
                                  str(trained_embedder.spec.handle), "--precision", "auto"])
    assert r.exit_code == 0, r.output
    info = json.loads(CliRunner().invoke(main, ["stats", "--store", str(store), "--json"]).stdout)
    choice = info["precision_choice"]
    trials = {t["precision"]: t for t in choice["trials"]}
    assert choice["sample_photos"] == 100 and trials["fp32"]["images_per_s"] > 0
    assert ("bf16" in trials) == cpu.has_bf16() and ("int8" in trials) == cpu.has_int8()
    worth = [t for t in trials.values() if t["precision"] != "fp32" and t["passed"]
             and t["images_per_s"] >= precisions.MIN_GAIN * trials["fp32"]["images_per_s"]]
    expected = max(worth, key=lambda t: t["images_per_s"])["precision"] if worth else "fp32"
    assert info["precision"] == choice["chosen"] == expected
    for t in trials.values():
        assert "images_per_s" in t or t["note"].startswith("not available")  # measured, or why not
    text = CliRunner().invoke(main, ["stats", "--store", str(store)]).stdout
    assert f"{trials['fp32']['images_per_s']} img/s" in text
    with simsearch.open(store, create=False) as s:
        assert s.embedder.spec.precision == expected
        probe = sorted(folder.iterdir())[7]
        assert s.query(probe.read_bytes(), k=1)[0].path == str(probe)


def test_too_few_photos_to_judge_stay_fp32(tmp_path: Path, tiny_module: Path) -> None:
    folder = tmp_path / "photos"
    for i in range(12):
        photo(folder / f"p{i:02d}.jpg", seed=i)
    with simsearch.open(tmp_path / "store", model=tiny_module, settings=simsearch.Settings(precision="auto"),
                        create=True) as s:
        s.index(folder)
        info = s.stats()
    assert info.precision == "fp32" and "12 photos are too few" in info.precision_choice["reason"]


def test_a_bf16_store_opened_on_a_cpu_without_bf16_still_answers(tmp_path: Path, tiny_module: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "photos"
    for i in range(12):
        photo(folder / f"p{i:02d}.jpg", seed=i)
    r = CliRunner().invoke(main, ["index", str(folder), "--store", str(tmp_path / "bf16"), "--model",
                                  str(tiny_module), "--precision", "bf16"])
    assert r.exit_code == 0, r.output
    with simsearch.open(tmp_path / "bf16", create=False) as s:
        assert (s.stats().precision, s.stats().runtime) == ("bf16", "openvino")
        paths = [folder / "p03.jpg", folder / "p09.jpg"]
        made = {p: s.collection.vector(s.catalog.entry_for_path(str(p)).id) for p in paths}
    monkeypatch.setattr(cpu, "has_bf16", lambda: False)  # as on an AVX2-only machine
    with caplog.at_level(logging.WARNING), simsearch.open(tmp_path / "bf16", create=False) as s:
        for path, vector in made.items():
            assert s.query(path.read_bytes(), k=1)[0].path == str(path)
            assert float(s.query_vector(path.read_bytes()) @ vector) >= 0.99
        assert s.embedder.spec.precision == "bf16"  # the store's, run in FP32 here
    said = [r.message for r in caplog.records if "lacks" in r.message]
    assert len(said) == 1 and "running it in FP32" in said[0]


@pytest.fixture()
def trained_compiled(trained_embedder: HubEmbedder) -> tuple[CompiledModel, str]:
    """The trained stand-in compiled (ONNX, checked against TensorFlow; cached per session) and its handle."""
    from simsearch.compiler import compile_module

    return compile_module(trained_embedder, Variant()), str(trained_embedder.spec.handle)


@pytest.mark.skipif(not cpu.has_bf16(), reason="this CPU has no BF16 units (AVX512_BF16 or AMX): BF16 would run as FP32")
def test_bf16_keeps_every_trained_vector_within_the_gate(corel_images: Path,
                                                         trained_compiled: tuple[CompiledModel, str]) -> None:
    """BF16 with the first depthwise convolution in FP32 (simsearch.runtimes): on the trained stand-in every
    corel1k photo of 100 within cosine 0.99 of FP32 and the neighbours kept; all-BF16 left one at 0.987."""
    from simsearch.runtimes import open_compiled

    compiled, handle = trained_compiled
    images = np.stack([load_image(p, (224, 224))[0] for p in sorted(corel_images.glob("*.jpg"))[::10][:100]])
    fp32 = open_compiled(compiled, "openvino", handle, precision="fp32").embed(images)
    bf16 = open_compiled(compiled, "openvino", handle, precision="bf16").embed(images)
    min_cosine, top10 = precisions.fidelity(fp32, bf16)
    assert min_cosine >= precisions.GATE_MIN_COSINE and top10 >= precisions.GATE_TOP10, (min_cosine, top10)


@pytest.mark.skipif(not cpu.has_bf16(), reason="this CPU has no BF16 units (AVX512_BF16 or AMX): BF16 would run as FP32")
def test_the_marked_bf16_graph_is_kept_beside_the_model_and_made_again_when_damaged(
        corel_images: Path, trained_compiled: tuple[CompiledModel, str], caplog: pytest.LogCaptureFixture) -> None:
    """The BF16 graph (its first depthwise convolution marked precise) is written once beside the compiled
    model, read as it is by later openings, and made again from the model when it cannot be read."""
    from simsearch.runtimes import BF16_DIR, open_compiled

    compiled, handle = trained_compiled
    images = np.stack([load_image(p, (224, 224))[0] for p in sorted(corel_images.glob("*.jpg"))[:4]])
    first = open_compiled(compiled, "openvino", handle, precision="bf16").embed(images)
    kept = compiled.path.parent / BF16_DIR / "model.xml"
    assert kept.is_file() and 'name="precise"' in kept.read_text()
    written = kept.stat().st_mtime_ns
    again = open_compiled(compiled, "openvino", handle, precision="bf16").embed(images)
    assert kept.stat().st_mtime_ns == written  # read, not written again
    np.testing.assert_array_equal(again, first)
    kept.write_text("<net> half a file")
    with caplog.at_level(logging.WARNING):
        repaired = open_compiled(compiled, "openvino", handle, precision="bf16").embed(images)
    assert any("cannot be read" in r.getMessage() for r in caplog.records)
    assert 'name="precise"' in kept.read_text()
    np.testing.assert_array_equal(repaired, first)


@pytest.mark.skipif(not cpu.has_bf16(), reason="this CPU has no BF16 units (AVX512_BF16 or AMX): BF16 would run as FP32")
def test_a_bf16_model_in_a_cache_it_cannot_write_to_still_opens(trained_compiled: tuple[CompiledModel, str],
                                                                 corel_images: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache shared read-only (made by another user, baked into an image): the marked graph is made in
    memory at each opening, with the same vectors as one kept beside the model."""
    import shutil
    import tempfile

    from simsearch.runtimes import BF16_DIR, open_compiled

    compiled, handle = trained_compiled
    images = np.stack([load_image(p, (224, 224))[0] for p in sorted(corel_images.glob("*.jpg"))[:2]])
    kept = open_compiled(compiled, "openvino", handle, precision="bf16").embed(images)
    folder = tmp_path / "readonly"
    shutil.copytree(compiled.folder, folder, ignore=shutil.ignore_patterns(BF16_DIR))
    real_mkdtemp = tempfile.mkdtemp

    def refused(*args: object, dir: object = None, **kwargs: object) -> str:  # as a folder mode 555 answers
        if dir is not None and Path(str(dir)) == folder:
            raise PermissionError(13, "Permission denied", str(dir))
        return real_mkdtemp(*args, dir=dir, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    shared = CompiledModel(folder, compiled.meta)
    np.testing.assert_array_equal(open_compiled(shared, "openvino", handle, precision="bf16").embed(images), kept)
    assert not (folder / BF16_DIR).exists()
