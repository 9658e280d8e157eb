"""The Store facade's seams and the bugs a close read of the old engine found (each failed before its fix)."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import simsearch
from simsearch.catalog import Changes, ImageFields
from simsearch.cli import main
from simsearch.embedder import CallableEmbedder, HubEmbedder
from simsearch.results import Result, StoreStats

from .conftest import photo



def test_an_unindexed_home_relative_probe_is_decoded_from_the_expanded_path(
        tmp_path: Path, tiny_embedder: HubEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    probe = photo(home / "probe.jpg", seed=3)
    photo(tmp_path / "photos" / "a.jpg", seed=1)
    photo(tmp_path / "photos" / "b.jpg", seed=2)
    monkeypatch.setenv("HOME", str(home))
    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True) as store:
        store.index(tmp_path / "photos")
        by_tilde = store.query("~/probe.jpg", k=2)
        by_bytes = store.query(probe.read_bytes(), k=2)
    assert [h.id for h in by_tilde] == [h.id for h in by_bytes]
    assert [h.score for h in by_tilde] == pytest.approx([h.score for h in by_bytes], abs=1e-6)


def test_eval_with_no_query_photos_is_an_error_not_nan(tmp_path: Path, tiny_embedder: HubEmbedder) -> None:
    for i in range(4):
        photo(tmp_path / "photos" / f"{i}.jpg", seed=i)
    labels = tmp_path / "photos" / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "split", "class"])
        w.writerows([[f"{i}.jpg", "db", "a" if i % 2 else "b"] for i in range(4)])  # nothing to query with
    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True) as store:
        store.index(tmp_path / "photos")
    for extra in ([], ["--json"]):
        r = CliRunner().invoke(main, ["eval", str(labels), "--store", str(tmp_path / "store"), *extra])
        assert r.exit_code == 1, r.output
        assert "0 query photos and 4 database photos" in r.output and "nan" not in r.output.lower()


def test_json_of_a_result_never_holds_nan() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Scores(Result):
        mean: float
        per_class: dict[str, float]
        runs: list[float]

    d = Scores(math.nan, {"a": math.inf, "b": 0.5}, [1.0, -math.inf]).to_dict()
    assert d == {"mean": None, "per_class": {"a": None, "b": 0.5}, "runs": [1.0, None]}
    json.dumps(d, allow_nan=False)


class _SlowToLoad:
    """An embedder whose first look at its spec takes a while, as loading a model does."""

    def __init__(self, inner: HubEmbedder, seconds: float) -> None:
        self.inner, self.seconds, self.loaded = inner, seconds, False

    @property
    def spec(self) -> object:
        if not self.loaded:
            time.sleep(self.seconds)
            self.loaded = True
        return self.inner.spec

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.inner.embed(images)


def test_scan_time_leaves_out_loading_the_model_of_a_new_store(tmp_path: Path, tiny_embedder: HubEmbedder) -> None:
    for i in range(3):
        photo(tmp_path / "photos" / f"{i}.jpg", seed=i)
    with simsearch.open(tmp_path / "store", model=_SlowToLoad(tiny_embedder, 1.0), create=True) as store:
        r = store.index(tmp_path / "photos")
    assert r.added == 3 and r.seconds >= 1.0  # the whole run includes the load
    assert r.timings["scan"] < 0.5  # three files stat'ed; the old scan timing held the 1 s load


def test_write_is_the_public_seam_for_vectors_made_elsewhere(tmp_path: Path) -> None:
    model = CallableEmbedder(lambda x: np.ones((len(x), 4)), name="external", input_size=(8, 8))
    rows = [(ImageFields(f"/elsewhere/{i}.jpg", 10, 1, f"{i:064x}", 8, 8, "JPEG"), np.eye(4)[i]) for i in range(4)]
    with simsearch.open(tmp_path / "store", model=model, create=True) as store:
        store.write(Changes(upserts=rows))
        assert [h.path for h in store.query(np.eye(4)[2], k=1)] == ["/elsewhere/2.jpg"]
    with simsearch.open(tmp_path / "store", model=model, create=True) as again:  # checkpointed: opens without a rebuild
        assert not again.rebuilt_index and again.stats().vectors == 4
        stats = again.stats()
    assert isinstance(stats, StoreStats) and stats.dim == 4 and stats.index_kind == "flat"


def test_importing_simsearch_leaves_pillow_settings_alone(tmp_path: Path) -> None:
    import PIL.Image as pil_image

    assert pil_image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's own default: simsearch sets no global
    from simsearch.images import load_image

    big = tmp_path / "big.png"  # over Pillow's bomb limit, within the one asked for
    Image.new("L", (14_000, 13_000)).save(big, optimize=False)
    pixels, info = load_image(big, (8, 8), max_pixels=200_000_000)
    assert pixels.shape == (8, 8, 3) and (info.width, info.height) == (14_000, 13_000)
    with pytest.raises(simsearch.ImageError, match="14000x13000"):
        load_image(big, (8, 8), max_pixels=100_000_000)


def test_opening_a_store_that_does_not_exist_raises_unless_asked_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(simsearch.NotFoundError, match="create=True"):
        simsearch.open(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()
    with simsearch.open(tmp_path / "new", create=True) as store:
        assert store.stats().images == 0
    simsearch.open(tmp_path / "new").close()  # it exists now


def test_store_model_and_db_come_from_the_environment_and_arguments_win(
        tmp_path: Path, tiny_module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMSEARCH_CONFIG", str(tmp_path / "no-config.toml"))  # the user's own file stays out
    monkeypatch.setenv("SIMSEARCH_STORE", str(tmp_path / "env-store"))
    monkeypatch.setenv("SIMSEARCH_MODEL", str(tiny_module))
    monkeypatch.setenv("SIMSEARCH_DB", f"sqlite:///{tmp_path / 'env-catalog.sqlite'}")
    for i in range(2):
        photo(tmp_path / "photos" / f"p{i}.jpg", seed=i)
    with simsearch.open(create=True) as s:  # nothing given: all three from the environment
        assert s.index(tmp_path / "photos").added == 2
        assert s.root == tmp_path / "env-store" and s.stats().model == str(tiny_module)
    assert (tmp_path / "env-catalog.sqlite").exists() and not (tmp_path / "env-store" / "catalog.sqlite").exists()
    with simsearch.open(tmp_path / "arg-store", db=f"sqlite:///{tmp_path / 'arg.sqlite'}", create=True) as s:
        assert s.index(tmp_path / "photos").added == 2  # the model still from the environment
        assert s.root == tmp_path / "arg-store" and s.stats().model == str(tiny_module)
    assert (tmp_path / "arg.sqlite").exists()
