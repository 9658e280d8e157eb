"""WebP decoded at reduced size by libwebp itself.

libwebp scales while it converts decoded rows (WebPDecoderOptions.use_scaling): a 12 MP WebP reached a
224-pixel model input on 54.8 ms of CPU instead of 188.7 for Pillow's full decode (3.4x; Intel Xeon, 20
photos, bench/webp_avif_decode.py), its vectors at cosine >= 0.985 (mean 0.996) to the full decode's on
the trained stand-in. Pillow offers no scaled WebP decode and no maintained binding exposes the option (the
`webp` package declares only use_threads), so this calls libwebp's advanced decoding API through ctypes:
the copy Pillow's wheel carries (so it is the same library that would decode the file anyway), else the
system's. Where neither loads, or libwebp's own ABI check refuses these structures, the caller decodes in
full with Pillow: the result is the same photo, only slower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from pathlib import Path

import numpy as np
from PIL import Image

_ABI = 0x0209  # WEBP_DECODER_ABI_VERSION of libwebp 1.x (decode.h): libwebp refuses other layouts
_MODE_RGB, _MODE_RGBA = 0, 1  # WEBP_CSP_MODE


class _Features(ctypes.Structure):  # WebPBitstreamFeatures
    _fields_ = [("width", ctypes.c_int), ("height", ctypes.c_int), ("has_alpha", ctypes.c_int),
                ("has_animation", ctypes.c_int), ("format", ctypes.c_int), ("pad", ctypes.c_uint32 * 5)]


class _RGBA(ctypes.Structure):  # WebPRGBABuffer
    _fields_ = [("rgba", ctypes.POINTER(ctypes.c_uint8)), ("stride", ctypes.c_int), ("size", ctypes.c_size_t)]


class _YUVA(ctypes.Structure):  # WebPYUVABuffer: only its size matters here (a union member)
    _fields_ = [("planes", ctypes.c_void_p * 4), ("strides", ctypes.c_int * 4), ("sizes", ctypes.c_size_t * 4)]


class _Buffers(ctypes.Union):
    _fields_ = [("RGBA", _RGBA), ("YUVA", _YUVA)]


class _Output(ctypes.Structure):  # WebPDecBuffer
    _fields_ = [("colorspace", ctypes.c_int), ("width", ctypes.c_int), ("height", ctypes.c_int),
                ("is_external_memory", ctypes.c_int), ("u", _Buffers), ("pad", ctypes.c_uint32 * 4),
                ("private_memory", ctypes.c_void_p)]


class _Options(ctypes.Structure):  # WebPDecoderOptions
    _fields_ = [(name, ctypes.c_int) for name in (
        "bypass_filtering", "no_fancy_upsampling", "use_cropping", "crop_left", "crop_top", "crop_width",
        "crop_height", "use_scaling", "scaled_width", "scaled_height", "use_threads", "dithering_strength",
        "flip", "alpha_dithering_strength")] + [("pad", ctypes.c_uint32 * 5)]


class _Config(ctypes.Structure):  # WebPDecoderConfig
    _fields_ = [("input", _Features), ("output", _Output), ("options", _Options)]


_lock = threading.Lock()
_loaded: list[ctypes.CDLL | None] = []


def _candidates() -> list[str]:
    import PIL

    here = Path(PIL.__file__).resolve().parent
    bundled = sorted((here.parent / "pillow.libs").glob("libwebp-*.so*")) + sorted((here / ".dylibs").glob("libwebp*.dylib"))
    system = ctypes.util.find_library("webp")
    return [str(p) for p in bundled] + ([system] if system else [])


def library() -> ctypes.CDLL | None:
    """libwebp with its advanced decoding API, loaded once; None where there is none to load."""
    with _lock:
        if not _loaded:
            _loaded.append(_load())
        return _loaded[0]


def _load() -> ctypes.CDLL | None:
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            lib.WebPInitDecoderConfigInternal.argtypes = [ctypes.c_void_p, ctypes.c_int]
            lib.WebPGetFeaturesInternal.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int]
            lib.WebPDecode.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
            lib.WebPFreeDecBuffer.argtypes = [ctypes.c_void_p]
            lib.WebPFreeDecBuffer.restype = None
            config = _Config()
            if lib.WebPInitDecoderConfigInternal(ctypes.byref(config), _ABI):  # 0: a layout it does not know
                return lib
        except (OSError, AttributeError):
            continue
    return None


def scaled_decode(data: bytes, at_least: tuple[int, int]) -> Image.Image | None:
    """The still WebP in data as an RGB (or RGBA) image of the smallest size whose sides are both at least
    at_least (width, height) in the file's own orientation; None where libwebp cannot be used, the file is
    animated, not a WebP libwebp can read, or no larger than asked (then decode it with Pillow)."""
    lib = library()
    if lib is None:
        return None
    config = _Config()
    if not lib.WebPInitDecoderConfigInternal(ctypes.byref(config), _ABI):
        return None
    if lib.WebPGetFeaturesInternal(data, len(data), ctypes.byref(config.input), _ABI) != 0:
        return None
    width, height = config.input.width, config.input.height
    (want_w, want_h) = at_least
    if want_w * height >= want_h * width:  # the width binds; the other side rounded up, in integers
        scaled = (want_w, -(-height * want_w // width))
    else:
        scaled = (-(-width * want_h // height), want_h)
    if config.input.has_animation or scaled[0] >= width or scaled[1] >= height:
        return None
    alpha = bool(config.input.has_alpha)
    config.options.use_scaling = 1
    config.options.scaled_width, config.options.scaled_height = scaled
    config.output.colorspace = _MODE_RGBA if alpha else _MODE_RGB
    if lib.WebPDecode(data, len(data), ctypes.byref(config)) != 0:
        return None  # Pillow then decodes it, and says what is wrong with it if anything is
    try:
        out, channels = config.output, 4 if alpha else 3
        rows = np.ctypeslib.as_array(out.u.RGBA.rgba, (out.height, out.u.RGBA.stride))
        pixels = rows[:, : out.width * channels].reshape(out.height, out.width, channels).copy()
    finally:
        lib.WebPFreeDecBuffer(ctypes.byref(config.output))
    return Image.fromarray(pixels, "RGBA" if alpha else "RGB")
