"""Phone and camera formats (HEIC, AVIF, DNG) end to end, and the junk a real photo folder holds.

Fixtures are written here: pillow-heif writes HEIC, Pillow AVIF, PiDNG a DNG (a Bayer mosaic LibRaw
demosaics). Each is stored rotated with an orientation tag, so only a decoder that honours it gives the
upright photo back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

import simsearch
from simsearch.cli import main
from simsearch.config import Settings
from simsearch.embedder import HubEmbedder
from simsearch.formats import PHOTO_EXTENSIONS, ScanOptions, find_images, register_decoders, supported_formats
from simsearch.images import load_image, load_photo
from simsearch.server import create_app

from .conftest import photo

W, H = 240, 160  # upright: landscape, a bright band along the top


def _upright(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((H, W, 3), 40, np.uint8)
    img[: H // 4] = 230  # the top band: where "up" is
    img[H // 4 :, : W // 3] = rng.integers(60, 200, 3)
    return img


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x0132] = "2021:05:06 07:08:09"
    return exif.tobytes()


def _write_dng(path: Path, upright: np.ndarray) -> None:
    """A 12-bit BGGR mosaic of the photo turned 90 degrees, tagged Orientation 6 (rotate to display)."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, PhotometricInterpretation

    stored = np.rot90(upright, k=1).astype(np.uint16) * 16  # as a sensor held upright in portrait saw it
    h, w = stored.shape[:2]
    mosaic = np.empty((h, w), np.uint16)
    mosaic[0::2, 0::2] = stored[0::2, 0::2, 2]
    mosaic[0::2, 1::2] = stored[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = stored[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = stored[1::2, 1::2, 0]
    t = DNGTags()
    for tag, value in [(Tag.ImageWidth, w), (Tag.ImageLength, h), (Tag.TileWidth, w), (Tag.TileLength, h),
                       (Tag.Orientation, 6),  # TIFF orientation 6: rotate 90 degrees clockwise to display
                       (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
                       (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 12), (Tag.CFARepeatPatternDim, [2, 2]),
                       (Tag.CFAPattern, CFAPattern.BGGR), (Tag.BlackLevel, 0), (Tag.WhiteLevel, 4095),
                       (Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]]),
                       (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
                       (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]), (Tag.Make, "simsearch"), (Tag.Model, "test"),
                       (Tag.DNGVersion, DNGVersion.V1_4), (Tag.DNGBackwardVersion, DNGVersion.V1_2)]:
        t.set(tag, value)
    raw = RAW2DNG()
    raw.options(t, path="", compress=False)
    raw.convert(mosaic, filename=str(path.with_suffix("")))


def _write(folder: Path, name: str, seed: int) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    upright = _upright(seed)
    if path.suffix == ".dng":
        _write_dng(path, upright)
        return path
    register_decoders()  # pillow-heif's writer too
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back
    fmt = {".heic": "HEIF", ".avif": "AVIF", ".jpg": "JPEG"}[path.suffix]
    stored.save(path, fmt, exif=_exif(6), quality=90)
    return path


def _top_is_bright(pixels: np.ndarray) -> bool:
    rows = pixels.mean(axis=(1, 2))
    cols = pixels.mean(axis=(0, 2))
    return rows[: len(rows) // 5].mean() > rows[len(rows) // 2 :].mean() + 60 and np.ptp(cols) < np.ptp(rows)


@pytest.mark.parametrize("name", ["phone.heic", "phone.avif", "camera.dng", "plain.jpg"])
def test_each_format_decodes_upright_with_its_displayed_size(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name, seed=1)
    pixels, info = load_image(path, (64, 64))
    assert (info.width, info.height) == (W, H), info
    assert _top_is_bright(pixels), f"{name} is not upright"
    if name != "camera.dng":  # a DNG written here carries no EXIF date
        assert info.taken_at is not None and info.taken_at.year == 2021


def test_phone_and_camera_photos_index_query_themselves_and_get_thumbnails(tmp_path: Path,
                                                                           tiny_embedder: HubEmbedder) -> None:
    folder = tmp_path / "library"
    names = ["phone.heic", "phone.avif", "camera.dng", "plain.jpg"]
    paths = [_write(folder, n, seed=i) for i, n in enumerate(names)]
    with simsearch.open(tmp_path / "store", model=tiny_embedder, settings=Settings(batch_size=2), create=True) as store:
        report = store.index(folder)
        assert (report.added, report.failed) == (4, 0), store.failures()
        client = TestClient(create_app(store, preload=False), base_url="http://localhost")
        for path in paths:
            copy = shutil.copy(path, tmp_path / f"probe{path.suffix}")  # not indexed: decoded and embedded
            hits = store.query(copy, k=4)
            assert hits[0].path == str(path) and hits[0].score > 0.9999
            assert (hits[0].width, hits[0].height) == (W, H)
            thumb = client.get(f"/api/images/{hits[0].id}/thumbnail")
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
            with Image.open(__import__("io").BytesIO(thumb.content)) as t:
                assert t.size[0] > t.size[1]  # landscape, as displayed
        hits = store.query(paths[3], k=4)
    assert {h.path.rsplit(".", 1)[1]: h.format for h in hits} == {"heic": "HEIF", "avif": "AVIF", "dng": "DNG",
                                                                 "jpg": "JPEG"}
    # which picture fed the model: a 240x160 JPEG at 1/2 scale for a 64-pixel model, a DNG without a
    # preview by LibRaw's half-size demosaic, HEIC without a thumbnail and AVIF in full
    assert {h.path.rsplit(".", 1)[1]: h.decoded_from for h in hits} == {"heic": "full", "avif": "full",
                                                                       "dng": "scaled", "jpg": "scaled"}


def test_a_format_without_its_decoder_is_a_failure_that_names_the_package(
        tmp_path: Path, tiny_embedder: HubEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "library"
    _write(folder, "camera.dng", seed=1)
    _write(folder, "plain.jpg", seed=2)
    monkeypatch.setitem(sys.modules, "rawpy", None)  # as if rawpy were not installed
    assert {f.extension: f.decoder for f in supported_formats()}[".dng"] is None
    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True) as store:
        report = store.index(folder)
        failures = store.failures()
    assert (report.added, report.failed) == (1, 1)
    assert failures[0].path.endswith("camera.dng") and "pip install 'rawpy'" in failures[0].reason


def test_formats_command_lists_every_extension_with_its_decoder() -> None:
    r = CliRunner().invoke(main, ["formats", "--json"])
    assert r.exit_code == 0, r.output
    found = {f["extension"]: f["decoder"] for f in json.loads(r.output)}
    assert set(found) == PHOTO_EXTENSIONS
    assert found[".heic"] == "pillow-heif" and found[".cr2"] == "rawpy (LibRaw)" and found[".avif"]
    assert found[".jpg"] == "Pillow"


JUNK = ["._db_1.jpg", ".thumbnails/t.jpg", "@eaDir/db_1.jpg/SYNOFILE_THUMB_M.jpg", "#recycle/old.jpg",
        "$RECYCLE.BIN/S-1-5/x.jpg", ".@__thumb/db_1.jpg", ".hidden.jpg", "node_modules/icon.png"]


def _junk_folder(root: Path) -> Path:
    photo(root / "db_1.jpg", seed=1)
    photo(root / "sub" / "db_2.png", seed=2)
    photo(root / "Screenshots" / "s.png", seed=3)
    for i, name in enumerate(JUNK):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.startswith("._"):
            path.write_bytes(b"\x00\x05\x16\x07AppleDouble metadata, not a JPEG")
        else:
            photo(path, seed=10 + i)
    (root / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
    return root


def test_junk_is_left_out_by_default_and_listed_nowhere(tmp_path: Path, tiny_embedder: HubEmbedder) -> None:
    root = _junk_folder(tmp_path / "nas")
    found = [p.relative_to(root).as_posix() for p in find_images(root)]
    assert found == ["Screenshots/s.png", "db_1.jpg", "sub/db_2.png"]  # path order
    with simsearch.open(tmp_path / "store", model=tiny_embedder, create=True) as store:
        report = store.index(root)
        assert (report.added, report.failed) == (3, 0) and store.failures() == []


def test_excludes_and_hidden_files_are_remembered_per_folder(tmp_path: Path, tiny_module: Path) -> None:
    root = _junk_folder(tmp_path / "nas")
    store = ["--store", str(tmp_path / "store")]
    r = CliRunner().invoke(main, ["index", str(root), *store, "--model", str(tiny_module), "--exclude", "Screenshots",
                                  "--include-hidden", "--json"])
    assert r.exit_code == 0, r.output
    # hidden files come in; AppleDouble files and NAS/OS junk folders never do
    assert (json.loads(r.stdout)["added"], json.loads(r.stdout)["failed"]) == (5, 0)
    again = json.loads(CliRunner().invoke(main, ["index", str(root), *store, "--json"]).stdout)
    assert (again["unchanged"], again["removed"], again["added"]) == (5, 0, 0)  # the same choices, remembered
    with simsearch.open(tmp_path / "store", create=True) as s:
        assert s.scan_options(str(root.resolve())) == ScanOptions(("Screenshots",), True)
    back = json.loads(CliRunner().invoke(main, ["index", str(root), *store, "--skip-hidden", "--exclude", "sub",
                                                "--json"]).stdout)
    assert (back["removed"], back["added"]) == (4, 1)  # hidden ones and sub/ leave, Screenshots/ returns


HEIF_ENC = shutil.which("heif-enc")


def _phone_heic(path: Path, source: Path | None, size: tuple[int, int], thumbnail: int | None) -> Path:
    """A HEIC as a phone writes it: libheif's own encoder, with (`-t 320`) or without an embedded thumbnail,
    of `source` scaled to `size` (or of a synthetic photo)."""
    if HEIF_ENC is None:
        reason = "heif-enc not installed (apt-get install libheif-examples): it writes HEIC thumbnails as phones do"
        if os.environ.get("CI"):
            pytest.fail(reason)  # .ci/run installs it
        pytest.skip(reason)
    png = path.with_suffix(".png")
    if source is None:
        photo(png, seed=7, size=size)
    else:
        with Image.open(source) as img:
            img.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(png)
    subprocess.run([HEIF_ENC, "-q", "90", *(["-t", str(thumbnail)] if thumbnail else []), "-o", str(path), str(png)],
                   check=True, capture_output=True)
    return path


def test_a_heic_feeds_the_model_from_its_thumbnail_when_that_is_large_enough(tmp_path: Path) -> None:
    """Decoding a 12 MP HEIC in full took 509 ms to feed a 224-pixel model; phones embed a 320x240 thumbnail."""
    with_thumb = _phone_heic(tmp_path / "thumb.heic", None, (1600, 1200), thumbnail=320)
    without = _phone_heic(tmp_path / "plain.heic", None, (1600, 1200), thumbnail=None)
    _, info, rgb = load_photo(with_thumb.read_bytes(), (224, 224), name=str(with_thumb))
    assert rgb.size == (320, 240) and (info.width, info.height) == (1600, 1200)  # the photo's size all the same
    _, full_info, full_rgb = load_photo(without.read_bytes(), (224, 224), name=str(without))
    assert full_rgb.size == (1600, 1200) and full_info == replace(info, decoded_from="full")
    assert info.decoded_from == "thumbnail"  # recorded, so that a later policy can re-embed these photos
    _, big_info, big = load_photo(with_thumb.read_bytes(), (300, 300), name=str(with_thumb))  # thumbnail too small
    assert big.size == (1600, 1200) and big_info.decoded_from == "full"


def test_a_thumbnail_fed_vector_stays_close_to_the_full_decode_on_a_trained_network(
        tmp_path: Path, corel_images: Path, trained_embedder: HubEmbedder) -> None:
    """The README's figure: bench/heic_decode.py measured cosine >= 0.974 (mean 0.99) between the vectors of
    twenty 12 MP HEICs fed from their thumbnail and from the full decode. Random weights would pass anything."""
    size = trained_embedder.spec.input_size
    cosines = []
    for source in sorted(corel_images.glob("*.jpg"))[::200]:
        heic = _phone_heic(tmp_path / f"{source.stem}.heic", source, (2016, 1512), thumbnail=320)
        thumb, _, fed = load_photo(heic.read_bytes(), size, name=str(heic))
        assert fed.size == (320, 240)
        with Image.open(heic) as img:  # the full decode, as the original is
            full = load_photo(img.convert("RGB"), size)[0]
        a, b = trained_embedder.embed(np.stack([thumb, full]))
        cosines.append(float(a @ b))
    assert min(cosines) > 0.97, cosines


def test_a_webp_scaled_by_libwebp_stays_close_to_the_full_decode_on_a_trained_network(
        tmp_path: Path, corel_images: Path, trained_embedder: HubEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's figure: bench/webp_avif_decode.py measured cosine >= 0.985 (mean 0.996) between the
    vectors of twenty 12 MP WebPs scaled by libwebp and decoded in full by Pillow."""
    import simsearch.images as images

    size = trained_embedder.spec.input_size
    files = []
    for source in sorted(corel_images.glob("*.jpg"))[::200]:
        big = Image.open(source).convert("RGB").resize((2016, 1512), Image.Resampling.BICUBIC)
        big.save(tmp_path / f"{source.stem}.webp", quality=85)
        files.append(tmp_path / f"{source.stem}.webp")
    scaled = [load_photo(f, size) for f in files]
    assert all(info.decoded_from == "scaled" and rgb.size == (299, 224) for _, info, rgb in scaled)
    monkeypatch.setattr(images, "scaled_decode", lambda data, at_least: None)  # Pillow in full, as before
    full = [load_photo(f, size) for f in files]
    assert all(info.decoded_from == "full" for _, info, _ in full)
    a = trained_embedder.embed(np.stack([p for p, _, _ in scaled]))
    b = trained_embedder.embed(np.stack([p for p, _, _ in full]))
    cosines = np.sum(a * b, axis=1)
    assert cosines.min() > 0.98, cosines
