"""Turn any photo file into a model-ready RGB array (which files are photos: simsearch.formats).

Decoding is where real photo folders spend their time, so large JPEGs are decoded at reduced size
(libjpeg's DCT scaling through Pillow's ``draft``) before the final resize.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from .config import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS, RESIZE_POLICIES
from .errors import ImageError
from .files import read_bounded
from .formats import check_decoder, register_decoders
from .webp import scaled_decode

SCALED_DECODE = frozenset({"JPEG", "HEIF"})  # formats whose decoders can give a smaller picture (Image.draft)
# which picture fed the model, recorded per photo so that a change of decode policy can re-embed just the
# photos it changes: an embedded thumbnail or preview (HEIC, RAW), a reduced decode (JPEG's DCT scaling,
# libwebp's scaling, a RAW's half-size demosaic), or the full picture
DECODED_FROM = ("thumbnail", "scaled", "full")
_ORIENTATION_TAG = 0x0112
_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_DATETIME = 0x0132
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class ImageInfo:
    """What the file says about itself, before any resizing."""

    width: int  # as displayed, i.e. after EXIF orientation
    height: int
    format: str | None
    taken_at: datetime | None
    decoded_from: str | None = None  # one of DECODED_FROM (None: not known, e.g. from an older Ray worker)


_KINDS = [(stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")]


def read_file(path: str | Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes, at most max_bytes, or an ImageError with the reason every indexer records.

    Opened without blocking (a FIFO named like a photo cannot hang a job), links followed but only to a
    regular file (a link to /dev/zero is refused, not read without end), and the read is bounded."""
    with open_file(path, max_bytes) as f:
        try:
            return read_bounded(f, path, max_bytes)  # bounded again: it may grow while being read
        except OSError as exc:
            raise ImageError(path, f"cannot read file: {exc.strerror or exc}") from exc


def open_file(path: str | Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> BinaryIO:
    """A regular file of at most max_bytes, opened as read_file opens it, for a caller that streams it
    (a file too large to hold twice in memory); the caller closes it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ImageError(path, f"cannot read file: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
            raise ImageError(path, f"not a regular file: {kind}, refused")
        if st.st_size > max_bytes:
            raise ImageError(path, f"file is {st.st_size} bytes, over the limit of {max_bytes} bytes")
        return os.fdopen(fd, "rb")
    except OSError as exc:
        os.close(fd)
        raise ImageError(path, f"cannot read file: {exc.strerror or exc}") from exc
    except BaseException:
        os.close(fd)
        raise


def _open(source: str | Path | bytes | BinaryIO | Image.Image, name: str | None = None,
          draft_to: tuple[int, int] = (0, 0)) -> tuple[Image.Image, str | None]:
    """Open lazily (header only; RAW decodes at once); returns the image and a name for error messages.
    name: the file's name when source is its bytes (RAW and missing decoders are told by extension)."""
    if isinstance(source, Image.Image):
        return source, None
    data: bytes | BinaryIO
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, io.IOBase):  # an open file, read as Pillow needs it rather than held whole
        source.seek(0)
        data = source if os.fstat(source.fileno()).st_size else b""
    else:
        name = str(source)
        data = read_file(source)
    if not data:
        raise ImageError(name, "empty file (0 bytes)")
    family = check_decoder(name)
    register_decoders()
    if family == "raw":
        return _open_raw(data if isinstance(data, bytes) else data.read(), name, draft_to), name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data), name
            except Image.DecompressionBombError:
                return _open_unchecked(data), name  # refused or not by our own max_pixels, with its message
    except UnidentifiedImageError as exc:
        raise ImageError(name, "not an image (format not recognised)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(name, f"cannot parse image header: {exc}") from exc


_RAW_FLIP = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


def _open_raw(data: bytes, name: str, draft_to: tuple[int, int]) -> Image.Image:
    """A camera RAW file as an oriented RGB image: its embedded JPEG preview when that is at least the size
    asked for (fast), else LibRaw's half-size demosaic. `info["full_size"]` keeps the sensor image's size."""
    import rawpy

    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            flip = raw.sizes.flip
            full = (raw.sizes.width, raw.sizes.height)
            img, taken = _raw_preview(raw, draft_to), None
            if img is not None:
                taken = _exif(img)[1]
                img = Image.fromarray(np.asarray(img.convert("RGB")))  # the preview's own EXIF is not the RAW's
                source = "thumbnail"
            else:
                img = Image.fromarray(raw.postprocess(half_size=True, user_flip=0, output_bps=8))
                source = "scaled"
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        raise ImageError(name, f"cannot decode RAW file: {exc}") from exc
    if flip in _RAW_FLIP:
        img = img.transpose(_RAW_FLIP[flip])
        if flip in (5, 6):
            full = (full[1], full[0])
    if taken is not None:
        exif = Image.Exif()
        exif[_DATETIME] = taken.strftime("%Y:%m:%d %H:%M:%S")
        img.info["exif"] = exif.tobytes()
    img.info["full_size"] = full
    img.info["decoded_from"] = source
    img.format = os.path.splitext(name)[1].lstrip(".").upper()
    return img


def _raw_preview(raw: object, draft_to: tuple[int, int]) -> Image.Image | None:
    import rawpy

    try:
        thumb = raw.extract_thumb()  # type: ignore[attr-defined]
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format != rawpy.ThumbFormat.JPEG:
        return None
    img = Image.open(io.BytesIO(thumb.data))
    return img if min(img.size) >= min(draft_to) else None


def _open_unchecked(data: bytes | BinaryIO) -> Image.Image:
    """Open a header that Pillow's Image.open refuses over its global MAX_IMAGE_PIXELS. simsearch applies
    its own limit (max_pixels, per call, with a message that gives the dimensions), so it asks the format
    plugins directly, as Image.open does, rather than change Pillow's global setting for the whole process."""
    Image.init()
    fp = io.BytesIO(data) if isinstance(data, bytes) else data
    fp.seek(0)
    prefix = fp.read(16)
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        if accept is not None and accept(prefix) is not True:
            continue
        try:
            fp.seek(0)
            return factory(fp, None)
        except (SyntaxError, IndexError, TypeError, ValueError, OSError, struct.error):
            continue
    raise UnidentifiedImageError("cannot identify image file")


def _parse_exif_date(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value.strip("\x00 ").strip(), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


def _exif(img: Image.Image) -> tuple[int, datetime | None]:
    """EXIF orientation (1 when absent or bogus) and the date taken, tolerating broken EXIF blocks."""
    try:
        exif = img.getexif()
    except Exception:  # malformed EXIF must not cost the photo itself
        return 1, None
    orientation = exif.get(_ORIENTATION_TAG, 1)
    if orientation not in _TRANSPOSE:
        orientation = 1
    taken = None
    try:
        taken = _parse_exif_date(exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL))
    except Exception:
        pass
    if taken is None:
        taken = _parse_exif_date(exif.get(_DATETIME))
    return orientation, taken


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white, 16-bit scaled, not clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info or mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode == "F":
            top = 1.0 if float(arr.max(initial=0.0)) <= 1.0 else 255.0
        else:
            top = 255.0 if int(arr.max(initial=0)) <= 255 else 65535.0
        grey = np.clip(arr.astype(np.float32) * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return img.convert("RGB")


def _fit(img: Image.Image, size: tuple[int, int], policy: str) -> Image.Image:
    """Resize to (height, width): the whole image squashed, or the central crop of the target's aspect."""
    height, width = size
    box = None
    if policy == "center-crop":
        w, h = img.size
        scale = min(w / width, h / height)
        cw, ch = width * scale, height * scale
        left, top = (w - cw) / 2, (h - ch) / 2
        box = (left, top, left + cw, top + ch)
    elif policy != "whole":
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")
    return img.resize((width, height), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)


@contextmanager
def _decode_errors(name: str | None) -> Iterator[None]:
    """Whatever Pillow raises while decoding becomes one ImageError with the file and the reason."""
    try:
        yield
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(name, f"refused as a decompression bomb: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        text = str(exc) or type(exc).__name__
        if "truncated" in text.lower():
            text = f"truncated image data ({text})"
        raise ImageError(name, f"cannot decode image: {text}") from exc


def _file_bytes(img: Image.Image) -> bytes:
    """The bytes of the file an image was opened from (Pillow keeps it open until the image is loaded)."""
    fp = img.fp
    if isinstance(fp, io.BytesIO):
        return fp.getvalue()
    fp.seek(0)
    return fp.read()


def _decode(
    source: str | Path | bytes | BinaryIO | Image.Image, draft_to: tuple[int, int], max_pixels: int, name: str | None = None
) -> tuple[Image.Image, ImageInfo, str | None]:
    """Open, refuse bombs, take the first frame, decode JPEGs reduced (and HEICs from their thumbnail) to
    no less than draft_to (width, height as displayed), apply EXIF orientation and convert to RGB."""
    img, name = _open(source, name, draft_to)
    with _decode_errors(name):
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ImageError(name, f"invalid dimensions {w}x{h}")
        if w * h > max_pixels:
            raise ImageError(
                name,
                f"image is {w}x{h} ({w * h / 1e6:.0f} megapixels), over the limit of "
                f"{max_pixels / 1e6:.0f} megapixels (decompression bomb guard)",
            )
        orientation, taken = _exif(img)
        fmt = img.format
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        if fmt in SCALED_DECODE:
            # the smallest picture the file holds with both sides >= the target: a JPEG scaled in the DCT
            # domain by 1/2, 1/4 or 1/8; a HEIC's embedded thumbnail (phones write 320x240), if it is a
            # scaled copy of the photo that large (pillow-heif checks), else the full decode
            img.draft("RGB", draft_to if orientation < 5 else (draft_to[1], draft_to[0]))
        elif fmt == "WEBP" and getattr(img, "n_frames", 1) == 1:  # libwebp scales as it decodes (simsearch.webp)
            small = scaled_decode(_file_bytes(img), draft_to if orientation < 5 else (draft_to[1], draft_to[0]))
            img = small if small is not None else img
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
        source = img.info.get("decoded_from") or (
            "full" if img.size == (w, h) else "thumbnail" if fmt == "HEIF" else "scaled")
        if orientation != 1:
            img = img.transpose(_TRANSPOSE[orientation])
        rgb = _to_rgb(img)
    if orientation >= 5:
        w, h = h, w
    w, h = img.info.get("full_size", (w, h))  # a RAW file's sensor image, not its preview
    return rgb, ImageInfo(width=w, height=h, format=fmt, taken_at=taken, decoded_from=source), name


def load_image(
    source: str | Path | bytes | BinaryIO | Image.Image,
    size: tuple[int, int],
    *,
    policy: str = "whole",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> tuple[np.ndarray, ImageInfo]:
    """Decode, orient, convert and resize one image to uint8 [height, width, 3].

    name: the file's name when source is its bytes (the format of a RAW file is told by its extension).
    Every failure is an ImageError naming the file and the reason.
    """
    pixels, info, _ = load_photo(source, size, policy=policy, max_pixels=max_pixels, name=name)
    return pixels, info


def load_photo(
    source: str | Path | bytes | BinaryIO | Image.Image,
    size: tuple[int, int],
    *,
    policy: str = "whole",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> tuple[np.ndarray, ImageInfo, Image.Image]:
    """As load_image, and the upright RGB photo it was resized from (decoded at reduced size, each side
    no less than the model's), for what else is taken from the same decode (a duplicate fingerprint)."""
    rgb, info, name = _decode(source, (size[1], size[0]), max_pixels, name)
    with _decode_errors(name):
        return np.asarray(_fit(rgb, size, policy), dtype=np.uint8), info, rgb


def array_to_image(arr: np.ndarray) -> Image.Image:
    """Accept HxW, HxWx1/3/4 arrays, uint8 or float in [0,1], as a probe image."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageError(None, f"array of shape {a.shape} is not an image (expected HxW, HxWx3 or HxWx4)")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise ImageError(None, f"array dtype {a.dtype} is not an image (expected uint8 or float in [0,1])")
        a = (np.clip(a, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return Image.fromarray(a)


def to_model_input(batch: np.ndarray) -> np.ndarray:
    """uint8 [N,H,W,3] -> float32 in [0,1], the range the Inception module expects."""
    return np.multiply(batch, np.float32(1.0 / 255.0), dtype=np.float32)


def thumbnail_jpeg(source: str | Path | bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                   name: str | None = None) -> bytes:
    """A JPEG thumbnail as the photo is meant to be seen: EXIF-oriented, alpha on white, reduced decode.
    name: the file's name when source is its bytes (a RAW file is told by its extension)."""
    rgb, _, name = _decode(source, (size, size), max_pixels, name)
    with _decode_errors(name):
        rgb.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=85)
        return buf.getvalue()
