"""Keep a store up to date by itself: follow its folders with filesystem events.

On start, one incremental pass over every folder picks up whatever changed while nothing watched.
Then filesystem events (watchdog: inotify, FSEvents, ReadDirectoryChangesW) mark the folder they
happen in; once a folder has been quiet for `debounce` seconds it gets an incremental pass, which
adds, re-embeds, moves and removes exactly as `simsearch index` does (it stats the folder's files and
reads only those that changed). A folder whose root disappears (an unmounted disk) is left alone,
nothing removed from the store, and watched again when it comes back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import SimsearchError, StoreError
from .formats import is_photo_name
from .results import IndexReport
from .store import Store

log = logging.getLogger(__name__)

DEFAULT_DEBOUNCE_S = 2.0


class FolderWatcher:
    """Watches a store's folders until `stop` is set; `on_report` hears of every pass that changed something."""

    def __init__(self, store: Store, *, debounce: float = DEFAULT_DEBOUNCE_S,
                 on_report: Callable[[IndexReport], None] | None = None) -> None:
        self.store, self.debounce, self.on_report = store, debounce, on_report
        self._dirty: dict[str, float] = {}  # folder -> time of its last event
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._watched: dict[str, Any] = {}
        self.ready = threading.Event()  # set once the first pass is done and events are followed
        self.running = False
        self.error: str | None = None  # why it stopped, when something unforeseen stopped it

    def snapshot(self) -> dict[str, Any]:
        """For /healthz: whether the folders are followed now, and if not, why."""
        return {"watching": self.running, "watch_error": self.error}

    def run(self, stop: threading.Event) -> None:
        """Until stop is set. A failure nobody foresaw ends it, never silently: logged, and kept in `error`."""
        self.running, self.error = True, None
        try:
            self._run(stop)
        except BaseException as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("watching stopped: %s", self.error)
            raise
        finally:
            self.running = False

    def _run(self, stop: threading.Event) -> None:
        from watchdog.observers import Observer

        observer = Observer()
        observer.start()
        try:
            with self._lock:
                self._dirty = {f: 0.0 for f in self.store.folders()}  # the first pass: all of them
            while not stop.is_set():
                self._follow(observer)
                self._index_quiet_folders()
                if not self.ready.is_set() and not self._dirty:
                    self.ready.set()
                self._wake.wait(min(1.0, self.debounce))
                self._wake.clear()
        finally:
            observer.stop()
            observer.join(timeout=5)

    def _follow(self, observer: Any) -> None:
        """Watch each folder that is there; let go of one whose root is gone, and take it back when it returns."""
        for folder in self.store.folders():
            there = Path(folder).is_dir()
            if there and folder not in self._watched:
                self._watched[folder] = observer.schedule(_Handler(self, folder), folder, recursive=True)
                self.mark(folder)  # whatever happened while it was not watched
            elif not there and folder in self._watched:
                log.warning("folder %s is missing: not watched until it is back; nothing removed from the store", folder)
                try:
                    observer.unschedule(self._watched.pop(folder))
                except (KeyError, OSError, RuntimeError):
                    pass

    def mark(self, folder: str) -> None:
        with self._lock:
            self._dirty[folder] = time.monotonic()
        self._wake.set()

    def _index_quiet_folders(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [f for f, t in self._dirty.items() if now - t >= self.debounce]
            for f in due:
                del self._dirty[f]
        for folder in due:
            if not Path(folder).is_dir():
                continue  # unmounted: its photos stay
            try:
                report = self.store.index(folder)
            except StoreError as exc:  # busy (another writer): try again after the next quiet spell
                log.warning("could not update %s now (%s); trying again", folder, exc)
                self.mark(folder)
                continue
            except SimsearchError as exc:
                log.error("updating %s failed: %s", folder, exc)
                continue
            changed = report.added + report.updated + report.moved + report.removed + report.failed
            if changed and self.on_report is not None:
                self.on_report(report)


class _Handler:
    """watchdog's callback: marks the folder when a photo (or a folder that may hold photos) changes."""

    def __init__(self, watcher: FolderWatcher, folder: str) -> None:
        self.watcher, self.folder = watcher, folder
        self.store_root = str(watcher.store.root)

    def dispatch(self, event: Any) -> None:
        paths = [p for p in (getattr(event, "src_path", ""), getattr(event, "dest_path", "")) if p]
        for p in map(str, paths):
            if p == self.store_root or p.startswith(self.store_root + "/"):
                continue  # the store's own files, when it lives inside the folder
            if event.is_directory or is_photo_name(p):
                self.watcher.mark(self.folder)
                return
