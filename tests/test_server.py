"""The HTTP API in-process: every endpoint, every error path, traversal attempts, tokens, concurrency."""

from __future__ import annotations

import io
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import simsearch
from simsearch.config import Settings
from simsearch.embedder import HubEmbedder
from simsearch.server import create_app

from .conftest import photo

TOKEN = "s3cret-token"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for i in range(12):
        photo(tmp_path / "photos" / f"p{i:02d}.jpg", seed=i)
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "photos" / "rotated.jpg", exif=exif.tobytes())
    return tmp_path / "photos"


@pytest.fixture()
def store(tmp_path: Path, folder: Path, tiny_embedder: HubEmbedder) -> simsearch.Store:
    s = simsearch.open(tmp_path / "store", model=tiny_embedder, settings=Settings(batch_size=4), create=True)
    s.index(folder)
    yield s
    s.close()


@pytest.fixture()
def client(store: simsearch.Store) -> TestClient:
    return TestClient(create_app(store, token=TOKEN, max_upload=200_000), base_url="http://localhost")


def _healthz_when_loaded(client: TestClient) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while (health := client.get("/healthz").json())["model"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.05)
    return health


def test_health_stats_and_openapi(client: TestClient) -> None:
    health = _healthz_when_loaded(client)
    assert health["ok"] is True and health["images"] == 13 and health["model"] == "ready"
    assert client.get("/api/stats").json()["images"] == 13
    assert "/api/query" in client.get("/openapi.json").json()["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text  # blank offline before: FastAPI's page loads Swagger UI from a CDN
    js = client.get(re.search(r'src="([^"]+swagger-ui-bundle\.js)"', docs.text).group(1))
    assert js.status_code == 200 and "javascript" in js.headers["content-type"] and len(js.content) > 100_000
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and "cdn" not in redoc.text
    page = client.get("/")
    assert page.status_code == 200 and "<title>simsearch</title>" in page.text


def test_the_server_loads_the_model_at_start_and_says_when_it_is_ready(
        tmp_path: Path, folder: Path, tiny_module: Path) -> None:
    with simsearch.open(tmp_path / "s", model=tiny_module, create=True) as s:
        s.index(folder)
    store = simsearch.open(tmp_path / "s", create=False)  # by handle, as `simsearch serve` opens it
    client = TestClient(create_app(store), base_url="http://localhost")
    assert client.get("/healthz").json()["model"] in ("loading", "ready")
    health = _healthz_when_loaded(client)
    assert health["model"] == "ready" and health["runtime"] == "onnxruntime" and health["model_error"] is None
    hits = client.post("/api/query", files={"image": ("x.jpg", (folder / "p04.jpg").read_bytes())}).json()
    assert hits[0]["path"] == str(folder / "p04.jpg")

    empty = TestClient(create_app(simsearch.open(tmp_path / "empty", create=True), preload=True), base_url="http://localhost")
    assert empty.get("/healthz").json()["model"] == "none"  # nothing to load before the first index


def test_query_by_upload_id_and_vector(client: TestClient, folder: Path, store: simsearch.Store) -> None:
    target = folder / "p03.jpg"
    hits = client.post("/api/query", files={"image": ("x.jpg", target.read_bytes(), "image/jpeg")},
                       data={"k": "5"}).json()
    assert len(hits) == 5 and hits[0]["path"] == str(target) and hits[0]["score"] > 0.999
    assert hits[0]["thumbnail"] == f"/api/images/{hits[0]['id']}/thumbnail"
    by_id = client.get("/api/query", params={"id": hits[1]["id"], "k": 3}).json()
    assert by_id[0]["id"] == hits[1]["id"]
    vec = store.catalog.vector(hits[2]["id"], store.collection.vector_index.dim).tolist()
    by_vec = client.post("/api/query/vector", json={"vector": vec, "k": 2}).json()
    assert by_vec[0]["id"] == hits[2]["id"]
    assert client.get(f"/api/images/{hits[0]['id']}").json()["path"] == str(target)


def test_files_and_thumbnails_only_by_id(client: TestClient, folder: Path, store: simsearch.Store) -> None:
    hit = store.query(folder / "rotated.jpg", k=1)[0]
    r = client.get(f"/api/images/{hit.id}/file")
    assert r.status_code == 200 and r.content == (folder / "rotated.jpg").read_bytes()
    thumb = client.get(f"/api/images/{hit.id}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(thumb.content))
    assert img.size == (20, 40)  # EXIF orientation applied: stored 40x20, shown upright
    arr = np.asarray(img.convert("L"), np.float32)
    assert arr[:10].mean() < 60 and arr[-10:].mean() > 195
    cached = list((store.root / "thumbnails").rglob(f"{hit.id}-*.jpg"))
    assert len(cached) == 1
    assert client.get(f"/api/images/{hit.id}/thumbnail").content == thumb.content


def test_failures_list_each_file_with_its_reason(client: TestClient, folder: Path, store: simsearch.Store) -> None:
    assert client.get("/api/failures").json() == []
    (folder / "broken.jpg").write_bytes(b"GIF89a but not really")
    store.index(folder)
    failed = client.get("/api/failures").json()
    assert [f["path"] for f in failed] == [str(folder / "broken.jpg")] and failed[0]["reason"]
    assert failed[0]["reason"] == store.failures()[0].reason


def test_previews_are_bounded_oriented_jpegs_cached_in_the_store(client: TestClient, folder: Path,
                                                                 store: simsearch.Store) -> None:
    photo(folder / "large.png", seed=99, size=(3000, 2000))
    store.index(folder)
    large = store.query(folder / "large.png", k=1)[0]
    r = client.get(f"/api/images/{large.id}/preview")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (1600, 1067)  # bounded, aspect kept, a JPEG whatever the original
    rotated = store.query(folder / "rotated.jpg", k=1)[0]
    assert Image.open(io.BytesIO(client.get(f"/api/images/{rotated.id}/preview").content)).size == (20, 40)  # never enlarged
    assert len(list((store.root / "previews").rglob("*.jpg"))) == 2
    assert client.get("/api/images/99999/preview").status_code == 404


@pytest.mark.parametrize("path", [
    "/api/images/../../etc/passwd/file",
    "/api/images/..%2F..%2F..%2Fetc%2Fpasswd/file",
    "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd/file",
    "/api/images/%252e%252e%252fetc%252fpasswd/file",
    "/api/images/1%2F..%2F..%2Fetc%2Fpasswd/thumbnail",
    "/../../../../etc/passwd",
    "/static/..%2F..%2Fetc%2Fpasswd",
    "/api/images/-1/file",
    "/api/images/99999/file",
    "/api/images/1e3/file",
])
def test_traversal_attempts_are_4xx_and_serve_nothing(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code)
    assert b"root:" not in r.content


def test_error_statuses(client: TestClient, folder: Path) -> None:
    big = client.post("/api/query", files={"image": ("big.jpg", b"\xff" * 300_000, "image/jpeg")})
    assert big.status_code == 413 and "upload larger than" in big.json()["error"]
    not_image = client.post("/api/query", files={"image": ("a.jpg", b"hello, not a photo", "image/jpeg")})
    assert not_image.status_code == 415 and not_image.json()["kind"] == "ImageError"
    assert client.get("/api/query", params={"id": 424242}).status_code == 404
    assert client.get("/api/query", params={"id": 1, "k": 0}).status_code == 422
    assert client.post("/api/query/vector", json={"vector": [1.0, 2.0]}).status_code == 422
    assert client.post("/api/query").status_code == 422  # no file


def test_reindex_needs_the_token_and_reports_progress(client: TestClient, folder: Path) -> None:
    assert client.post("/api/index").status_code == 401
    assert client.post("/api/index", headers={"Authorization": "Bearer wrong"}).status_code == 401
    photo(folder / "new.jpg", seed=99)
    r = client.post("/api/index", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 202 and r.json()["state"] == "running"
    deadline = time.monotonic() + 60
    while (job := client.get("/api/index").json())["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job["state"] == "done" and job["reports"][0]["added"] == 1
    assert client.get("/api/stats").json()["images"] == 14


def test_cors_is_off_by_default_and_on_when_asked(store: simsearch.Store) -> None:
    headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in TestClient(create_app(store), base_url="http://localhost").options("/api/query", headers=headers).headers
    allowed = TestClient(create_app(store, cors_origins=["https://photos.example"]), base_url="http://localhost")
    r = allowed.get("/api/stats", headers={"Origin": "https://photos.example"})
    assert r.headers["access-control-allow-origin"] == "https://photos.example"


def test_queries_keep_working_during_an_index_update(tmp_path: Path, folder: Path, tiny_embedder: HubEmbedder) -> None:
    """Queries are answered while a run is half done: each time it has committed some of its rows and not
    the rest, it waits (in its progress callback) until the query threads have had three more answers."""
    store = simsearch.open(tmp_path / "store2", model=tiny_embedder, create=True,
                           settings=Settings(batch_size=4, commit_every_s=0))  # a commit every model batch
    store.index(folder)
    client = TestClient(create_app(store), base_url="http://localhost")
    for i in range(40):
        photo(folder / "more" / f"m{i:02d}.jpg", seed=1000 + i)
    errors: list[str] = []
    responses = 0
    stop = threading.Event()

    def ask() -> None:
        nonlocal responses
        probe = (folder / "p01.jpg").read_bytes()
        while not stop.is_set():
            r = client.post("/api/query", files={"image": ("p.jpg", probe, "image/jpeg")}, data={"k": "10"})
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text}")
                continue
            hits = r.json()
            ids, scores = [h["id"] for h in hits], [h["score"] for h in hits]
            if len(hits) != 10 or len(set(ids)) != 10 or scores != sorted(scores, reverse=True):
                errors.append(f"inconsistent answer: {hits}")
            if not all(Path(h["path"]).exists() for h in hits):
                errors.append("a hit names a file that is not there")
            responses += 1

    midway: list[bool] = []  # at each midpoint: did three queries get answered while the run waited?

    def wait_for_answers(p: simsearch.Progress) -> None:
        if 0 < p.done < p.total:  # some of this run's rows are committed, the rest are not
            want, deadline = responses + 3, time.monotonic() + 20
            while responses < want and not errors and time.monotonic() < deadline:
                time.sleep(0.01)
            midway.append(responses >= want)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        report = store.index(folder, progress=wait_for_answers)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        store.close()
    assert report.added == 40
    assert not errors, errors[:3]
    assert len(midway) >= 5 and all(midway), midway  # ten batches of four: answered at every midpoint


def test_serve_binds_to_localhost_by_default() -> None:
    from click.testing import CliRunner

    from simsearch.cli import main

    text = CliRunner().invoke(main, ["serve", "--help"]).output
    assert "[default: 127.0.0.1]" in text and "--token" in text and "--max-upload-mb" in text


def test_an_empty_new_store_is_served_and_the_page_says_how_to_index(tmp_path: Path) -> None:
    app = create_app(simsearch.open(tmp_path / "new", create=True), preload=True)
    client = TestClient(app, base_url="http://localhost")
    health = client.get("/healthz").json()
    assert health["ok"] and health["images"] == 0 and health["model"] == "none"
    stats = client.get("/api/stats").json()
    assert stats["folders"] == [] and stats["dim"] is None
    assert "This store is empty: index a folder with" in client.get("/").text
    assert client.get("/api/query", params={"id": 1}).status_code == 409  # empty: nothing to search yet


def test_a_running_server_sees_what_a_separate_index_run_wrote(tmp_path: Path, tiny_module: Path) -> None:
    """The server's store object is opened before (here: on an empty store); `simsearch index` in another
    process then writes. Queries and stats must follow, and nothing may record a second model."""
    client = TestClient(create_app(simsearch.open(tmp_path / "store", create=True), preload=False), base_url="http://localhost")
    assert client.get("/api/stats").json()["vectors"] == 0
    for i in range(3):
        photo(tmp_path / "photos" / f"p{i}.jpg", seed=i)
    with simsearch.open(tmp_path / "store", model=tiny_module) as other:  # as another process would
        other.index(tmp_path / "photos")
    stats = client.get("/api/stats").json()
    assert (stats["vectors"], stats["dim"], stats["model"]) == (3, 32, str(tiny_module))
    assert len(client.get("/api/query", params={"id": 1, "k": 3}).json()) == 3
    for i in range(3, 5):
        photo(tmp_path / "photos" / f"p{i}.jpg", seed=i)
    with simsearch.open(tmp_path / "store") as other:
        other.index(tmp_path / "photos")
    hits = client.get("/api/query", params={"id": 5, "k": 5}).json()
    assert hits[0]["id"] == 5 and len(hits) == 5 and client.get("/api/stats").json()["vectors"] == 5


def test_409_when_an_update_is_already_running_or_there_is_no_folder(tmp_path: Path) -> None:
    """The first update is held inside the model (an embedder that waits for the test), so the second
    request meets it running, whatever the machine's speed."""
    from simsearch.embedder import CallableEmbedder

    gate, inside = threading.Event(), threading.Event()
    gate.set()  # open while the model is probed and the folder first indexed

    def gated(x: np.ndarray) -> np.ndarray:
        inside.set()
        assert gate.wait(60)
        return x.reshape(len(x), -1)[:, :16] + 1.0

    store = simsearch.open(tmp_path / "store", model=CallableEmbedder(gated, name="gated", input_size=(8, 8)),
                           create=True)
    client = TestClient(create_app(store, token=TOKEN), base_url="http://localhost")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    none = client.post("/api/index", headers=auth)
    assert none.status_code == 409 and "no folder to re-index" in none.json()["error"]
    for i in range(3):
        photo(tmp_path / "photos" / f"p{i}.jpg", seed=i)
    store.index(tmp_path / "photos")
    gate.clear()
    inside.clear()
    photo(tmp_path / "photos" / "new.jpg", seed=7)
    assert client.post("/api/index", headers=auth).status_code == 202
    try:
        assert inside.wait(60), client.get("/api/index").json()  # the update is running, held in the model
        again = client.post("/api/index", headers=auth)
        assert again.status_code == 409 and "already running" in again.json()["error"]
    finally:
        gate.set()
    deadline = time.monotonic() + 60
    while (job := client.get("/api/index").json())["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job["state"] == "done" and job["reports"][0]["added"] == 1
    store.close()


def test_409_when_another_process_built_the_store_with_another_model(tmp_path: Path,
                                                                      tiny_embedder: HubEmbedder) -> None:
    from simsearch.embedder import CallableEmbedder

    other = CallableEmbedder(lambda x: x.reshape(len(x), -1)[:, :16] + 1.0, name="other", input_size=(8, 8))
    served = simsearch.open(tmp_path / "store", model=tiny_embedder, create=True)  # empty: nothing recorded yet
    client = TestClient(create_app(served), base_url="http://localhost")
    for i in range(2):
        photo(tmp_path / "photos" / f"p{i}.jpg", seed=i)
    with simsearch.open(tmp_path / "store", model=other) as writer:  # as `simsearch index` elsewhere would
        writer.index(tmp_path / "photos")
    r = client.post("/api/query", files={"image": ("p.jpg", (tmp_path / "photos" / "p0.jpg").read_bytes(), "image/jpeg")})
    assert r.status_code == 409 and "cannot be mixed" in r.json()["error"], r.text
    served.close()


def test_thumbnail_and_preview_follow_a_photo_that_changed(client: TestClient, folder: Path,
                                                           store: simsearch.Store) -> None:
    """Renditions are cached by content: an edited photo, once re-indexed, gets new ones (same id)."""
    def mean_colour(r: object) -> np.ndarray:
        assert r.status_code == 200, r.text
        return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), np.float32).mean(axis=(0, 1))

    path = folder / "colour.jpg"
    Image.new("RGB", (300, 200), (220, 30, 30)).save(path)
    store.index(folder)
    (image_id,) = store.catalog.ids_for_paths([str(path)])
    red = [mean_colour(client.get(f"/api/images/{image_id}/{kind}")) for kind in ("thumbnail", "preview")]
    assert all(c[0] > 180 and c[2] < 70 for c in red)
    Image.new("RGB", (300, 200), (30, 30, 220)).save(path)  # edited in place: same path, new content
    assert client.get(f"/api/images/{image_id}/thumbnail").status_code == 409  # not yet re-indexed
    store.index(folder)
    assert store.catalog.ids_for_paths([str(path)]) == [image_id]
    blue = [mean_colour(client.get(f"/api/images/{image_id}/{kind}")) for kind in ("thumbnail", "preview")]
    assert all(c[2] > 180 and c[0] < 70 for c in blue)
    for kind in ("thumbnails", "previews"):  # the red ones went when the blue ones were made
        assert len(list((store.root / kind).rglob(f"{image_id}-*.jpg"))) == 1


def test_a_restarted_server_drops_the_renditions_of_photos_gone_from_the_store(
        client: TestClient, folder: Path, store: simsearch.Store) -> None:
    ids = sorted(int(i) for i in store.catalog.vector_ids())
    for i in ids[:4]:
        assert client.get(f"/api/images/{i}/thumbnail").status_code == 200
    assert client.get(f"/api/images/{ids[0]}/preview").status_code == 200
    legacy = store.root / "thumbnails" / f"{ids[5]}-0123456789abcdef.jpg"  # an earlier version's flat layout
    legacy.write_bytes(b"old")
    killed = store.root / "thumbnails" / f"{ids[6] % 256:02x}" / f".{ids[6]}-0123456789abcdef.jpg.x1y2.tmp"
    killed.parent.mkdir(parents=True, exist_ok=True)
    killed.write_bytes(b"half a thumbnail")  # a write killed half-way, hours ago; a fresh one stays
    os.utime(killed, (time.time() - 7200, time.time() - 7200))
    fresh = killed.with_name(f".{ids[6]}-0123456789abcdef.jpg.z9.tmp")
    fresh.write_bytes(b"being written now")
    gone = [r["path"] for r in store.catalog.records(ids[:2]).values()]
    assert store.remove(gone) == 2  # forgotten by the store; the photos stay on disk
    restarted = create_app(store, preload=False)
    restarted.state.pruning.join(30)

    def cached(kind: str) -> set[int]:
        return {int(p.name.split("-")[0]) for p in (store.root / kind).rglob("*.jpg")}

    assert cached("thumbnails") == set(ids[2:4]) and cached("previews") == set()
    assert not killed.exists() and fresh.exists()
    assert all(Path(p).exists() for p in gone)
    assert TestClient(restarted, base_url="http://localhost").get(f"/api/images/{ids[2]}/thumbnail").status_code == 200


def test_thumbnails_of_big_photos_are_decoded_at_most_one_per_core_at_once(
        store: simsearch.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Six thumbnails of an uncached 169 MP photo at once took the server from 248 MB to 4.8 GB: decodes
    now take turns, one per core, and each is under the store's pixel limit."""
    import simsearch.server as server
    from simsearch.images import thumbnail_jpeg

    running, most, seen = [0], [0], []
    lock = threading.Lock()

    def slow_decode(data: bytes, size: int, **options: object) -> bytes:
        seen.append(options.get("max_pixels"))
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)  # as a big decode holds its memory
        with lock:
            running[0] -= 1
        return thumbnail_jpeg(data, size, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(server, "thumbnail_jpeg", slow_decode)
    monkeypatch.setattr(server, "RENDITION_SLOTS", 2)  # as on a 2-core machine, whatever this one has
    client = TestClient(create_app(store, preload=False), base_url="http://localhost")
    ids = [p["id"] for p in client.get("/api/photos", params={"limit": 6}).json()["photos"]]
    answers: list[int] = []
    threads = [threading.Thread(target=lambda i=i: answers.append(client.get(f"/api/images/{i}/thumbnail").status_code))
               for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == [200] * 6
    assert most[0] == 2  # in turns, two at a time (all six at once before)
    assert seen == [store.settings.max_pixels] * 6
