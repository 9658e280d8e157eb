"""HTTP API and web page: parse, call the store, render. Errors become status codes in one place.

Security by construction: files are served only by the id of an indexed image (no client path is ever
opened) and only while the file is still that photo (simsearch.store.Store.open_indexed); requests must
name an allowed Host and bodies arrive bounded in size and time (simsearch.guard); anything beyond
read-only queries needs the bearer token when one is set, and without one only the page's own origin
may ask (a search by URL too, since it makes the server reach out); uploads decode under a tighter
pixel limit and at most a few run the model at once; CORS is off unless origins are given, and
`simsearch serve` binds to 127.0.0.1 by default.
"""

from __future__ import annotations

import base64
import hmac
import logging
import os
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import quote

from fastapi import Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from .catalog import BrowseKey, ImageFilter, parse_when
from .errors import (
    ChangedError,
    EmptyStoreError,
    ImageError,
    ModelError,
    ModelMismatchError,
    NotFoundError,
    QueryError,
    SimsearchError,
    StoreError,
)
from .duplicates import DEFAULT_MIN_COSINE, DEFAULT_NEIGHBOURS
from .guard import Guard, allowed_hosts
from .images import thumbnail_jpeg
from .labels import DEFAULT_MIN_PROBABILITY
from .paths import json_text
from .probes import URL_TIMEOUT_S, fetch_url
from .renditions import FOLDERS as RENDITION_FOLDERS
from .renditions import RenditionCache
from .results import Hit, Photo, Progress
from .store import Store

DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
DEFAULT_MAX_UPLOAD_PIXELS = 50_000_000  # uploads decode under this; a 13000x13000 PNG bomb is 169 MP
DEFAULT_BODY_TIMEOUT_S = 30.0
QUEUE_TIMEOUT_S = 10.0  # an upload waits this long for a free model slot, then 503
FETCH_SLOTS = 4  # URLs fetched at once; the next waits a second, then 503
URL_FAILED = ("no image could be fetched from that URL: it did not answer in time, the connection failed, or "
              "what came back is not an image within the limits")
MAX_ID = 2**63 - 1  # the largest id the catalog can hold
MAX_EXAMPLES = 32  # example photos in one query, positive or negative
RENDITION_SLOTS = os.cpu_count() or 2  # thumbnails and previews decoded at once
THUMBNAIL_SIZE = 256
PREVIEW_SIZE = 1600  # the large view: sharp on a laptop, a few hundred kB
_STATUS: list[tuple[type[SimsearchError], int]] = [  # most specific first
    (NotFoundError, 404),
    (ChangedError, 409),
    (ImageError, 415),
    (QueryError, 422),
    (EmptyStoreError, 409),
    (ModelMismatchError, 409),
    (ModelError, 503),
    (StoreError, 503),
    (SimsearchError, 400),
]


class Watching(Protocol):
    """What follows the folders beside the server (simsearch.watch.FolderWatcher)."""

    def snapshot(self) -> dict[str, Any]: ...


class HTTPError(SimsearchError):
    """An error that already knows its status (bad token, oversize upload, busy)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers


class PathSafeJSON(JSONResponse):
    """JSON whose file names may hold bytes that are not UTF-8: they travel as \\udcNN escapes
    (simsearch.paths), where plain JSONResponse would fail with a 500."""

    def render(self, content: Any) -> bytes:
        return json_text(content, separators=(",", ":")).encode("utf-8")


def error_response(exc: SimsearchError) -> JSONResponse:
    """The one place where an error becomes an HTTP status (the handler and the upload bound both use it)."""
    status = exc.status if isinstance(exc, HTTPError) else next(c for t, c in _STATUS if isinstance(exc, t))
    headers = exc.headers if isinstance(exc, HTTPError) else None
    return PathSafeJSON({"error": str(exc)[:2000], "kind": type(exc).__name__}, status_code=status, headers=headers)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    """422 naming what was wrong, never echoing the input (a 10^6-element vector would come back whole)."""
    problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()[:5]]
    return error_response(QueryError("invalid request: " + "; ".join(problems)))


_Id = Annotated[int, Field(ge=1, le=2**63 - 1)]


class Resolution(BaseModel):
    keep: _Id | Annotated[list[_Id], Field(min_length=1, max_length=1000)] | None = None  # one id, or several
    trash_others: bool = False


class Split(BaseModel):
    parts: Annotated[list[Annotated[list[_Id], Field(min_length=1, max_length=1000)]], Field(min_length=1, max_length=100)]


class SureResolution(BaseModel):
    groups: Annotated[list[Annotated[str, Field(pattern="^[0-9a-f]{12}$")]], Field(min_length=1, max_length=10_000)]
    trash_others: bool = False


class UrlQuery(BaseModel):
    url: str = Field(min_length=8, max_length=4096, pattern=r"^https?://")
    k: int = Field(10, ge=1, le=1000)


class VectorQuery(BaseModel):
    vector: list[float] = Field(min_length=1, max_length=65536)
    k: int = Field(10, ge=1, le=1000)


@dataclass
class IndexJob:
    """One background re-index of the store's folders at a time, with progress to poll."""

    state: str = "idle"  # idle | running | done | failed
    folder: str | None = None
    done: int = 0
    total: int = 0
    failed: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    reports: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {f.name: list(v) if isinstance(v := getattr(self, f.name), list) else v
                    for f in fields(self) if not f.name.startswith("_")}

    def start(self, store: Store) -> None:
        with self._lock:
            if self.state == "running":
                raise HTTPError(409, "an index update is already running")
            folders = store.stats().folders
            if not folders:
                raise HTTPError(409, "this store has no folder to re-index: run `simsearch index FOLDER` once")
            self.state, self.done, self.total, self.failed, self.error = "running", 0, 0, 0, None
            self.started_at, self.finished_at, self.reports = time.time(), None, []
        threading.Thread(target=self._run, args=(store, folders), name="simsearch-index", daemon=True).start()

    def _progress(self, p: Progress) -> None:
        with self._lock:
            self.done, self.total, self.failed = p.done, p.total, p.failed

    def _run(self, store: Store, folders: list[str]) -> None:
        try:
            for folder in folders:
                if not Path(folder).is_dir():  # an unmounted disk: skipped, nothing removed (as Store.update)
                    continue
                with self._lock:
                    self.folder = folder
                report = store.index(folder, progress=self._progress)
                with self._lock:
                    self.reports.append(report.to_dict())
            state, error = "done", None
        except Exception as exc:  # reported to the client that polls; the store keeps what was committed
            state, error = "failed", str(exc)
        with self._lock:
            self.state, self.error, self.finished_at = state, error, time.time()


@dataclass
class ModelLoad:
    """The model loaded in the background when the server starts, so the first upload does not wait
    for it; /healthz says where it stands."""

    state: str = "none"  # none (an empty store has no model yet) | loading | ready | failed
    error: str | None = None
    seconds: float | None = None
    runtime: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self, store: Store) -> None:
        if store.stats().dim is None:
            return
        self.state = "loading"
        threading.Thread(target=self._run, args=(store,), name="simsearch-model", daemon=True).start()

    def _run(self, store: Store) -> None:
        t0 = time.perf_counter()
        try:
            spec = store.embedder.spec
            state, error, runtime = "ready", None, spec.runtime
        except Exception as exc:  # shown by /healthz; a query then reports the same error itself
            state, error, runtime = "failed", str(exc), None
        with self._lock:
            self.state, self.error, self.runtime = state, error, runtime
            self.seconds = round(time.perf_counter() - t0, 3)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"model": self.state, "model_error": self.error, "model_seconds": self.seconds,
                    "runtime": self.runtime}


def create_app(
    store: Store | str | Path,
    *,
    token: str | None = None,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    cors_origins: list[str] | None = None,
    preload: bool = True,
    host: str | None = None,
    extra_hosts: list[str] | None = None,
    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
    model_slots: int | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S,
    watching: bool | Watching = False,
    allow_private_urls: bool = False,
    url_timeout: float = URL_TIMEOUT_S,
) -> FastAPI:
    """The ASGI app for one store; tests run it in-process, `simsearch serve` under uvicorn.

    host, extra_hosts: the names requests may carry in Host (localhost names always). model_slots:
    uploads embedded at once (default: the cores); the rest wait in line, then get 503.
    preload: load the model in a background thread now, rather than on the first upload.
    allow_private_urls: let searches by URL reach loopback and private addresses (the server's own network).
    url_timeout: seconds a search by URL may spend fetching, all of it (resolving, redirects, body)."""
    store = store if isinstance(store, Store) else Store(store, create=False)
    # /docs and /redoc from files the server holds (fastapi-offline ships Swagger UI and ReDoc): FastAPI's own
    # pages load them from a CDN, and were blank offline
    app = FastAPIOffline(title="simsearch", version=__import__("simsearch").__version__,
                         description="Find similar photos in an indexed collection.",
                         default_response_class=PathSafeJSON)
    app.state.store = store
    app.state.job = IndexJob()
    app.state.model = ModelLoad()
    app.state.watching = watching  # serve --watch: the page says the folders are followed, /healthz whether still
    if preload:
        app.state.model.start(store)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(Guard, hosts=allowed_hosts(host, extra_hosts or ()), max_body=max_upload + 64 * 1024,
                       body_timeout=body_timeout)  # outermost: before CORS and every endpoint

    @app.exception_handler(SimsearchError)
    async def _errors(_: Request, exc: SimsearchError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    slots = threading.BoundedSemaphore(model_slots or os.cpu_count() or 2)
    _page_routes(app, store)
    may_change = _change_guard(token, cors_origins or [])
    _query_routes(app, store, max_upload, max_upload_pixels, slots, may_change, allow_private_urls, url_timeout)
    _image_routes(app, store)
    _index_routes(app, store, may_change)
    return app


def _text(value: str | None, name: str) -> str | None:
    if value is not None and ("\x00" in value or len(value) > 4096):
        raise QueryError(f"{name} must be text without NUL characters, at most 4096 long")
    return value


def _filter(
    folder: str | None = None,
    taken_from: str | None = Query(None, max_length=40, description="YYYY-MM-DD (from that day's start) or a moment"),
    taken_until: str | None = Query(None, max_length=40, description="YYYY-MM-DD (the whole day) or a moment"),
    format: list[str] = Query(default=[], max_length=64),
    min_pixels: int | None = Query(default=None, ge=1, le=MAX_ID),
) -> ImageFilter | None:
    """Filters as query parameters; the folder is only matched against catalog paths, never opened."""
    formats = tuple(str(_text(f, "format")) for f in format)
    try:
        start, end = (parse_when(t) if t else None for t in (taken_from, taken_until))
    except ValueError as exc:
        raise QueryError("taken_from and taken_until: expected YYYY-MM-DD (a whole day) or YYYY-MM-DDTHH:MM[:SS]") from exc
    f = ImageFilter(folder=_text(folder, "folder"), taken_from=start, taken_until=end, formats=formats,
                    min_pixels=min_pixels)
    return f or None


def _links(photo: dict[str, Any]) -> dict[str, Any]:
    return photo | {"thumbnail": f"/api/images/{photo['id']}/thumbnail", "file": f"/api/images/{photo['id']}/file"}


def _hits(found: list[Hit]) -> list[dict[str, Any]]:
    return [_links(h.to_dict()) for h in found]


ImageId = PathParam(ge=1, le=MAX_ID, description="An indexed image's id.")


def _page_routes(app: FastAPI, store: Store) -> None:
    page = resources.files("simsearch").joinpath("web/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page() -> str:
        return page

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness, and whether the model is ready ("loading" right after start)."""
        w = app.state.watching
        watch = w.snapshot() if not isinstance(w, bool) else {"watching": w, "watch_error": None}
        return {"ok": True, "images": store.stats().images, **watch, **app.state.model.snapshot()}

    @app.get("/api/folders")
    def folders() -> dict[str, Any]:
        """The indexed folders and every folder under them that holds photos (at most 5000, `truncated`
        when there were more): what the page's folder filter offers."""
        found, more = store.photo_folders()
        return {"folders": found, "truncated": more}

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        return store.stats().to_dict()

    @app.get("/api/failures")
    def failures() -> list[dict[str, Any]]:
        """The files that could not be indexed, each with its reason (as `simsearch failures`)."""
        return [f.to_dict() for f in store.failures()]


def _query_routes(app: FastAPI, store: Store, max_upload: int, max_pixels: int, slots: threading.BoundedSemaphore,
                  may_change: Any, allow_private_urls: bool, url_timeout: float) -> None:
    @app.post("/api/query")
    def query_upload(image: UploadFile = File(...), k: int = Form(10, ge=1, le=1000),
                     label: str | None = Form(None, max_length=200),
                     min_probability: float = Form(DEFAULT_MIN_PROBABILITY, ge=0, le=1),
                     f: ImageFilter | None = Depends(_filter)) -> list[dict[str, Any]]:
        """Neighbours of an uploaded photo; with a label, among the photos of that label."""
        # a plain def: FastAPI runs it in its thread pool, so the model never blocks the event loop
        data = image.file.read(max_upload + 1)
        if len(data) > max_upload:
            raise HTTPError(413, f"upload larger than {max_upload} bytes")
        if not slots.acquire(timeout=QUEUE_TIMEOUT_S):  # a bounded line for the model, not an unbounded pile
            raise HTTPError(503, "busy: too many photos being searched at once, try again shortly",
                            headers={"Retry-After": "5"})
        try:
            return _hits(store.query(data, k=k, where=f, max_pixels=max_pixels, label=label or None,
                                     min_probability=min_probability))
        finally:
            slots.release()

    @app.get("/api/query")
    def query_id(id: list[int] = Query([], max_length=MAX_EXAMPLES,
                                       description="Indexed photos as examples (repeat: photos like all of them)"),
                 not_: list[int] = Query([], alias="not", max_length=MAX_EXAMPLES,
                                         description="Indexed photos of what is not wanted"),
                 label: str | None = Query(None, max_length=200, description="An ImageNet class or WordNet word: "
                                           "its photos, most probable first (with ids: ranked by similarity)"),
                 min_probability: float = Query(DEFAULT_MIN_PROBABILITY, ge=0, le=1),
                 k: int = Query(10, ge=1, le=1000), f: ImageFilter | None = Depends(_filter)) -> list[dict[str, Any]]:
        for i in (*id, *not_):
            if not 1 <= i <= MAX_ID:
                raise QueryError(f"id {i} is not an image id (1 to {MAX_ID})")
        if not id and not label:
            raise QueryError("give an id (repeatable) or a label")
        probe = None if not id else id[0] if len(id) == 1 else id
        return _hits(store.query(probe, k=k, negative=not_, where=f, label=label or None,
                                 min_probability=min_probability))

    fetches = threading.BoundedSemaphore(FETCH_SLOTS)  # apart from the model's slots: uploads never wait on them

    @app.post("/api/query/url", dependencies=[Depends(may_change)])
    def query_url(body: UrlQuery, f: ImageFilter | None = Depends(_filter)) -> list[dict[str, Any]]:
        """Neighbours of the photo at an http(s) address, fetched by the server (public addresses only unless
        started with --allow-private-urls; one deadline for the whole fetch; bounded in size, decoded under
        the upload pixel limit); guarded like changes, since it makes the server reach out. Every failure
        to get an image reads the same, so answers cannot tell an open port from a closed one."""
        if not fetches.acquire(timeout=1.0):
            raise HTTPError(503, "busy: too many URLs being fetched at once, try again shortly",
                            headers={"Retry-After": "5"})
        try:
            data = fetch_url(body.url, max_bytes=max_upload, public_only=not allow_private_urls, timeout=url_timeout)
        except ImageError as exc:
            raise ImageError(None, URL_FAILED) from exc
        finally:
            fetches.release()
        if not slots.acquire(timeout=QUEUE_TIMEOUT_S):
            raise HTTPError(503, "busy: too many photos being searched at once, try again shortly",
                            headers={"Retry-After": "5"})
        try:
            return _hits(store.query(data, k=body.k, where=f, max_pixels=max_pixels))
        except ImageError as exc:
            raise ImageError(None, URL_FAILED) from exc
        finally:
            slots.release()

    @app.post("/api/query/vector")
    def query_vector(body: VectorQuery, f: ImageFilter | None = Depends(_filter)) -> list[dict[str, Any]]:
        import numpy as np

        return _hits(store.query(np.asarray(body.vector, np.float32), k=body.k, where=f))


def _cursor(key: BrowseKey) -> str:
    """The opaque token of where a page ended: what the client sends back for the next page."""
    raw = f"{key.taken_at.isoformat() if key.taken_at else ''}|{key.mtime_ns}|{key.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _after(cursor: str | None) -> BrowseKey | None:
    if not cursor:
        return None
    try:
        taken, mtime, image_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
        key = BrowseKey(datetime.fromisoformat(taken) if taken else None, int(mtime), int(image_id))
        if not (-MAX_ID - 1 <= key.mtime_ns <= MAX_ID and 0 <= key.id <= MAX_ID):  # what the catalog can hold
            raise ValueError("out of range")
        return key
    except (ValueError, UnicodeDecodeError) as exc:
        raise QueryError("cursor is not one this server gave: pass the `next` of the previous page") from exc


def _image_routes(app: FastAPI, store: Store) -> None:
    caches = {THUMBNAIL_SIZE: RenditionCache(store.root / RENDITION_FOLDERS[0]),
              PREVIEW_SIZE: RenditionCache(store.root / RENDITION_FOLDERS[1])}

    def prune() -> None:
        """Renditions of photos deleted or changed since the last start go, in the background."""
        try:
            for cache in caches.values():
                cache.prune(store.catalog)
        except (SimsearchError, OSError) as exc:  # a cache left as it was: say so, serve on
            logging.getLogger("simsearch").warning("could not prune cached thumbnails and previews: %s", exc)

    app.state.pruning = threading.Thread(target=prune, name="simsearch-prune-renditions", daemon=True)
    app.state.pruning.start()

    @app.get("/api/photos")
    def photos(limit: int = Query(60, ge=1, le=500), cursor: str | None = Query(None, max_length=200),
               f: ImageFilter | None = Depends(_filter)) -> dict[str, Any]:
        """The collection, newest first (date taken, then file time for undated photos), a page at a time,
        with the same filters as queries; `next` is the cursor of the following page (null at the end);
        `total`, how many photos pass the filters, on the first page (null on the others)."""
        photos, total = store.browse(f, _after(cursor), limit)
        return {"photos": [_links(p.to_dict()) for p in photos], "total": total,
                "next": _cursor(BrowseKey.of(photos[-1])) if len(photos) == limit else None}

    @app.get("/api/images/{image_id}")
    def image_record(image_id: int = ImageId) -> dict[str, Any]:
        return store.get(image_id).to_dict()

    @app.get("/api/images/{image_id}/labels")
    def image_labels(image_id: int = ImageId, k: int = Query(5, ge=1, le=10)) -> list[dict[str, Any]]:
        """The photo's top ImageNet labels with their probabilities (a store indexed with --labels)."""
        return [label.to_dict() for label in store.labels_of(image_id, k=k)]

    @app.get("/api/images/{image_id}/file")
    def image_file(image_id: int = ImageId) -> StreamingResponse:
        rec, f = store.open_indexed(image_id)  # still the indexed photo, or 404/409

        def chunks() -> Any:
            with f:
                while chunk := f.read(1 << 20):
                    yield chunk

        name = os.fsencode(Path(rec.path).name)  # the file system's bytes, percent-encoded whatever they are
        return StreamingResponse(chunks(), media_type=_media_type(rec), headers={
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}", "Content-Length": str(rec.size),
            "X-Content-Type-Options": "nosniff"})

    decodes = threading.BoundedSemaphore(RENDITION_SLOTS)  # a 169 MP photo takes ~800 MB to decode

    def rendition(image_id: int, size: int) -> Response:
        """An EXIF-oriented JPEG at most size pixels across, made once per content and kept in the store.
        At most one decode per core at a time (the rest wait their turn, then 503), each under the store's
        pixel limit: six thumbnails of a huge photo at once cannot take the server's memory."""
        rec, f = store.open_indexed(image_id)

        def make() -> bytes:
            if not decodes.acquire(timeout=QUEUE_TIMEOUT_S * 3):
                raise HTTPError(503, "busy: too many thumbnails being made at once, try again shortly",
                                headers={"Retry-After": "5"})
            try:
                return thumbnail_jpeg(f.read(), size, max_pixels=store.settings.max_pixels, name=rec.path)
            finally:
                decodes.release()

        with f:
            data = caches[size].get(image_id, rec.sha256, make)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    @app.get("/api/images/{image_id}/thumbnail")
    def image_thumbnail(image_id: int = ImageId) -> Response:
        return rendition(image_id, THUMBNAIL_SIZE)

    @app.get("/api/images/{image_id}/preview")
    def image_preview(image_id: int = ImageId) -> Response:
        """For the page's large view: a bounded size, whatever the original's, and never the original's format."""
        return rendition(image_id, PREVIEW_SIZE)


_MEDIA = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp",
          "TIFF": "image/tiff", "AVIF": "image/avif", "HEIF": "image/heif"}


def _media_type(photo: Photo) -> str:
    return _MEDIA.get(str(photo.format or "").upper(), "application/octet-stream")


def _change_guard(token: str | None, cors_origins: list[str]) -> Any:
    """The dependency of requests that change the store or make the server reach out to the network."""

    def may_change(request: Request, authorization: str | None = Header(default=None)) -> None:
        """State changes: with a token, only with `Authorization: Bearer TOKEN`; without one, only from the
        page's own origin (or a client that is no browser), so another web site cannot start jobs (CSRF)."""
        if token is not None:
            scheme, _, given = (authorization or "").partition(" ")
            if scheme != "Bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                raise HTTPError(401, "a valid bearer token is required for this (Authorization: Bearer TOKEN)")
            return
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if request.headers.get("sec-fetch-site") == "cross-site" or (
                origin is not None and origin != own and origin not in cors_origins):
            raise HTTPError(403, f"requests from {origin or 'another site'} may not change this store")

    return may_change


def _index_routes(app: FastAPI, store: Store, may_change: Any) -> None:

    @app.get("/api/duplicates")
    def duplicates(min_cosine: float = Query(DEFAULT_MIN_COSINE, gt=0, le=1),
                   neighbours: int = Query(DEFAULT_NEIGHBOURS, ge=1, le=100),
                   all: bool = False, similar: bool = False) -> list[dict[str, Any]]:
        """Duplicate groups not yet resolved (all: those too), each member with its thumbnail; similar: the
        groups of look-alikes instead (kind "similar": the same scene, not the same picture)."""
        return [g.to_dict() | {"members": [m.to_dict() | {"thumbnail": f"/api/images/{m.id}/thumbnail"} for m in g.members]}
                for g in store.duplicates(min_cosine, neighbours=neighbours, include_resolved=all, similar=similar)]

    @app.post("/api/duplicates/{group}/resolve", dependencies=[Depends(may_change)])
    def resolve(body: Resolution, group: str = PathParam(pattern="^[0-9a-f]{12}$")) -> dict[str, Any]:
        """Record "not duplicates" (keep absent) or "keep this one" (keep: an id, or a list of ids to keep
        several); trash_others moves the others to the server machine's trash (never a deletion)."""
        found = store.resolve(group, keep=body.keep, trash_others=body.trash_others)
        return {"group": found.id, "decision": "keep" if body.keep is not None else "not-duplicates"}

    @app.post("/api/duplicates/resolve-sure", dependencies=[Depends(may_change)])
    def resolve_sure(body: SureResolution) -> dict[str, Any]:
        """Keep the suggested photo of each of these groups, every one of them sure (every pair the same bytes
        or resized: `sure` in the listing), checked before any is resolved; trash_others as for one group."""
        done = store.resolve_sure(body.groups, trash_others=body.trash_others)
        return {"groups": [g.id for g in done], "trashed": sum(len(g.members) - 1 for g in done) if body.trash_others else 0}

    @app.post("/api/duplicates/{group}/split", dependencies=[Depends(may_change)])
    def split(body: Split, group: str = PathParam(pattern="^[0-9a-f]{12}$")) -> dict[str, Any]:
        """The group is several: each part (ids) stays linked inside, the members named in no part make one
        more; the parts are listed as groups of their own (undo joins them again)."""
        store.split(group, *body.parts)
        return {"group": group, "decision": "split"}

    @app.post("/api/duplicates/{group}/undo", dependencies=[Depends(may_change)])
    def undo(group: str = PathParam(pattern="^[0-9a-f]{12}$")) -> dict[str, Any]:
        """Take back the decision on a group: the photos it moved to the server machine's trash are put back
        and indexed again (freedesktop trash: Linux, BSD), and the group is listed again."""
        return store.undo(group).to_dict()

    @app.post("/api/index", dependencies=[Depends(may_change)], status_code=202)
    def start_index() -> dict[str, Any]:
        app.state.job.start(store)
        return app.state.job.snapshot()

    @app.get("/api/index")
    def index_status() -> dict[str, Any]:
        return app.state.job.snapshot()
