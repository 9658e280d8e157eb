"""Several examples in one query, and examples of what is not wanted (Store.query, CLI, HTTP).

Judged on the trained stand-in: random weights see every photo alike and could not tell a better
combination from a worse one."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

import simsearch
from simsearch.cli import main
from simsearch.embedder import HubEmbedder
from simsearch.errors import QueryError
from simsearch.server import create_app

from .conftest import COREL, photo

CLASSES = {"beaches": 0, "horses": 6, "mountains_and_snow": 8}


@pytest.fixture(scope="module")
def corel(tmp_path_factory: pytest.TempPathFactory, corel_images: Path,
          trained_embedder: HubEmbedder) -> tuple[simsearch.Store, dict[str, list[Path]], dict[Path, str], Path]:
    """30 database photos of three classes indexed, a composite of a beach and a horse beside them, and the
    three classes' query photos (not indexed) as examples."""
    rows = list(csv.DictReader((COREL / "labels.csv").open()))
    folder = tmp_path_factory.mktemp("examples") / "photos"
    folder.mkdir()
    label: dict[Path, str] = {}
    examples: dict[str, list[Path]] = {c: [] for c in CLASSES}
    for r in rows:
        if r["class"] not in CLASSES:
            continue
        src = corel_images.parent / r["file"]
        if r["split"] == "query":
            examples[r["class"]].append(src)
        elif sum(v == r["class"] for v in label.values()) < 30:
            label[Path(shutil.copy(src, folder))] = r["class"]
    beach, horse = (Image.open(examples[c][0]).convert("RGB").resize((384, 256)) for c in ("beaches", "horses"))
    both = Image.new("RGB", (768, 256))
    both.paste(beach, (0, 0))
    both.paste(horse, (384, 0))
    composite = folder / "beach_beside_horse.jpg"
    both.save(composite, quality=92)
    store = simsearch.open(tmp_path_factory.mktemp("examples") / "store", model=trained_embedder, create=True)
    assert store.index(folder).added == 91
    yield store, examples, label, composite
    store.close()


def _ap(hits: list, relevant: set[str]) -> float:
    found, total = 0, []
    for rank, h in enumerate(hits, 1):
        if h.path in relevant:
            found += 1
            total.append(found / rank)
    return sum(total) / len(relevant)


def test_three_examples_of_a_class_retrieve_it_better_than_one(corel) -> None:
    """bench/examples.py on all of corel1k: mAP 0.49 with one example, 0.56 with three (mean vector)."""
    store, examples, label, _ = corel
    one, three = [], []
    for c in CLASSES:
        relevant = {str(p) for p, lc in label.items() if lc == c}
        for start in range(0, 9, 3):
            picks = examples[c][start : start + 3]
            one.append(np.mean([_ap(store.query(p, k=91), relevant) for p in picks]))
            three.append(_ap(store.query(picks, k=91), relevant))
    assert np.mean(three) > np.mean(one) + 0.02, (np.mean(one), np.mean(three))


def test_a_photo_like_both_examples_ranks_above_photos_like_one(corel) -> None:
    store, examples, _, composite = corel
    beach, horse = examples["beaches"][0], examples["horses"][0]
    rank = {p: [h.path for h in store.query(p, k=91)].index(str(composite)) for p in (beach, horse)}
    together = store.query([beach, horse], k=91)
    both = [h.path for h in together].index(str(composite))
    # measured: 35th for the beach alone, 9th for the horse alone, 4th for the two (behind three horses
    # the network finds closer than any beach); MobileNetV2 weighs the horse more
    assert both <= 3 and both < min(rank.values()), (both, rank)
    # the same as the mean of the two unit vectors, searched exactly
    v = store.query_vector(beach) + store.query_vector(horse)
    assert [h.id for h in together[:10]] == [h.id for h in store.query(v / np.linalg.norm(v), k=10)]


def test_a_negative_example_pushes_its_look_alikes_down(corel) -> None:
    store, examples, label, _ = corel
    beach = examples["beaches"][1]
    plain = store.query(beach, k=91)
    # the mountain photo that looks most like this beach, and its class, are what the user does not want
    unwanted = next(h for h in plain if label.get(Path(h.path)) == "mountains_and_snow")
    pushed = store.query(beach, k=91, negative=[unwanted.id])
    rank = {h.path: i for i, h in enumerate(plain)}
    rank_after = {h.path: i for i, h in enumerate(pushed)}
    mountains = [str(p) for p, c in label.items() if c == "mountains_and_snow"]
    assert rank_after[unwanted.path] >= rank[unwanted.path] + 3  # measured: 2nd -> 7th
    assert np.mean([rank_after[m] for m in mountains]) > np.mean([rank[m] for m in mountains])


def test_examples_mix_files_ids_and_vectors_and_refuse_nonsense(tmp_path: Path, tiny_embedder: HubEmbedder) -> None:
    folder = tmp_path / "photos"
    paths = [photo(folder / f"p{i}.jpg", seed=i) for i in range(4)]
    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True) as store:
        store.index(folder)
        ids = {h.path: h.id for h in store.query(paths[0], k=4)}
        mixed = store.query([paths[0], ids[str(paths[1])], store.query_vector(paths[2])], k=4,
                            negative=[ids[str(paths[3])]])
        v = store.examples_vector([paths[0], paths[1], paths[2]], [paths[3]])
        assert [h.id for h in mixed] == [h.id for h in store.query(v, k=4)]
        with pytest.raises(QueryError, match="at least one example"):
            store.query([], negative=[paths[0]])
        with pytest.raises(QueryError, match="cancel each other out"):
            store.examples_vector([store.query_vector(paths[0]), -store.query_vector(paths[0])])


def test_cli_and_http_take_several_examples(tmp_path: Path, tiny_module: Path) -> None:
    folder = tmp_path / "photos"
    paths = [photo(folder / f"p{i}.jpg", seed=i) for i in range(5)]
    store_dir = str(tmp_path / "store")
    runner = CliRunner()
    assert runner.invoke(main, ["index", str(folder), "--store", store_dir, "--model", str(tiny_module)]).exit_code == 0
    got = runner.invoke(main, ["query", str(paths[0]), str(paths[1]), "--not", str(paths[4]), "--store", store_dir,
                               "-k", "5", "-o", "json"])
    assert got.exit_code == 0, got.output
    with simsearch.open(store_dir) as store:
        expected = store.query([paths[0], paths[1]], k=5, negative=[paths[4]])
        assert [h["id"] for h in json.loads(got.output)] == [h.id for h in expected]
        by_id = {h.path: h.id for h in expected}
        client = TestClient(create_app(store, preload=False), base_url="http://localhost")
        answer = client.get("/api/query", params={"id": [by_id[str(paths[0])], by_id[str(paths[1])]],
                                                  "not": by_id[str(paths[4])], "k": 5})
        assert answer.status_code == 200 and [h["id"] for h in answer.json()] == [h.id for h in expected]
        assert client.get("/api/query", params={"id": [1] * 33}).status_code == 422  # bounded
    ids = runner.invoke(main, ["query", "--id", str(by_id[str(paths[0])]), "--id", str(by_id[str(paths[1])]),
                               "--not-id", str(by_id[str(paths[4])]), "--store", store_dir, "-k", "5", "-o", "json"])
    assert [h["id"] for h in json.loads(ids.output)] == [h.id for h in expected]
    alone = runner.invoke(main, ["query", "--not", str(paths[4]), "--store", store_dir])
    assert alone.exit_code == 2 and "at least one IMAGE, --id or --label" in alone.output
    twice = runner.invoke(main, ["query", "-", "--not", "-", "--store", store_dir], input=b"x")
    assert twice.exit_code == 2 and "standard input (-) can be read once" in twice.output
