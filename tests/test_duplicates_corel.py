"""Duplicates on real photos with the full Inception V2 (seeded random weights): every kind of copy is
grouped with its original, and no two different photos are, bursts and Corel's look-alikes included.

Random weights make the embedding a poor judge of copies (cosine 0.95 grouped visibly different photos
and missed half the altered copies); the pixels decide here, so the same must hold with trained weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import simsearch
from simsearch.verify import REASONS

from .nearcopies import TRANSFORMS, make_set

pytestmark = pytest.mark.slow


def family(path: str) -> str:
    """o0003_crop0.jpg belongs with o0003.jpg; each burst frame and each other photo is its own."""
    name = Path(path).stem
    return name.split("_")[0] if name.startswith("o") else name


def test_every_transform_is_grouped_with_its_original_and_nothing_else(
        tmp_path: Path, corel_images: Path, inception_module: Path) -> None:
    photos = sorted(corel_images.glob("*.jpg"))
    made = make_set(photos, tmp_path / "set", originals=10, bursts=10, others=40, seed=3)
    with simsearch.open(tmp_path / "store", model=inception_module, create=True) as store:
        assert store.index(tmp_path / "set").added == 10 * (1 + len(TRANSFORMS)) + 20 + 40
        groups = store.duplicates()
        alike = [{m.path for m in g.members} for g in store.duplicates(similar=True)]
    group_of = {m.path: g.id for g in groups for m in g.members}
    missed = [(Path(c).name, t) for o, c, t in made.copies if group_of.get(o) is None or group_of.get(o) != group_of.get(c)]
    assert missed == []
    for g in groups:
        assert len({family(m.path) for m in g.members}) == 1, [m.path for m in g.members]
        assert all(set(p["reason"].split(" + ")) <= set(REASONS) for p in g.pairs), [p["reason"] for p in g.pairs]
    assert len(groups) == 10
    assert not any(a in group_of or b in group_of for a, b in made.bursts)
    # the bursts are look-alikes instead, listed apart
    found = sum(any({a, b} <= g for g in alike) for a, b in made.bursts)
    assert found >= 9, f"{found} of 10 burst pairs grouped as look-alikes"
