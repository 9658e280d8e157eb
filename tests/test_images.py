"""Decoding real edge cases, generated with Pillow."""

from __future__ import annotations

import io
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, JpegImagePlugin

from simsearch.errors import ImageError
from simsearch.formats import find_images
from simsearch.images import array_to_image, load_image

from .conftest import photo

SIZE = (32, 32)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims huge dimensions: what a decompression bomb looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _reason(source: object) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source, SIZE)
    return info.value.reason


def test_plain_jpeg_gives_uint8_at_model_size(tmp_path: Path) -> None:
    arr, info = load_image(photo(tmp_path / "a.jpg", 1), SIZE)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    assert (info.width, info.height, info.format) == (160, 120, "JPEG")


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = photo(tmp_path / "a.jpg", 1, (400, 300)).read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    assert "truncated" in _reason(tmp_path / "t.jpg")


def test_zero_bytes_and_text_named_jpg(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("this is not a photo\n")
    assert _reason(tmp_path / "empty.jpg") == "empty file (0 bytes)"
    assert _reason(tmp_path / "notes.jpg") == "not an image (format not recognised)"


def test_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg: empty file"):
        load_image(tmp_path / "empty.jpg", SIZE)


def _as_nobody(fn: Callable[[], str]) -> str:
    """fn() in a forked child that has dropped root for the nobody user, where root would read anything."""
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            out = fn()
        except BaseException as exc:
            out = f"child failed: {exc!r}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert "cannot read file" in _reason(tmp_path / "dangling.jpg")
    folder = Path(tempfile.mkdtemp())  # under /tmp, open to all: only the file itself is locked
    try:
        folder.chmod(0o755)
        locked = photo(folder / "locked.jpg", 2)
        locked.chmod(0)
        assert _as_nobody(lambda: _reason(locked)) == "cannot read file: Permission denied"
        locked.chmod(0o644)  # the same user reads it once allowed: the permission was the reason
        assert _as_nobody(lambda: str(load_image(locked, SIZE)[0].shape)) == "(32, 32, 3)"
    finally:
        shutil.rmtree(folder)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (64, 64), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg")  # pure cyan
    arr, _ = load_image(tmp_path / "cmyk.jpg", SIZE)
    r, g, b = arr.reshape(-1, 3).mean(0)
    assert r < 30 and g > 225 and b > 225


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey = np.full((40, 40), 32768, np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    arr, _ = load_image(tmp_path / "deep.png", SIZE)
    assert abs(int(arr.mean()) - 128) <= 1


def test_palette_with_transparency_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("P", (40, 40), 0)
    img.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    img.paste(1, (20, 0, 40, 40))
    img.save(tmp_path / "pal.png", transparency=0)  # the red left half is transparent
    arr, _ = load_image(tmp_path / "pal.png", SIZE)
    assert arr[16, 4].tolist() == [255, 255, 255]
    assert arr[16, 28].tolist() == [0, 0, 255]


def test_rgba_and_la_and_bilevel(tmp_path: Path) -> None:
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("LA", (20, 20), (0, 255)).save(tmp_path / "la.png")
    Image.new("1", (20, 20), 1).save(tmp_path / "bw.bmp")
    assert load_image(tmp_path / "clear.png", SIZE)[0].min() == 255
    assert load_image(tmp_path / "la.png", SIZE)[0].max() == 0
    assert load_image(tmp_path / "bw.bmp", SIZE)[0].min() == 255


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (30, 30), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    arr, info = load_image(tmp_path / "anim.gif", SIZE)
    assert info.format == "GIF"
    r, g, b = arr.reshape(-1, 3).mean(0)
    assert r > 240 and b < 15


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, 20:] = 255  # stored: black left, white right
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: left becomes top
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    arr, info = load_image(tmp_path / "rot.jpg", SIZE)
    assert (info.width, info.height) == (20, 40)
    assert arr[:12].mean() < 40 and arr[-12:].mean() > 215


def test_exif_date_taken(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2021:07:04 18:30:05"
    photo(tmp_path / "dated.jpg", 3, exif=exif.tobytes())
    _, info = load_image(tmp_path / "dated.jpg", SIZE)
    assert info.taken_at is not None and info.taken_at.isoformat() == "2021-07-04T18:30:05"


def test_huge_dimensions_refused_before_decoding(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(_png_claiming(100_000, 100_000))
    reason = _reason(tmp_path / "bomb.png")
    assert "100000x100000" in reason and "decompression bomb" in reason


@pytest.fixture()
def drafts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The sizes libjpeg decoded JPEGs at (Pillow's draft), as the product asked for them."""
    sizes: list[tuple[int, int]] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str, size: tuple[int, int]) -> object:
        out = real_draft(self, mode, size)
        sizes.append(self.size)
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return sizes


def test_large_jpeg_decoded_at_reduced_size(tmp_path: Path, drafts: list[tuple[int, int]]) -> None:
    src = photo(tmp_path / "big.jpg", 4, (2400, 1600), quality=90)
    arr, info = load_image(src, (224, 224))
    assert drafts == [(600, 400)]  # 1/4: the largest DCT reduction that keeps both sides >= 224
    assert (info.width, info.height) == (2400, 1600)
    full = np.asarray(Image.open(src).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR), np.float32)
    assert np.abs(arr.astype(np.float32) - full).mean() < 6  # same picture, within JPEG/scaling error


def test_center_crop_keeps_the_middle(tmp_path: Path) -> None:
    stored = np.zeros((20, 60, 3), np.uint8)
    stored[:, 20:40] = 255  # white middle third
    Image.fromarray(stored).save(tmp_path / "wide.png")
    crop, _ = load_image(tmp_path / "wide.png", SIZE, policy="center-crop")
    whole, _ = load_image(tmp_path / "wide.png", SIZE, policy="whole")
    assert crop.mean() > 250
    assert 60 < whole.mean() < 110


def test_bytes_pil_and_array_sources(tmp_path: Path) -> None:
    path = photo(tmp_path / "a.png", 5)
    from_path, _ = load_image(path, SIZE)
    from_bytes, _ = load_image(path.read_bytes(), SIZE)
    from_pil, _ = load_image(Image.open(path), SIZE)
    from_array, _ = load_image(array_to_image(np.asarray(Image.open(path))), SIZE)
    for other in (from_bytes, from_pil, from_array):
        assert np.array_equal(from_path, other)
    with pytest.raises(ImageError, match="not an image"):
        array_to_image(np.zeros((4, 4, 7)))


def test_find_images_recurses_filters_and_survives_symlink_loops(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    photo(root / "a.JPG", 1)
    photo(root / "sub" / "b.png", 2)
    photo(root / "sub" / "deeper" / "c.webp", 3, fmt="WEBP")
    photo(root / "ünïcode name with space.TIFF", 4, fmt="TIFF")
    (root / "notes.txt").write_text("x")
    (root / "sub" / "deeper" / "loop").symlink_to(root, target_is_directory=True)
    for name in ("s/x.jpg", "s-b.jpg", "s.jpg", "s0.jpg"):  # "-" < "." < "/" < "0": a folder amid its files
        photo(root / name, 5)
    found = [p.relative_to(root).as_posix() for p in find_images(root)]
    # the catalog's order (whole paths by code point), so a scan can merge the two without holding either
    assert found == ["a.JPG", "s-b.jpg", "s.jpg", "s/x.jpg", "s0.jpg", "sub/b.png", "sub/deeper/c.webp",
                     "ünïcode name with space.TIFF"]
    assert [str(p) for p in find_images(root)] == sorted(str(p) for p in find_images(root))
    with pytest.raises(ImageError, match="not a folder"):
        list(find_images(root / "a.JPG"))


def test_in_memory_probe_errors_have_no_path() -> None:
    with pytest.raises(ImageError) as info:
        load_image(b"GIF89a-not-really", SIZE)
    assert info.value.source is None
    assert str(info.value) == info.value.reason and info.value.reason.startswith(("cannot", "not an image"))


def test_bytes_io_roundtrip() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (50, 50), (10, 200, 30)).save(buf, "PNG")
    arr, info = load_image(buf.getvalue(), SIZE)
    assert info.format == "PNG" and arr[0, 0].tolist() == [10, 200, 30]


# How EXIF orientation N displays the stored pixels (TIFF/EXIF 2.3, tag 0x0112): as PIL's transposes.
_DISPLAY = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


@pytest.mark.parametrize("orientation", range(2, 9))
def test_reduced_size_jpeg_decoding_applies_every_exif_orientation(tmp_path: Path, drafts: list[tuple[int, int]],
                                                                   orientation: int) -> None:
    """A 2400x1600 photo stored turned, tagged so that it displays upright: decoded at a quarter size by
    libjpeg, the model still gets the upright photo, and the reported size is the displayed one."""
    upright = np.zeros((1600, 2400, 3), np.uint8)  # displayed: red top-left, green top-right, blue bottom
    upright[:800, :1200] = (230, 20, 20)
    upright[:800, 1200:] = (20, 230, 20)
    upright[800:, :] = (20, 20, 230)
    inverse = {Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90}
    how = _DISPLAY[orientation]
    stored = Image.fromarray(upright).transpose(inverse.get(how, how))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "turned.jpg", exif=exif.tobytes(), quality=90)
    shown = ImageOps.exif_transpose(Image.open(tmp_path / "turned.jpg")).convert("RGB")  # Pillow's reading of the tag
    assert np.abs(np.asarray(shown, np.float32) - upright).mean() < 3
    arr, info = load_image(tmp_path / "turned.jpg", (224, 224))
    assert drafts and max(drafts[-1]) == 600  # decoded at 1/4 of 2400
    assert (info.width, info.height) == (2400, 1600)
    want = np.asarray(Image.fromarray(upright).resize((224, 224), Image.Resampling.BILINEAR), np.float32)
    assert np.abs(arr.astype(np.float32) - want).mean() < 8


def test_a_file_too_large_to_hold_twice_is_hashed_and_decoded_from_the_file(tmp_path: Path) -> None:
    """A 500 MB file cost about 1 GB while indexing (its bytes, then its pixels): past stream_above it is
    hashed a chunk at a time and decoded from the file, with the same result."""
    import hashlib
    import tracemalloc

    from simsearch.prepare import Decoding, decode_file

    big = tmp_path / "big.bmp"  # uncompressed: 27 MB of file for 27 MB of pixels
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (3000, 3000, 3), dtype=np.uint8)).save(big)
    whole = Decoding((64, 64), "whole", 10**9)
    streamed = Decoding((64, 64), "whole", 10**9, stream_above=1 << 20)
    results = {}
    for name, decoding in (("whole", whole), ("streamed", streamed)):
        tracemalloc.start()
        results[name] = decode_file(str(big), decoding)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        results[name + "-peak"] = peak
    a, b = results["whole"], results["streamed"]
    assert a.error is None and b.error is None
    assert a.sha256 == b.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert a.fingerprint == b.fingerprint and a.info == b.info
    assert results["whole-peak"] > big.stat().st_size  # the file's bytes were held ...
    assert results["streamed-peak"] < big.stat().st_size / 2  # ... and here only a few chunks of them
    skipped = decode_file(str(big), streamed, lambda sha: False)  # content known: hashed, never decoded
    assert skipped.sha256 == a.sha256 and skipped.pixels is None


def test_libwebp_is_there_to_scale_webp_decodes() -> None:
    """Pillow's wheel carries libwebp; where it is missing every WebP would silently cost 3x the CPU."""
    from simsearch import webp

    assert webp.library() is not None


@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_a_large_webp_is_decoded_at_reduced_size_by_libwebp_and_upright(tmp_path: Path, orientation: int) -> None:
    """The same check as JPEG's: a 2400x1600 photo stored turned, tagged to display upright."""
    upright = np.zeros((1600, 2400, 3), np.uint8)
    upright[:800, :1200] = (230, 20, 20)
    upright[:800, 1200:] = (20, 230, 20)
    upright[800:, :] = (20, 20, 230)
    how = _DISPLAY.get(orientation)
    inverse = {Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90}
    stored = Image.fromarray(upright).transpose(inverse[how]) if how else Image.fromarray(upright)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "turned.webp", exif=exif.tobytes(), quality=90)
    from simsearch.images import load_photo

    arr, info, rgb = load_photo(tmp_path / "turned.webp", (224, 224))
    assert info.decoded_from == "scaled" and rgb.size == (336, 224)  # the smallest with both sides >= 224
    assert (info.width, info.height, info.format) == (2400, 1600, "WEBP")
    want = np.asarray(Image.fromarray(upright).resize((224, 224), Image.Resampling.BILINEAR), np.float32)
    assert np.abs(arr.astype(np.float32) - want).mean() < 8


def test_webp_with_alpha_small_or_animated_decodes_as_before(tmp_path: Path) -> None:
    from simsearch.images import load_photo

    rgba = np.zeros((800, 1200, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 600:, 3] = 255  # left half transparent: white once composited
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.webp", lossless=True)
    arr, info, _ = load_photo(tmp_path / "alpha.webp", (224, 224))
    assert info.decoded_from == "scaled"
    assert arr[:, :100].min() > 245 and np.abs(arr[:, 130:].astype(int) - (200, 0, 0)).max() < 4

    photo(tmp_path / "small.webp", seed=1)  # 160x120: no smaller picture to ask for
    assert load_photo(tmp_path / "small.webp", (224, 224))[1].decoded_from == "full"

    frames = [Image.new("RGB", (800, 600), c) for c in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], duration=100)
    arr, info, _ = load_photo(tmp_path / "anim.webp", (224, 224))
    assert info.decoded_from == "full" and arr[..., 0].mean() > 240  # Pillow's first frame, as for GIFs
