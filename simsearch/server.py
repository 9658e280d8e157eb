"""HTTP API and web page: parse, call the store, render. Errors become status codes in one place.

Security by construction: files are served only by the id of an indexed image (no client path is ever
opened), uploads are bounded, anything beyond read-only queries needs the bearer token when one is set,
CORS is off unless origins are given, and `simsearch serve` binds to 127.0.0.1 by default.
"""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from .catalog import ImageFilter
from .errors import (
    EmptyStoreError,
    ImageError,
    ModelError,
    ModelMismatchError,
    NotFoundError,
    QueryError,
    SimsearchError,
    StoreError,
)
from .files import atomic_write
from .images import thumbnail_jpeg
from .results import Hit, Progress
from .store import Store

DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
THUMBNAIL_SIZE = 256
_STATUS: list[tuple[type[SimsearchError], int]] = [  # most specific first
    (NotFoundError, 404),
    (ImageError, 415),
    (QueryError, 422),
    (EmptyStoreError, 409),
    (ModelMismatchError, 409),
    (ModelError, 503),
    (StoreError, 503),
    (SimsearchError, 400),
]


class HTTPError(SimsearchError):
    """An error that already knows its status (bad token, oversize upload, busy)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_response(exc: SimsearchError) -> JSONResponse:
    """The one place where an error becomes an HTTP status (the handler and the upload bound both use it)."""
    status = exc.status if isinstance(exc, HTTPError) else next(c for t, c in _STATUS if isinstance(exc, t))
    return JSONResponse({"error": str(exc), "kind": type(exc).__name__}, status_code=status)


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
) -> FastAPI:
    """The ASGI app for one store; tests run it in-process, `simsearch serve` under uvicorn.

    preload: load the model in a background thread now, rather than on the first upload."""
    store = store if isinstance(store, Store) else Store(store, create=False)
    app = FastAPI(title="simsearch", version=__import__("simsearch").__version__,
                  description="Find similar photos in an indexed collection.")
    app.state.store = store
    app.state.job = IndexJob()
    app.state.model = ModelLoad()
    if preload:
        app.state.model.start(store)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(SimsearchError)
    async def _errors(_: Request, exc: SimsearchError) -> JSONResponse:
        return error_response(exc)

    @app.middleware("http")
    async def _bound_uploads(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_upload + 64 * 1024:
            return error_response(HTTPError(413, f"upload larger than {max_upload} bytes"))
        return await call_next(request)

    _page_routes(app, store)
    _query_routes(app, store, max_upload)
    _image_routes(app, store)
    _index_routes(app, store, token)
    return app


def _filter(
    folder: str | None = None,
    taken_from: datetime | None = None,
    taken_until: datetime | None = None,
    format: list[str] = Query(default=[]),
    min_pixels: int | None = Query(default=None, ge=1),
) -> ImageFilter | None:
    """Filters as query parameters; the folder is only matched against catalog paths, never opened."""
    f = ImageFilter(folder=folder, taken_from=taken_from, taken_until=taken_until, formats=tuple(format),
                    min_pixels=min_pixels)
    return f or None


def _hits(found: list[Hit]) -> list[dict[str, Any]]:
    return [h.to_dict() | {"thumbnail": f"/api/images/{h.id}/thumbnail", "file": f"/api/images/{h.id}/file"}
            for h in found]


def _page_routes(app: FastAPI, store: Store) -> None:
    page = resources.files("simsearch").joinpath("web/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page() -> str:
        return page

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness, and whether the model is ready ("loading" right after start)."""
        return {"ok": True, "images": store.stats().images, **app.state.model.snapshot()}

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        return store.stats().to_dict()


def _query_routes(app: FastAPI, store: Store, max_upload: int) -> None:
    @app.post("/api/query")
    def query_upload(image: UploadFile = File(...), k: int = Form(10, ge=1, le=1000),
                     f: ImageFilter | None = Depends(_filter)) -> list[dict[str, Any]]:
        # a plain def: FastAPI runs it in its thread pool, so the model never blocks the event loop
        data = image.file.read(max_upload + 1)
        if len(data) > max_upload:
            raise HTTPError(413, f"upload larger than {max_upload} bytes")
        return _hits(store.query(data, k=k, where=f))

    @app.get("/api/query")
    def query_id(id: int, k: int = 10, f: ImageFilter | None = Depends(_filter)) -> list[dict[str, Any]]:
        if not 1 <= k <= 1000:
            raise QueryError(f"k must be between 1 and 1000, got {k}")
        return _hits(store.query(id, k=k, where=f))

    @app.post("/api/query/vector")
    def query_vector(body: VectorQuery, f: ImageFilter | None = Depends(_filter)) -> list[dict[str, Any]]:
        import numpy as np

        return _hits(store.query(np.asarray(body.vector, np.float32), k=body.k, where=f))


def _image_routes(app: FastAPI, store: Store) -> None:
    thumbs = store.root / "thumbnails"

    def indexed_file(image_id: int) -> tuple[dict[str, Any], Path]:
        rec = store.get(image_id)
        if rec["status"] != "ok":
            raise NotFoundError(f"image {image_id} is not indexed ({rec['error']})")
        path = Path(rec["path"])  # from the catalog, never from the client
        if not path.is_file():
            raise NotFoundError(f"image {image_id} is no longer on disk")
        return rec, path

    @app.get("/api/images/{image_id}")
    def image_record(image_id: int) -> dict[str, Any]:
        return store.get(image_id)

    @app.get("/api/images/{image_id}/file")
    def image_file(image_id: int) -> FileResponse:
        _, path = indexed_file(image_id)
        return FileResponse(path, filename=path.name, content_disposition_type="inline")

    @app.get("/api/images/{image_id}/thumbnail")
    def image_thumbnail(image_id: int) -> FileResponse:
        rec, path = indexed_file(image_id)
        cached = thumbs / f"{image_id}-{(rec['sha256'] or 'x')[:16]}.jpg"
        if not cached.exists():
            thumbs.mkdir(exist_ok=True)
            atomic_write(cached, thumbnail_jpeg(path, THUMBNAIL_SIZE))
        return FileResponse(cached, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})


def _index_routes(app: FastAPI, store: Store, token: str | None) -> None:
    def require_token(authorization: str | None = Header(default=None)) -> None:
        if token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPError(401, "a valid bearer token is required for this")

    @app.post("/api/index", dependencies=[Depends(require_token)], status_code=202)
    def start_index() -> dict[str, Any]:
        app.state.job.start(store)
        return app.state.job.snapshot()

    @app.get("/api/index")
    def index_status() -> dict[str, Any]:
        return app.state.job.snapshot()
