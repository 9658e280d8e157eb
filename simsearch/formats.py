"""Which files are photos, which installed decoder opens each, and which files are junk to leave out.

A file is looked at when its extension is a photo format's, whether or not a decoder for it is
installed here: one without is recorded as a failure that names the package to install (never skipped
in silence). Decoders: Pillow (JPEG, PNG, WebP, GIF, TIFF, AVIF, ...), pillow-heif (HEIC/HEIF, the
iPhone's default), rawpy/LibRaw (camera RAW). Junk is what phones, NAS boxes and operating systems
leave beside photos: hidden files and folders, macOS AppleDouble `._*` files, Synology `@eaDir`, ...
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, features

from .errors import ImageError
from .paths import to_catalog

PILLOW_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".jp2", ".j2k", ".jpx", ".jpf", ".qoi", ".tga", ".pcx", ".ppm", ".pgm", ".pbm", ".pnm", ".psd",
})
AVIF_EXTENSIONS = frozenset({".avif", ".avifs"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
RAW_EXTENSIONS = frozenset({
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf", ".pef",
    ".srw", ".erf", ".kdc", ".dcr", ".mrw", ".3fr", ".iiq", ".x3f", ".rwl", ".mef", ".mos",
})
PHOTO_EXTENSIONS = PILLOW_EXTENSIONS | AVIF_EXTENSIONS | HEIF_EXTENSIONS | RAW_EXTENSIONS

# Folders that hold thumbnails, trash or metadata rather than photos (NAS boxes, Windows, macOS, tools).
JUNK_DIRS = frozenset({
    "@eaDir", "#recycle", "#snapshot", "$RECYCLE.BIN", "System Volume Information", "lost+found",
    "node_modules", "__pycache__", "@Recycle", "@Recently-Snapshot",
})
# Hidden ones (a leading dot: .thumbnails, .@__thumb, .Trash-1000, .git, ...) go with every hidden name.


@dataclass(frozen=True)
class Format:
    extension: str
    family: str  # pillow | avif | heif | raw
    decoder: str | None  # what opens it here; None: nothing installed does
    install: str  # what would open it


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules (None) counts as missing
        return False


@functools.cache
def register_decoders() -> None:
    """Plug optional decoders into Pillow once (pillow-heif registers an opener, its documented use)."""
    if _installed("pillow_heif"):
        import pillow_heif

        pillow_heif.register_heif_opener()


def _decoder(family: str) -> str | None:
    register_decoders()
    if family == "heif":
        return "pillow-heif" if "HEIF" in Image.OPEN else None
    if family == "avif":
        return "Pillow (AVIF)" if features.check("avif") or "AVIF" in Image.OPEN else None
    if family == "raw":
        return "rawpy (LibRaw)" if _installed("rawpy") else None
    return "Pillow"


_INSTALL = {"pillow": "pillow", "avif": "pillow>=11.3 (built with AVIF)", "heif": "pillow-heif", "raw": "rawpy"}


def family_of(extension: str) -> str | None:
    ext = extension.lower()
    for family, exts in (("raw", RAW_EXTENSIONS), ("heif", HEIF_EXTENSIONS), ("avif", AVIF_EXTENSIONS),
                         ("pillow", PILLOW_EXTENSIONS)):
        if ext in exts:
            return family
    return None


def supported_formats() -> list[Format]:
    """Every photo extension looked at, and what decodes it here (`simsearch formats`)."""
    return [Format(ext, fam, _decoder(fam), _INSTALL[fam])
            for ext in sorted(PHOTO_EXTENSIONS) if (fam := family_of(ext)) is not None]


@functools.cache
def _format_names() -> dict[str, str]:
    """What a user may type for a format (an extension or the name itself, lower case) -> the name the
    catalog records: Pillow's (JPEG, PNG, WEBP, ...), HEIF, AVIF, and a RAW file's extension (DNG, CR2)."""
    register_decoders()
    Image.init()
    pillow = Image.registered_extensions()
    names: dict[str, str] = {}
    for ext in sorted(PHOTO_EXTENSIONS):
        family = family_of(ext)
        name = {"raw": ext[1:].upper(), "heif": "HEIF", "avif": "AVIF"}.get(family or "") or pillow.get(ext)
        if name:
            names[ext[1:]] = name
            names.setdefault(name.lower(), name)
    return names


def catalog_format(typed: str) -> str:
    """The format name the catalog records for what a user typed, any case: an extension (jpg, .HEIC, cr2)
    or a format name (JPEG, heif). ValueError naming the known ones otherwise."""
    key = typed.strip().lower().lstrip(".")
    names = _format_names()
    if key in names:
        return names[key]
    known = sorted(set(names.values()))
    raise ValueError(f"unknown format {typed!r}: give a format name ({', '.join(known)}) or a file extension "
                     f"(jpg, heic, cr2, ...; `simsearch formats` lists them), in any case")


def check_decoder(name: str | None) -> str | None:
    """The photo's format family by its extension (None: not told by its name), or the failure a photo
    gets when no installed decoder opens its format."""
    ext = os.path.splitext(name or "")[1]
    family = family_of(ext)
    if family is not None and _decoder(family) is None:
        raise ImageError(name, f"no decoder for {ext} files is installed: pip install {_INSTALL[family]!r}")
    return family


def is_photo_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in PHOTO_EXTENSIONS


@dataclass(frozen=True)
class ScanOptions:
    """What a folder's scan leaves out, beyond junk: stored per folder, so re-runs, the server and
    watching make the same choice."""

    exclude: tuple[str, ...] = ()  # globs on a name or on the path relative to the folder
    include_hidden: bool = False

    def _excluded(self, rel: str, name: str) -> bool:
        return any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(rel, g.rstrip("/") + "/*")
                   for g in self.exclude)

    def keeps_dir(self, rel: str, name: str) -> bool:
        if name in JUNK_DIRS or (name.startswith(".") and not self.include_hidden):
            return False
        return not self._excluded(rel, name)

    def keeps_file(self, rel: str, name: str) -> bool:
        if name.startswith("._") or (name.startswith(".") and not self.include_hidden):
            return False  # AppleDouble files are never photos, hidden or not
        return is_photo_name(name) and not self._excluded(rel, name)

    def to_meta(self) -> dict[str, object]:
        return {"exclude": list(self.exclude), "include_hidden": self.include_hidden}

    @classmethod
    def from_meta(cls, meta: dict[str, object] | None) -> ScanOptions:
        if not meta:
            return cls()
        return cls(tuple(str(g) for g in meta.get("exclude", []) or []), bool(meta.get("include_hidden", False)))


def find_images(root: str | Path, options: ScanOptions = ScanOptions()) -> Iterator[Path]:
    """Photo files under root, recursively, in path order, junk and excluded files left out (see walk_images)."""
    for path, _entry in walk_images(root, options):
        yield Path(path)


def walk_images(root: str | Path, options: ScanOptions = ScanOptions(),
                unreadable: dict[str, str] | None = None) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(path, directory entry) of every photo file under root, in ascending order of the whole path string.

    That order is the catalog's (paths compare by code point of their stored text, simsearch.paths, as
    UTF-8 bytes do in SQLite and in PostgreSQL's "C" collation), so a scan can merge the listing with the
    catalog's sorted rows and hold neither in memory. Within a folder a subfolder sorts as its name plus "/", and its files come
    out together, which keeps the whole sequence sorted (no file name contains "/").

    Symlinked folders are followed once each (by device and inode), so a link loop ends the descent
    instead of recursing forever. Anything with a photo extension is yielded, even if it turns out
    unreadable: the indexer records why rather than silently skipping it. Folders that are there but
    cannot be listed (permission denied) go into `unreadable` (path -> reason) as the walk meets them,
    so that their photos are kept rather than taken for deleted.
    """
    top = os.fspath(root)
    if not os.path.isdir(top):
        raise ImageError(str(root), "not a folder")
    seen: set[tuple[int, int]] = set()

    def walk(folder: str, prefix: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = list(it)
        except FileNotFoundError:
            return  # a folder that vanished: its photos are gone
        except OSError as exc:  # there, but not listable now: nothing in it may count as deleted
            if unreadable is not None:
                unreadable[folder] = f"cannot list this folder: {exc.strerror or exc}; its photos are kept"
            return
        keyed = []
        for e in entries:
            try:
                is_dir = e.is_dir()  # follows links: a linked folder is walked like any other
            except OSError:
                is_dir = False
            if is_dir:
                if options.keeps_dir(prefix + e.name, e.name):
                    keyed.append((e.name + "/", e))
            elif options.keeps_file(prefix + e.name, e.name):
                keyed.append((e.name, e))
        keyed.sort(key=lambda k: to_catalog(k[0]))
        for key, e in keyed:
            if key[-1] == "/":
                yield from walk(e.path, prefix + key)
            else:
                yield e.path, e

    yield from walk(top, "")
