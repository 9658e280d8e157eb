"""Commands for copies: duplicates (groups verified on the pixels) and resolve (decisions, the trash)."""

from __future__ import annotations

from typing import Any

import click

from ..duplicates import DEFAULT_MIN_COSINE, DEFAULT_NEIGHBOURS
from ..results import DuplicateGroup
from .common import _emit, _open, _output, _output_option, _print_json, _progress_bar, _store_options, main


def _reason(group: DuplicateGroup, image_id: int) -> str:
    """How a member is linked to the group: the reasons of the verified pairs it is in."""
    return ", ".join(sorted({p["reason"] for p in group.pairs if image_id in (p["a"], p["b"])}))


@main.command()
@click.option("--min-cosine", type=click.FloatRange(0, 1, min_open=True), default=DEFAULT_MIN_COSINE,
              show_default=True, help="Candidates: neighbours at least this similar (loose; every pair is "
                                      "then checked on the pixels).")
@click.option("--neighbours", type=click.IntRange(1, 100), default=DEFAULT_NEIGHBOURS, show_default=True,
              help="Candidates: this many nearest neighbours of each photo, by the model and by colour histogram.")
@click.option("--csv", "as_csv", is_flag=True, help="Print one row per photo as CSV (-o csv).")
@click.option("--all", "include_resolved", is_flag=True, help="Also list the groups already resolved.")
@click.option("--similar", is_flag=True,
              help="List look-alikes instead of copies: the same scene, not the same picture (bursts, second "
                   "shots, one item in two colours); kind 'similar', never proposed for the trash.")
@_store_options
@_output_option
@click.pass_obj
def duplicates(obj: dict[str, Any], min_cosine: float, neighbours: int, as_csv: bool, include_resolved: bool,
               similar: bool, store: str | None, model: str | None, db: str | None, output: str | None,
               as_json: bool) -> None:
    """Group copies: same bytes, resized, recompressed, re-encoded, rotated, cropped, bordered, colour edited
    or overlaid.

    Candidates come from the embedding; each pair is verified on the photos themselves (perceptual
    hashes, then local features, and colour) and says what changed. Each group has an id (for `simsearch
    resolve`) and names the photo to keep: the largest resolution, then an original format, then the
    oldest. Resolved groups are left out (--all lists them) until a new photo joins one.
    -o paths prints the others, one a line (never for --similar: look-alikes are not copies to remove);
    -o csv and jsonl give one row per photo.

    \b
      simsearch duplicates --store data/photos
      simsearch duplicates -o csv > duplicates.csv
      simsearch duplicates --similar --store data/photos
    """
    out = _output(output, as_json, as_csv)
    if similar and out == "paths":
        raise click.UsageError("-o paths prints the photos a group would not keep: look-alikes are not copies, "
                               "so --similar lists them with -o json, jsonl, csv or text")
    progress, close = _progress_bar(obj["quiet"], "duplicates", "photo")  # photos' candidates, twice over
    with _open(store, model, db) as s:
        try:
            groups = s.duplicates(min_cosine, neighbours=neighbours, include_resolved=include_resolved,
                                  progress=progress, similar=similar)
        finally:
            close()
    if out == "json":
        _print_json([g.to_dict() for g in groups])
        return
    rows = [{"group": g.id, "kind": g.kind, "keep": int(m.id == g.keep), "id": m.id, "path": m.path,
             "size": m.size, "width": m.width, "height": m.height, "taken_at": m.taken_at,
             "new": int(m.new), "resolution": g.resolution, "reason": _reason(g, m.id)}
            for g in groups for m in g.members]

    def text() -> None:
        for g in groups:
            state = f", resolved: {g.resolution}" if g.resolution else ""
            click.echo(f"group {g.id}: {g.kind} ({len(g.members)} photos, similarity >= {g.min_score:.3f}{state}):")
            for m in g.members:
                mark = ("best" if g.kind == "similar" else "keep") if m.id == g.keep else " new" if m.new else "    "
                why = _reason(g, m.id)
                click.echo(f"  {mark}  {m.id:>7}  {m.width}x{m.height}  {m.path}" + (f"  ({why})" if why else ""))
        click.echo(f"{len(groups)} groups", err=True)

    _emit([r for r in rows if not r["keep"]] if out == "paths" else rows, out, text)


def _id_list(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[list[int]]:
    try:
        return [[int(x) for x in v.split(",") if x.strip()] for v in values]
    except ValueError:
        raise click.BadParameter(f"image ids separated by commas, e.g. 42,43; got {', '.join(values)}") from None


@main.command()
@click.argument("group", required=False)
@click.option("--sure", is_flag=True,
              help="Instead of GROUP: resolve every listed group whose pairs are all the same bytes or resized "
                   "copies, keeping the suggested photo of each (with --trash-others, after a confirmation).")
@click.option("--yes", is_flag=True, help="With --sure --trash-others: do not ask for the confirmation.")
@click.option("--undo", is_flag=True,
              help="Take back the decision on GROUP (without GROUP: the latest): what it moved to the trash is "
                   "put back and indexed again (the freedesktop trash: Linux, BSD), and the group is listed again.")
@click.option("--not-duplicates", is_flag=True, help="These photos are not copies of each other.")
@click.option("--keep", "keep", type=int, metavar="IMAGE_ID", multiple=True,
              help="Keep this photo (its id in the group); repeat it to keep several.")
@click.option("--trash-others", is_flag=True,
              help="With --keep: move the others to the trash (never deleted) and forget them.")
@click.option("--split", "split", metavar="ID,ID,...", multiple=True, callback=_id_list,
              help="These photos of GROUP are one photo, the others another: the group is listed as its parts "
                   "from then on (repeat it for more parts).")
@_store_options
def resolve(group: str | None, sure: bool, yes: bool, undo: bool, not_duplicates: bool, keep: tuple[int, ...],
            trash_others: bool, split: list[list[int]], store: str | None, model: str | None, db: str | None) -> None:
    """Record a decision on duplicate group GROUP, as `simsearch duplicates` last listed it, so it is
    not listed again until a new photo joins it.

    \b
      simsearch resolve 3f2a9c81d0e4 --not-duplicates
      simsearch resolve 3f2a9c81d0e4 --keep 42
      simsearch resolve 3f2a9c81d0e4 --keep 42 --trash-others
      simsearch resolve 3f2a9c81d0e4 --keep 42 --keep 43 --trash-others   # keep two
      simsearch resolve 3f2a9c81d0e4 --split 42,43   # 42 and 43 are one photo, the others another
      simsearch resolve --sure --trash-others   # every group of same-bytes or resized copies
      simsearch resolve --undo                  # take back the latest decision, trash included
    """
    if undo:
        if sure or keep or not_duplicates or trash_others or split:
            raise click.UsageError("--undo takes back a decision: give no --sure, --keep, --not-duplicates, "
                                   "--split or --trash-others")
        with _open(store, model, db) as s:
            undone = s.undo(group)
        click.echo(f"group {undone.group}: decision '{undone.decision}' taken back; the group is listed again"
                   + (f"; put back from the trash: {', '.join(undone.restored)}" if undone.restored else ""))
        for problem in undone.problems:
            click.echo(f"not put back: {problem}", err=True)
        if undone.problems:
            raise SystemExit(1)
        return
    if sure:
        if group or keep or not_duplicates or split:
            raise click.UsageError("--sure resolves the sure groups by itself: give no GROUP, --keep, --split or --not-duplicates")
        _resolve_sure(trash_others, yes, store, model, db)
        return
    if group is None:
        raise click.UsageError("give a GROUP (from `simsearch duplicates`) or --sure")
    if split:
        if keep or not_duplicates or trash_others:
            raise click.UsageError("--split only splits: resolve the parts afterwards")
        with _open(store, model, db) as s:
            s.split(group, *split)
        click.echo(f"group {group}: split; `simsearch duplicates` lists its parts as groups of their own "
                   f"(`simsearch resolve --undo {group}` joins them again)")
        return
    if not_duplicates == bool(keep):
        raise click.UsageError("give either --not-duplicates or --keep IMAGE_ID")
    if trash_others and not keep:
        raise click.UsageError("--trash-others goes with --keep")
    with _open(store, model, db) as s:
        found = s.resolve(group, keep=list(keep) or None, trash_others=trash_others)
    others = [m.path for m in found.members if m.id not in keep]
    if not_duplicates:
        click.echo(f"group {group}: marked as not duplicates ({len(found.members)} photos)")
    else:
        click.echo(f"group {group}: keeping {', '.join(map(str, keep))}"
                   + (f"; moved to the trash: {', '.join(others)}" if trash_others else ""))


def _resolve_sure(trash_others: bool, yes: bool, store: str | None, model: str | None, db: str | None) -> None:
    """Every group that needs no look (DuplicateGroup.sure): shown first, confirmed if photos are to move, then resolved."""

    with _open(store, model, db) as s:
        groups = [g for g in s.duplicates() if g.sure]
        if not groups:
            click.echo("no group of same-bytes or resized copies left to resolve")
            return
        for g in groups:
            others = [m.path for m in g.members if m.id != g.keep]
            click.echo(f"group {g.id}: keep {g.keep} {g.keeper.path}; "
                       f"{'to the trash' if trash_others else 'not kept'}: {', '.join(others)}")
        moving = sum(len(g.members) - 1 for g in groups)
        if trash_others and not yes:
            click.confirm(f"move these {moving} photos to the trash?", abort=True)
        s.resolve_sure([g.id for g in groups], trash_others=trash_others)
    click.echo(f"resolved {len(groups)} groups" + (f"; {moving} photos moved to the trash" if trash_others else ""))
