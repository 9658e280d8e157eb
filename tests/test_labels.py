"""ImageNet labels: stored at index or added later without re-embedding, queried by word, checked against
the classification module called directly through TF-Hub (not through simsearch's runtimes)."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import simsearch
from simsearch.cli import main
from simsearch.labels import Vocabulary

from . import modules
from .conftest import TINY_SIZE, photo

PHOTOS = 12


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    for i in range(PHOTOS):
        photo(tmp_path / "photos" / f"p{i:02d}.jpg", seed=i, size=(160, 120), quality=92)
    return tmp_path / "photos"


def model_inputs(store: simsearch.Store, paths: list[Path]) -> np.ndarray:
    return np.stack([store.model.decoding.load(str(p))[0] for p in paths]).astype(np.float32)


def a_class_named_alone(probs: np.ndarray) -> tuple[int, str]:
    """The class most probable over the photos whose first name names it alone ("crane" names two)."""
    vocab = Vocabulary.shipped()
    for c in np.argsort(-probs.sum(axis=0)):
        name = vocab.name(int(c))
        if vocab.meaning(name).classes == (int(c),):
            return int(c), name
    raise AssertionError("no class named alone")


def expected_order(paths: list[Path], probs: np.ndarray, c: int, min_probability: float) -> list[Path]:
    """Photos whose top 10 classes (as the module ranks them) hold c at min_probability or more, by probability."""
    top10 = np.argsort(-probs, axis=1)[:, :10]
    keep = [i for i in range(len(paths)) if c in top10[i] and probs[i, c] >= min_probability]
    return [paths[i] for i in sorted(keep, key=lambda i: -probs[i, c])]


@pytest.mark.parametrize("features", ["tiny", "classifier", "other classifier"])
def test_labels_stored_at_index_rank_a_label_query_as_the_module_does(root: Path, tmp_path: Path, tiny_module: Path,
                                                                      classifier_module: Path, db_url: str,
                                                                      features: str) -> None:
    """The store's model a feature module (the classifier runs as a second network), the classifier itself
    (its head on the model's features: one pass) or a classifier of other weights (a head that does not
    reproduce the classifier's logits: refused, a second network)."""
    paths = sorted(root.glob("*.jpg"))
    model = {"tiny": tiny_module, "classifier": classifier_module,
             "other classifier": modules.build_tf1_hub_module(tmp_path / "other", modules.tiny_classifier,
                                                              TINY_SIZE, seed=4)}[features]
    with simsearch.open(tmp_path / "store", model=model, classifier=classifier_module, db=db_url,
                        create=True) as s:
        report = s.index(root, labels=True)
        assert report.labelled == PHOTOS
        assert s.stats().labels["passes"] == (1 if features == "classifier" else 2)
        assert ("labels" in report.timings) == (features != "classifier")  # no second network in one pass
        assert s.stats().labels["labelled"] == PHOTOS
        probs = modules.class_probabilities(classifier_module, model_inputs(s, paths))
        c, name = a_class_named_alone(probs)
        hits = s.query(label=name.upper(), k=PHOTOS, min_probability=0.0)  # any case
        assert [Path(h.path) for h in hits] == expected_order(paths, probs, c, 0.0)
        assert len(hits) >= 2
        by_path = {p: i for i, p in enumerate(paths)}
        np.testing.assert_allclose([h.score for h in hits], [probs[by_path[Path(h.path)], c] for h in hits], rtol=1e-3)
        assert [Path(h.path) for h in s.query(label=name, k=1, min_probability=0.0)] == [Path(hits[0].path)]
        strict = float(probs[by_path[Path(hits[1].path)], c]) + 1e-6  # the second drops out above its probability
        assert [Path(h.path) for h in s.query(label=name, k=PHOTOS, min_probability=strict)] == [Path(hits[0].path)]
        top = s.labels_of(hits[0].id, k=3)
        want = np.argsort(-probs[by_path[Path(hits[0].path)]])[:3]
        assert [label.index for label in top] == [int(i) for i in want]
        assert top[0].name == Vocabulary.shipped().name(int(want[0]))


def test_labels_are_added_later_without_re_embedding(root: Path, tmp_path: Path, tiny_module: Path,
                                                     classifier_module: Path) -> None:
    store = tmp_path / "store"
    with simsearch.open(store, model=tiny_module, create=True) as s:
        s.index(root)
        assert s.stats().labels is None
        with pytest.raises(simsearch.NotFoundError, match="simsearch index --labels"):
            s.query(label="dog")
    with simsearch.open(store, classifier=classifier_module) as s:
        report = s.index(root, labels=True)
        assert (report.added, report.updated, report.unchanged, report.labelled) == (0, 0, PHOTOS, PHOTOS)
        assert not s.model.loaded  # the feature model never ran: nothing was embedded again
        paths = sorted(root.glob("*.jpg"))
        probs = modules.class_probabilities(classifier_module, model_inputs(s, paths))
        c, name = a_class_named_alone(probs)
        assert [Path(h.path) for h in s.query(label=name, k=PHOTOS, min_probability=0.0)] == \
            expected_order(paths, probs, c, 0.0)
    with simsearch.open(store) as s:  # remembered: new photos are labelled as they are embedded
        shutil.copy(root / "p00.jpg", root / "copy.jpg")  # same content: shares its labels
        (root / "p01.jpg").rename(root / "moved.jpg")
        photo(root / "new.jpg", seed=99, size=(160, 120))
        report = s.index(root)
        assert (report.added, report.moved, report.labelled) == (2, 1, 1)
        assert s.stats().labels["labelled"] == PHOTOS + 2
        copy_id = next(h.id for h in s.query(root / "copy.jpg", k=3) if Path(h.path).name == "copy.jpg")
        orig_id = next(h.id for h in s.query(root / "p00.jpg", k=3) if Path(h.path).name == "p00.jpg")
        assert s.labels_of(copy_id) == s.labels_of(orig_id)


def test_a_word_covers_the_classes_under_it_in_the_shipped_table() -> None:
    table = json.loads(resources.files("simsearch").joinpath("data/imagenet_labels.json").read_text("utf-8"))
    vocab = Vocabulary.shipped()
    dogs = vocab.meaning("Dogs").classes  # any case; a plural as its singular
    assert list(dogs) == table["words"]["dog"] and len(dogs) == 118
    names = {table["classes"][c][1][0] for c in dogs}
    assert {"golden retriever", "Chihuahua", "Great Dane", "Mexican hairless"} <= names
    assert not {"timber wolf", "red fox", "tabby", "hyena"} & names  # dogs' neighbours in the table
    assert vocab.meaning("golden retriever").classes == (207,) and 207 in dogs  # ImageNet's class 207
    assert len(vocab.meaning("bird").classes) == 59 and len(vocab.meaning("vehicle").classes) == 67
    assert set(vocab.meaning("sports car").classes) < set(vocab.meaning("car").classes)
    with pytest.raises(simsearch.QueryError, match="did you mean 'golden retriever'"):
        vocab.meaning("golden retreiver")


def test_cli_labels_query_unknown_words_and_a_store_without_labels(root: Path, tmp_path: Path, tiny_module: Path,
                                                                   classifier_module: Path) -> None:
    store = str(tmp_path / "store")
    CliRunner().invoke(main, ["index", str(root), "--store", store, "--model", str(tiny_module)], catch_exceptions=False)
    none = CliRunner().invoke(main, ["query", "--label", "dog", "--store", store])
    assert none.exit_code == 1 and "has no labels: add them with `simsearch index --labels`" in none.output
    stats = CliRunner().invoke(main, ["stats", "--store", store])
    assert "none (add ImageNet labels with `simsearch index --labels`)" in stats.output
    typo = CliRunner().invoke(main, ["query", "--label", "sailbot", "--store", store])
    assert typo.exit_code == 2 and "did you mean 'sailboat'" in typo.output
    alone = CliRunner().invoke(main, ["index", "--classifier", str(classifier_module), "--store", store])
    assert alone.exit_code == 2 and "--classifier goes with --labels" in alone.output

    r = CliRunner().invoke(main, ["index", "--labels", "--classifier", str(classifier_module), "--store", store])
    assert r.exit_code == 0 and f"labelled {PHOTOS} photos" in r.output, r.output
    stats = CliRunner().invoke(main, ["stats", "--store", store])
    assert f"{PHOTOS} of {PHOTOS} photos, classifier {classifier_module}" in stats.output
    shown = json.loads(CliRunner().invoke(main, ["labels", "--id", "1", "-k", "3", "--json", "--store", store]).output)
    assert len(shown) == 3 and shown[0]["probability"] >= shown[1]["probability"] >= shown[2]["probability"]
    name = shown[0]["name"]
    found = json.loads(CliRunner().invoke(main, ["query", "--label", name, "--min-probability", "0", "-k", "50",
                                                 "--json", "--store", store]).output)
    assert 1 in [h["id"] for h in found]
    # a photo not in the store: classified now, by the store's classifier
    first = json.loads(CliRunner().invoke(main, ["query", "--id", "1", "-k", "1", "--json", "--store", store]).output)
    outside = tmp_path / "outside.jpg"
    shutil.copy(first[0]["path"], outside)
    again = json.loads(CliRunner().invoke(main, ["labels", str(outside), "-k", "3", "--json", "--store", store]).output)
    assert [x["index"] for x in again] == [x["index"] for x in shown]  # the same pixels, the same classes
    nothing = CliRunner().invoke(main, ["query", "--label", name, "--min-probability", "1", "--store", store])
    assert nothing.exit_code == 0 and f"no photo labelled {name!r} with probability >= 1" in nothing.output


def test_a_label_and_an_example_rank_the_labels_photos_by_similarity(root: Path, tmp_path: Path, tiny_module: Path,
                                                                     classifier_module: Path) -> None:
    with simsearch.open(tmp_path / "store", model=tiny_module, classifier=classifier_module, create=True) as s:
        s.index(root, labels=True)
        paths = sorted(root.glob("*.jpg"))
        probs = modules.class_probabilities(classifier_module, model_inputs(s, paths))
        c, name = a_class_named_alone(probs)
        floor = float(np.median(probs[:, c]))  # about half the photos are "of" the label
        members = {str(p) for p in expected_order(paths, probs, c, floor)}
        outsider = next(p for p in paths if str(p) not in members)
        assert 2 <= len(members) < PHOTOS
        hits = s.query(outsider, k=PHOTOS, label=name, min_probability=floor)
        assert {h.path for h in hits} == members  # only the label's photos, the example itself not among them
        alike = [h.path for h in s.query(outsider, k=PHOTOS) if h.path in members]
        assert [h.path for h in hits] == alike  # in the order plain similarity puts them


def test_http_query_by_label_and_a_photos_labels(root: Path, tmp_path: Path, tiny_module: Path,
                                                 classifier_module: Path) -> None:
    from fastapi.testclient import TestClient

    from simsearch.server import create_app

    with simsearch.open(tmp_path / "store", model=tiny_module, classifier=classifier_module, create=True) as s:
        s.index(root, labels=True)
        client = TestClient(create_app(s, preload=False), base_url="http://localhost")
        shown = client.get("/api/images/1/labels", params={"k": 2}).json()
        assert len(shown) == 2 and set(shown[0]) == {"index", "name", "probability"}
        found = client.get("/api/query", params={"label": shown[0]["name"], "min_probability": 0, "k": 50}).json()
        assert 1 in [h["id"] for h in found]
        assert [h["id"] for h in found] == [h.id for h in s.query(label=shown[0]["name"], k=50, min_probability=0)]
        typo = client.get("/api/query", params={"label": "sailbot"})
        assert typo.status_code == 422 and "sailboat" in typo.json()["error"]
        assert client.get("/api/query").status_code == 422
        assert client.get("/api/stats").json()["labels"]["labelled"] == PHOTOS
