"""Write tests/data/store-0.1.0: a store made by simsearch 0.1.0 (catalog schema 1, commit 11e985a), kept so
that every later release is tested on opening, upgrading and using a store its users already have.

Run once, from the repository root, with the release checked out (never again: the point is that its
bytes were written by that release):

    git checkout 11e985a && python tests/data/make_release_store.py

It holds the tiny test module the store was built with (tests.modules, 108 KB; committed so that the
store's model fingerprint matches whatever TensorFlow later tests run), six photos indexed from a folder
with one excluded by a remembered glob and one that fails to decode, and their fingerprints.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from simsearch import Store  # noqa: E402
from tests import modules  # noqa: E402
from tests.conftest import TINY_SIZE, photo  # noqa: E402

OUT = HERE / "store-0.1.0"


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    module = modules.build_tf1_hub_module(OUT / "module", modules.tiny, TINY_SIZE)
    photos = Path("/tmp/simsearch-release-photos")
    shutil.rmtree(photos, ignore_errors=True)
    for i in range(6):
        photo(photos / f"IMG_{i:04d}.jpg", seed=100 + i)
    photo(photos / "skip_me.png", seed=200)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    store = Store(OUT / "store", model=str(module), create=True)
    report = store.index(photos, exclude=["skip_*"])
    print(report)
    store.close()


if __name__ == "__main__":
    main()
