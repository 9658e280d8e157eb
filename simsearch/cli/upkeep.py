"""Commands that look after a store: stats, check (and repair), optimize (the approximate index)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..config import default_store_dir
from ..errors import StoreError
from ..store import CATALOG_FILE
from .common import _json_option, _open, _print_json, _store_options, main


@main.command()
@_store_options
@_json_option
def stats(store: str | None, model: str | None, db: str | None, as_json: bool) -> None:
    """Show what the store holds and which model built it."""
    with _open(store, model, db) as s:
        info = s.stats().to_dict()
    if as_json:
        _print_json(info)
        return
    if info["index_kind"] == "flat":  # the IVF settings mean nothing for exact search
        info = {k: v for k, v in info.items() if k not in ("nlist", "nprobe", "recall_at_10")}
    choice = info.pop("precision_choice", None)
    if choice:
        info["precision_choice"] = _choice_line(choice)
    labels = info.pop("labels", None)
    passes = {1: "; one pass: its head on the model's own features", 2: "; run as a second network"}
    info["labels"] = (f"{labels['labelled']} of {info['images']} photos, classifier {labels['classifier']}"
                      + passes.get(labels.get("passes"), "") if labels
                      else "none (add ImageNet labels with `simsearch index --labels`)")
    options = info.pop("folder_options", None) or {}
    info["folders"] = ", ".join(f + _left_out(options.get(f) or {}) for f in info["folders"]) or "none yet"
    width = max(len(k) for k in info)
    for key, value in info.items():
        click.echo(f"{key:<{width}}  {value}")


def _left_out(options: dict[str, Any]) -> str:
    """What a folder's scans leave out beyond junk, for the stats line."""
    parts = [f"excluding {', '.join(options['exclude'])}"] if options.get("exclude") else []
    if options.get("include_hidden"):
        parts.append("hidden files included")
    return f" ({'; '.join(parts)})" if parts else ""


def _choice_line(choice: dict[str, Any]) -> str:
    """`--precision auto`'s decision in a line: why, and each trial's figures."""
    trials = []
    for t in choice.get("trials", []):
        figures = [f"{t['images_per_s']} img/s"] if "images_per_s" in t else []
        if "min_cosine" in t:
            figures += [f"min cosine {t['min_cosine']}", f"top-10 overlap {t['top10_overlap']}"]
        if "note" in t and "images_per_s" not in t:
            figures.append(t["note"])
        trials.append(f"{t['precision']} {', '.join(figures)}")
    return f"{choice.get('reason', '')} ({choice.get('sample_photos', 0)} photos: {'; '.join(trials) or 'not measured'})"


@main.command()
@_store_options
@click.option("--repair", is_flag=True, help="Rebuild what can be rebuilt from the catalog (the vector index, "
                                             "fingerprints, cached thumbnails) and remove killed runs' temp files.")
@_json_option
def check(store: str | None, model: str | None, db: str | None, repair: bool, as_json: bool) -> None:
    """Check the store for damage: the catalog database, the vector index against it, duplicate
    fingerprints, cached thumbnails and previews, and temp files left by killed runs. Exits 1 while
    anything is wrong (after --repair: anything it could not mend).

    \b
      simsearch check
      simsearch check --repair
    """
    from ..check import check_unopened

    try:
        with _open(store, model, db) as s:
            report = s.check(repair=repair)
    except StoreError as exc:  # too damaged to open: say what the database's own check finds
        root = Path(store).expanduser() if store else default_store_dir()
        report = check_unopened(root, db or f"sqlite:///{root / CATALOG_FILE}", exc)
    if as_json:
        _print_json(report.to_dict() | {"healthy": report.healthy})
    else:
        click.echo(f"checked {', '.join(report.checked)} of {report.store}")
        for p in report.problems:
            click.echo(f"  {p.part}: {p.detail}" + (" (repaired)" if p.repaired else ""))
        if not report.problems:
            click.echo("no problems found")
        elif not report.healthy and not repair:
            click.echo("run `simsearch check --repair` with the same options to mend what can be mended")
    if not report.healthy:
        sys.exit(1)


@main.command()
@click.option("--recall", type=click.FloatRange(0.5, 1.0), default=0.95, show_default=True,
              help="Recall@10 against exact search that the tuned index must reach.")
@click.option("--nlist", type=click.IntRange(16), help="Inverted lists [default: about 2 x sqrt(photos)].")
@click.option("--kind", type=click.Choice(["auto", "ivf-sq8", "ivf-pq"]), default="auto", show_default=True,
              help="ivf-sq8: 8-bit vectors (a quarter of exact search's memory); ivf-pq: dim/8-byte codes (a "
                   "32nd), for stores too large for ivf-sq8 in memory; auto: ivf-sq8 while it takes under a "
                   "quarter of this machine's memory.")
@_store_options
@_json_option
def optimize(recall: float, nlist: int | None, kind: str, store: str | None, model: str | None, db: str | None,
             as_json: bool) -> None:
    """Move the store to an approximate index (IVF over compressed vectors) for fast search at large sizes.

    `index` does this by itself past 200,000 photos. Candidates are re-scored with the exact vectors from
    the catalog; ivf-pq is refused if it cannot reach --recall on the store's own vectors. Removal and
    filters keep working; filters that match few photos are still searched exactly.

    \b
      simsearch optimize --store data/photos
      simsearch optimize --kind ivf-pq --recall 0.9 --store data/photos
    """
    with _open(store, model, db) as s:
        result = s.optimize(target_recall=recall, nlist=nlist, kind=kind)
    if as_json:
        _print_json(result.to_dict())
    elif result.note:
        click.echo(result.note)
    else:
        click.echo(f"{result.kind}: {result.vectors} vectors in {result.nlist} lists, nprobe "
                   f"{result.nprobe}, {result.refine} x k re-scored, recall@10 {result.recall_at_10:.3f}, "
                   f"{result.seconds} s")
