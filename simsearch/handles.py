"""Model handles without TensorFlow: where a module's files are, what they are, where compiled models live.

A module is identified by its content, not its path: the fingerprint is a SHA-256 over the module's
graph and variable files (names and bytes), so a URL, the unpacked folder and a moved copy of it are
the same model, and any changed weight is another. Computing it reads the files once; the result is
cached beside the compiled models, keyed by the folder and its files' sizes and times.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import ModelError

REMOTE_PREFIXES = ("http://", "https://", "gs://", "s3://")
CACHE_ENV = "SIMSEARCH_CACHE_DIR"
# Files of a SavedModel that say nothing about the network: TF's own fingerprint.pb holds a fresh UUID.
_NOT_CONTENT = ("fingerprint.pb",)


def is_remote(handle: str) -> bool:
    return handle.startswith(REMOTE_PREFIXES)


def normalize_handle(handle: str | os.PathLike[str]) -> str:
    """URLs stay as they are; local module folders become absolute, so a store records where they are."""
    text = os.fspath(handle)
    if is_remote(text):
        return text
    return str(Path(text).expanduser().resolve())


def cache_dir() -> Path:
    """$SIMSEARCH_CACHE_DIR, else the platform's per-user cache folder (~/.cache/simsearch on Linux)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("simsearch", appauthor=False))


def tfhub_module_dir(handle: str) -> Path:
    """Where tensorflow-hub keeps a downloaded module: tfhub_cache()/sha1(handle), as its resolver computes it."""
    return tfhub_cache() / hashlib.sha1(handle.encode("utf8")).hexdigest()


def tfhub_cache() -> Path:
    """$TFHUB_CACHE_DIR, else tfhub_modules in simsearch's cache folder (not the temp folder, which a reboot
    empties); simsearch.hub hands it to tensorflow-hub before importing it."""
    return Path(os.environ.get("TFHUB_CACHE_DIR") or cache_dir() / "tfhub_modules")


def local_module_dir(handle: str) -> Path | None:
    """The folder holding the module's files, if they are on this machine now (no download)."""
    if not is_remote(handle):
        folder = Path(handle)
        return folder if folder.is_dir() else None
    folder = tfhub_module_dir(handle)
    complete = folder.is_dir() and any(folder.iterdir()) and not Path(f"{folder}.lock").exists()
    return folder if complete else None


def _content_files(folder: Path) -> list[tuple[str, Path, os.stat_result]]:
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and path.name not in _NOT_CONTENT and not any(p.startswith(".") for p in rel.split("/")):
            found.append((rel, path, path.stat()))
    return found


def fingerprint(folder: str | os.PathLike[str]) -> str:
    """'sha256:HEX' over the module's files (relative names and bytes, in name order)."""
    folder = Path(folder).resolve()
    files = _content_files(folder)
    if not any(rel in ("saved_model.pb", "saved_model.pbtxt") for rel, _, _ in files):
        raise ModelError(f"{folder} is not a TF-Hub module or SavedModel (no saved_model.pb)")
    stamp = [[rel, st.st_size, st.st_mtime_ns] for rel, _, st in files]
    memo = cache_dir() / "fingerprints" / f"{hashlib.sha1(str(folder).encode()).hexdigest()}.json"
    try:
        saved = json.loads(memo.read_text())
        if saved["folder"] == str(folder) and saved["files"] == stamp:
            return str(saved["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = hashlib.sha256()
    for rel, path, st in files:
        digest.update(f"{rel}\0{st.st_size}\0".encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    value = f"sha256:{digest.hexdigest()}"
    try:
        from .files import atomic_write

        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(memo, json.dumps({"folder": str(folder), "files": stamp, "fingerprint": value}).encode())
    except OSError:
        pass  # a read-only cache costs a re-hash next time, nothing else
    return value


def local_fingerprint(handle: str) -> str | None:
    """The fingerprint of a handle whose files are on this machine, else None (a URL not downloaded yet)."""
    folder = local_module_dir(handle)
    return fingerprint(folder) if folder is not None else None
