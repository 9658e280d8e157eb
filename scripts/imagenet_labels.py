"""Write simsearch/data/imagenet_labels.json: the names of ImageNet's 1000 classes and the WordNet words
that cover them, which `simsearch query --label` reads (nothing is fetched at run time).

Sources, both pinned by SHA-256:
- WordNet 3.0, as Debian ships it (`apt-get install wordnet-base`: /usr/share/wordnet/data.noun). ImageNet's
  class ids are WordNet 3.0 noun offsets (n02084071 is dog.n.01), so a class's names are its synset's lemmas
  and the general words above it are its hypernyms' lemmas (instance hypernyms too).
- The 1000 ILSVRC-2012 synsets in the classifier's order, sorted by id (TF-Slim's order; its logit 0 is
  "background"), from the list the timm package keeps (timm/data/_info/imagenet_synsets.txt in the wheel
  below, fetched from PyPI by `pip download`).

    apt-get install wordnet-base
    python scripts/imagenet_labels.py           # rewrites simsearch/data/imagenet_labels.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WORDNET = Path("/usr/share/wordnet/data.noun")
WORDNET_SHA256 = "fea17d2f9656611334eac790e5d69e47645fa180c4aa481fb4cd9b3520754ca2"  # Debian wordnet-base 1:3.0-37
TIMM = "timm==1.0.31"
SYNSETS_IN_WHEEL = "timm/data/_info/imagenet_synsets.txt"
SYNSETS_SHA256 = "70002b0ff5de60a3a17a82dbfcff291931f96225ddf941ad2e182fc39e183d15"
OUT = Path(__file__).resolve().parent.parent / "simsearch" / "data" / "imagenet_labels.json"


def checked(data: bytes, sha256: str, what: str) -> bytes:
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        sys.exit(f"{what}: sha256 {actual}, expected {sha256}")
    return data


def imagenet_synsets() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, TIMM], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            text = checked(z.read(SYNSETS_IN_WHEEL), SYNSETS_SHA256, SYNSETS_IN_WHEEL).decode()
    ids = text.split()
    assert len(ids) == 1000 and ids == sorted(ids), "expected the 1000 ILSVRC-2012 synsets, sorted"
    return ids


def read_wordnet(path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """synset id (n + offset) -> (lemmas as people write them, hypernym ids)."""
    synsets = {}
    for line in checked(path.read_bytes(), WORDNET_SHA256, str(path)).decode().splitlines():
        if line.startswith(" "):  # the licence at the top
            continue
        fields = line.split(" | ")[0].split()
        offset, count = fields[0], int(fields[3], 16)
        lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
        lemmas = [w.split("(")[0] for w in lemmas]  # adjective markers such as "(a)" in a few nouns
        rest = fields[4 + 2 * count:]
        pointers = int(rest[0])
        hypernyms = [f"n{rest[1 + 4 * i + 1]}" for i in range(pointers) if rest[1 + 4 * i] in ("@", "@i")]
        synsets[f"n{offset}"] = (lemmas, hypernyms)
    return synsets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wordnet", type=Path, default=WORDNET)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    wordnet = read_wordnet(args.wordnet)
    classes = imagenet_synsets()
    covers: dict[str, set[int]] = {}  # synset -> the class positions (0..999) at or under it
    for position, wnid in enumerate(classes):
        todo, seen = [wnid], set()
        while todo:
            s = todo.pop()
            if s in seen:
                continue
            seen.add(s)
            covers.setdefault(s, set()).add(position)
            todo.extend(wordnet[s][1])
    words: dict[str, set[int]] = {}
    for s, positions in covers.items():
        for lemma in wordnet[s][0]:
            words.setdefault(lemma.lower(), set()).update(positions)
    table = {
        "about": "ImageNet's 1000 classes (ILSVRC-2012, sorted by WordNet id: logits 1..1000 of a 1001-class "
                 "classifier, 0..999 of a 1000-class one) and the WordNet 3.0 words that cover them. Written by "
                 "scripts/imagenet_labels.py from Debian's wordnet-base 1:3.0-37 and timm 1.0.31's synset list.",
        "classes": [[wnid, wordnet[wnid][0]] for wnid in classes],
        "words": {w: sorted(p) for w, p in sorted(words.items())},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".partial")
    tmp.write_text(json.dumps(table, separators=(",", ":"), ensure_ascii=False) + "\n")
    tmp.replace(args.out)
    dogs = len(words["dog"])
    print(f"wrote {args.out}: {len(classes)} classes, {len(words)} words ('dog' covers {dogs} classes)")


if __name__ == "__main__":
    main()
