"""The `simsearch` command: parse, call one Store method, print. Errors become exit codes in one place."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import click

from . import __version__
from .catalog import ImageFilter, parse_when
from .config import (
    DEFAULT_MODEL,
    DEFAULT_RUNTIME,
    PRECISIONS,
    RESIZE_POLICIES,
    RUNTIMES,
    Settings,
    default_store_dir,
)
from .distributed import DEFAULT_SHARD_SIZE, RayOptions
from .duplicates import DEFAULT_MIN_COSINE, DEFAULT_NEIGHBOURS
from .errors import SimsearchError, StoreError
from .paths import display, has_newline, json_text
from .probes import is_url, read_stdin
from .results import DuplicateGroup, IndexReport, Progress
from .store import CATALOG_FILE, Store


class _Group(click.Group):
    """Library errors become `Error: message` and exit 1; usage errors stay click's exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SimsearchError as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:
            click.echo("interrupted: every committed batch is kept; run the same command again to resume", err=True)
            ctx.exit(130)


def _store_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    # No click envvars here: the library resolves environment and config file in one place (simsearch.config).
    fn = click.option("--db", metavar="URL",
                      help="SQLAlchemy URL of the catalog [default: SQLite in the store folder]. "
                           "Env: SIMSEARCH_DB; config: db.")(fn)
    fn = click.option("--model", metavar="HANDLE",
                      help=f"TF-Hub handle: URL or local module folder [default: the store's model, "
                           f"or {DEFAULT_MODEL}]. Env: SIMSEARCH_MODEL; config: model.")(fn)
    fn = click.option("--store", metavar="DIR", type=click.Path(file_okay=False),
                      help="Store folder [default: the platform's data folder, ~/.local/share/simsearch on "
                           "Linux]. Env: SIMSEARCH_STORE; config: store.")(fn)
    return fn


def _runtime_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--runtime", type=click.Choice(RUNTIMES),
                        help=f"Where the model runs: compiled once for this CPU (onnxruntime, openvino) or "
                             f"TensorFlow itself [default: {DEFAULT_RUNTIME}]. Env: SIMSEARCH_RUNTIME; config: "
                             f"runtime.")(fn)


def _json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(fn)


FORMATS = ("text", "json", "jsonl", "csv", "paths")


def _null_flag(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    ctx.meta["null"] = value


def _output_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--null", "-0", is_flag=True, expose_value=False, callback=_null_flag,
                      help="With -o paths: end each path with NUL instead of a newline (for xargs -0): any "
                           "file name is safe.")(fn)
    fn = click.option("--output", "-o", "output", type=click.Choice(FORMATS),
                      help="Output: text, json (one document), jsonl (one object a line), csv, or paths (one "
                           "path a line, for piping; names holding a newline are refused there, use -0) "
                           "[default: text]. --json is -o json.")(fn)
    return _json_option(fn)


def _output(output: str | None, as_json: bool, as_csv: bool = False) -> str:
    """The one output format asked for; two different ones are refused, not silently ranked."""
    asked = {f for f in (output, "json" if as_json else None, "csv" if as_csv else None) if f}
    if len(asked) > 1:
        raise click.UsageError(f"choose one output format, not {' and '.join(sorted(asked))}")
    return asked.pop() if asked else "text"


def _emit(rows: list[dict[str, Any]], output: str, text: Callable[[], None], path_key: str = "path") -> None:
    if output == "json":
        _print_json(rows)
    elif output == "jsonl":
        for row in rows:
            click.echo(json_text(row))
    elif output == "csv":
        import csv as csv_module

        buffer = io.StringIO()  # then out as click writes text: a name's undecodable bytes as they are
        out = csv_module.writer(buffer)
        if rows:
            out.writerow(list(rows[0]))
        for row in rows:
            out.writerow(["" if v is None else v for v in row.values()])
        click.echo(buffer.getvalue(), nl=False)
    elif output == "paths":
        _print_paths([row[path_key] for row in rows], null=click.get_current_context().meta.get("null", False))
    else:
        text()


def _hint_args(s: Store, db: str | None) -> str:
    """The options that reach the same store, so a hint is runnable as printed."""
    return f"--store {shlex.quote(str(s.root))}" + (f" --db {shlex.quote(db)}" if db else "")


def _open(store: str | None, model: str | None, db: str | None, create: bool = False, **settings: Any) -> Store:
    """Only `index` (and `serve`, for a new container) creates a store; the others say so when there is none."""
    return Store(store, model=model, db=db, create=create,
                 settings=Settings(**{k: v for k, v in settings.items() if v is not None}))


class _When(click.ParamType):
    """YYYY-MM-DD (a whole day) or a moment, as the library's filters take them (catalog.parse_when)."""

    name = "date"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> date:
        if isinstance(value, date):
            return value
        try:
            return parse_when(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_WHEN = _When()


class _EchoHandler(logging.Handler):
    """Log records to whatever stderr is now (click's test runner swaps it per invocation)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def _configure_logging(verbose: int, quiet: bool) -> None:
    """The one place logging is set up: what the library says while it works ("fetching model ...",
    "rebuilt vector index ...") goes to stderr; -q keeps only warnings, -v adds debug detail."""
    logger = logging.getLogger("simsearch")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False  # TensorFlow's absl gives the root logger a handler of its own


def _print_json(value: Any) -> None:
    """Results' to_dict() holds no NaN or infinity; JSON never gets one. Undecodable bytes of a file name
    travel as \\udcNN escapes (simsearch.paths), so the output stays valid UTF-8."""
    click.echo(json_text(value, indent=2))


def _print_paths(paths: list[str], *, null: bool) -> None:
    """Paths for a pipe, as the file system's bytes. A line per path cannot carry a name that holds a
    newline (it would read as two paths, one of them anywhere): such output is refused, whole."""
    out = click.get_binary_stream("stdout")
    if null:
        out.write(b"".join(os.fsencode(p) + b"\0" for p in paths))
        return
    split = [p for p in paths if has_newline(p)]
    if split:
        raise click.ClickException(f"{len(split)} of these paths hold a newline, e.g. {display(split[0])!r}: "
                                   f"a line per path would split them; use -0 (--null) for NUL-separated paths")
    out.write(b"".join(os.fsencode(p) + b"\n" for p in paths))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="simsearch")
@click.option("-v", "--verbose", count=True, help="Say more (debug detail).")
@click.option("-q", "--quiet", is_flag=True, help="Say only warnings and errors (no progress bar).")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Find similar photos in your own collection.

    \b
      simsearch index ~/Pictures
      simsearch query probe.jpg -k 10
      simsearch watch
    """
    ctx.obj = {"quiet": quiet}
    _configure_logging(verbose, quiet)


def _progress_bar(quiet: bool, desc: str = "indexing",
                  unit: str = "img") -> tuple[Callable[[Progress], None], Callable[[], None]]:
    from tqdm import tqdm

    bar: list[tqdm] = []

    def progress(p: Progress) -> None:
        if not bar:
            bar.append(tqdm(total=p.total, unit=unit, desc=desc, file=sys.stderr, disable=True if quiet else None,
                            dynamic_ncols=True))
        bar[0].total = p.total
        bar[0].update(p.done - bar[0].n)
        bar[0].set_postfix(failed=p.failed, refresh=False)

    def close() -> None:
        if bar:
            bar.pop().close()

    return progress, close


def _print_report(report: IndexReport) -> None:
    work = report.added + report.updated
    busy = report.seconds - report.timings.get("model_load", 0.0)
    rate = f" ({work / busy:.1f} images/s after loading the model)" if work and busy > 0 else ""
    click.echo(f"{report.folder}: {report.added} added, {report.updated} updated, {report.moved} moved, "
               f"{report.removed} removed, {report.unchanged} unchanged, {report.failed} failed "
               f"in {report.seconds:.1f} s{rate}")


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False), required=False)
@_store_options
@click.option("--exclude", "excludes", multiple=True, metavar="GLOB",
              help="Leave out files or folders whose name or path under FOLDER matches (repeatable); remembered "
                   "for the folder. Config: exclude.")
@click.option("--include-hidden/--skip-hidden", default=None,
              help="Index hidden files and folders too (names starting with a dot) [default: skip them, and "
                   "always junk such as ._* and @eaDir]; remembered for the folder.")
@click.option("--batch-size", type=click.IntRange(1, 4096), help="Images per model call [default: 32].")
@click.option("--workers", type=click.IntRange(1, 64), help="Decode threads [default: cores + 1, at most 8].")
@click.option("--fingerprints/--no-fingerprints", default=None,
              help="Take each photo's duplicate fingerprint from the decode that feeds the model [default: yes]; "
                   "without, `duplicates` takes them on its first run (decoding those photos again).")
@click.option("--resize", type=click.Choice(RESIZE_POLICIES),
              help="How photos are fitted to the model's square input [default: the store's, or whole].")
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="Model arithmetic, fixed when the store is made: fp32, or int8 calibrated on the folder's "
                   "own photos (faster on CPUs with VNNI) [default: the store's, or fp32].")
@_runtime_option
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", metavar="[ADDRESS]",
              help="Decode and embed on a Ray cluster: its ADDRESS (host:port), 'auto' (RAY_ADDRESS or the "
                   "cluster started on this machine; the default when no value is given) or 'local' (a new "
                   "one-machine cluster).")
@click.option("--staging", metavar="DIR|URI",
              help="With --ray: where workers write Parquet shards, shared by all nodes (a folder, s3://, gs://) "
                   "[default: STORE/staging].")
@click.option("--shard-size", type=click.IntRange(1, 1_000_000),
              help=f"With --ray: files per shard [default: {DEFAULT_SHARD_SIZE}].")
@click.option("--actors", type=click.IntRange(1, 100_000),
              help="With --ray: embedding actors [default: one per GPU, else one per node].")
@_json_option
@click.pass_obj
def index(obj: dict[str, Any], folder: str | None, store: str | None, model: str | None, db: str | None,
          excludes: tuple[str, ...], include_hidden: bool | None, batch_size: int | None, workers: int | None,
          fingerprints: bool | None, resize: str | None, precision: str | None, runtime: str | None, ray_address: str | None,
          staging: str | None, shard_size: int | None, actors: int | None, as_json: bool) -> None:
    """Index FOLDER: embed new and changed photos, follow moved ones, forget deleted ones.

    Without FOLDER, every folder of the store is brought up to date, each with the choices
    (--exclude, --include-hidden) remembered for it.

    \b
      simsearch index ~/Pictures --store data/photos
      simsearch index ~/Pictures --exclude 'Screenshots' --exclude '*.tmp.jpg'
      simsearch index --store data/photos
      simsearch index /shared/photos --ray 10.0.0.1:6379 --staging s3://bucket/shards \\
          --db postgresql+psycopg://USER:PASSWORD@HOST/DB
    """
    ray = None
    if ray_address is not None:
        ray = RayOptions(address=ray_address, staging=staging, shard_size=shard_size or DEFAULT_SHARD_SIZE, actors=actors)
    elif staging or shard_size or actors:
        raise click.UsageError("--staging, --shard-size and --actors go with --ray")
    if folder is None and (excludes or include_hidden is not None):
        raise click.UsageError("--exclude and --include-hidden are remembered per folder: give the FOLDER")
    progress, close = _progress_bar(obj["quiet"] or as_json)
    with _ray_off_stdout() if ray else contextlib.nullcontext(), \
            _open(store, model, db, create=folder is not None, batch_size=batch_size, workers=workers, resize=resize,
                  precision=precision, runtime=runtime, fingerprints=fingerprints) as s:
        try:
            if folder is None:
                reports = s.update(progress=progress, ray=ray)
            else:
                reports = [s.index(folder, progress=progress, ray=ray, exclude=excludes or None,
                                   include_hidden=include_hidden)]
        finally:
            close()
        hint = _hint_args(s, db)
    if as_json:
        _print_json(reports[0].to_dict() if folder is not None else [r.to_dict() for r in reports])
        return
    for report in reports:
        _print_report(report)
    failed = sum(r.failed for r in reports)
    if failed:
        click.echo(f"{failed} files could not be indexed: see `simsearch failures {hint}`", err=True)


@contextlib.contextmanager
def _ray_off_stdout() -> Iterator[None]:
    """Ray's driver prints the cluster's error messages (a lost node's connection errors, say) to stdout, from
    a thread of its own, even after the run: while it runs they go to stderr, and a connection this command
    made is closed before the result is printed, so `--json` output stays JSON."""
    connected = "ray" in sys.modules and sys.modules["ray"].is_initialized()  # a caller's own, in-process
    with contextlib.redirect_stdout(sys.stderr):
        try:
            yield
        finally:
            ray = sys.modules.get("ray")
            if ray is not None and not connected and ray.is_initialized():
                ray.shutdown()


def _probe(image: str) -> Any:
    """A path, an http(s) URL (fetched by the store) or - for standard input."""
    if image == "-":
        return read_stdin(click.get_binary_stream("stdin"))
    if not is_url(image) and not os.path.exists(image):
        raise click.BadParameter(f"file {image!r} does not exist", param_hint="IMAGE")
    return image


@main.command()
@click.argument("image", required=False, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--id", "image_id", type=int, help="Query by the id of an indexed image instead of a file.")
@click.option("-k", "--top", "k", type=click.IntRange(1, 10_000), default=10, show_default=True,
              help="How many neighbours to return.")
@click.option("--folder", type=click.Path(file_okay=False), help="Only photos under this folder.")
@click.option("--taken-from", type=_WHEN, help="Only photos taken on or after this date (EXIF).")
@click.option("--taken-until", type=_WHEN, help="Only photos taken on or before this date (EXIF; a date is the whole day).")
@click.option("--format", "formats", multiple=True, metavar="FORMAT", help="Only this format, e.g. JPEG (repeatable).")
@click.option("--min-pixels", type=click.IntRange(1), help="Only photos of at least this many pixels.")
@_store_options
@_runtime_option
@_output_option
def query(image: str | None, image_id: int | None, k: int, folder: str | None, taken_from: date | None,
          taken_until: date | None, formats: tuple[str, ...], min_pixels: int | None, store: str | None,
          model: str | None, db: str | None, runtime: str | None, output: str | None, as_json: bool) -> None:
    """Print the photos most similar to IMAGE (a file, an http(s) URL, or - for standard input), or to an
    indexed photo with --id.

    Filters narrow the candidates first, so the k shown are the true top k among matching photos.

    \b
      simsearch query probe.jpg -k 10
      simsearch query https://example.com/cat.jpg -o paths | xargs open
      simsearch query - < probe.jpg
      simsearch query --id 42 --json
      simsearch query probe.jpg --folder ~/Pictures/2023 --taken-from 2023-06-01 --format JPEG
    """
    if (image is None) == (image_id is None):
        raise click.UsageError("give either IMAGE or --id")
    out = _output(output, as_json)
    probe = _probe(image) if image is not None else image_id
    where = ImageFilter(folder=folder, taken_from=taken_from, taken_until=taken_until, formats=formats,
                        min_pixels=min_pixels)
    with _open(store, model, db, runtime=runtime) as s:
        hits = s.query(probe, k=k, where=where or None)

    def text() -> None:
        for h in hits:
            click.echo(f"{h.score:.4f}  {h.id:>7}  {h.path}")

    _emit([h.to_dict() for h in hits], out, text)


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
    width = max(len(k) for k in info)
    for key, value in info.items():
        click.echo(f"{key:<{width}}  {', '.join(value) if isinstance(value, list) and key == 'folders' else value}")


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
    from .check import check_unopened

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
@click.argument("paths", nargs=-1, required=True)
@_store_options
@_json_option
def remove(paths: tuple[str, ...], store: str | None, model: str | None, db: str | None, as_json: bool) -> None:
    """Forget PATHS (files, or everything under folders); the files themselves are not touched.

    A later `simsearch index` of their folder adds them again if they are still there.
    """
    with _open(store, model, db) as s:
        removed = s.remove(paths)
    if as_json:
        _print_json({"removed": removed})
    else:
        click.echo(f"removed {removed} images")


@main.command()
@_store_options
@_output_option
def failures(store: str | None, model: str | None, db: str | None, output: str | None, as_json: bool) -> None:
    """List the files that could not be indexed, with the reason."""
    out = _output(output, as_json)
    with _open(store, model, db) as s:
        items = s.failures()

    def text() -> None:
        for f in items:
            click.echo(f"{f.path}: {f.reason}")
        if not items:
            click.echo("no failures", err=True)

    _emit([f.to_dict() for f in items], out, text)


def _reason(group: DuplicateGroup, image_id: int) -> str:
    """How a member is linked to the group: the reasons of the verified pairs it is in."""
    return ", ".join(sorted({p["reason"] for p in group.pairs if image_id in (p["a"], p["b"])}))


@main.command()
@click.option("--min-cosine", type=click.FloatRange(0, 1, min_open=True), default=DEFAULT_MIN_COSINE,
              show_default=True, help="Candidates: neighbours at least this similar (loose; every pair is "
                                      "then checked on the pixels).")
@click.option("--neighbours", type=click.IntRange(1, 100), default=DEFAULT_NEIGHBOURS, show_default=True,
              help="Candidates: this many nearest neighbours of each photo.")
@click.option("--csv", "as_csv", is_flag=True, help="Print one row per photo as CSV (-o csv).")
@click.option("--all", "include_resolved", is_flag=True, help="Also list the groups already resolved.")
@_store_options
@_output_option
@click.pass_obj
def duplicates(obj: dict[str, Any], min_cosine: float, neighbours: int, as_csv: bool, include_resolved: bool,
               store: str | None, model: str | None, db: str | None, output: str | None, as_json: bool) -> None:
    """Group copies: same bytes, resized, recompressed, re-encoded, rotated, cropped or edited.

    Candidates come from the embedding; each pair is verified on the photos themselves (perceptual
    hashes, then local features) and says why it matched. Each group has an id (for `simsearch
    resolve`) and names the photo to keep: the largest resolution, then an original format, then the
    oldest. Resolved groups are left out (--all lists them) until a new photo joins one.
    -o paths prints the others, one a line; -o csv and jsonl give one row per photo.

    \b
      simsearch duplicates --store data/photos
      simsearch duplicates -o csv > duplicates.csv
    """
    out = _output(output, as_json, as_csv)
    progress, close = _progress_bar(obj["quiet"], "duplicates", "photo")  # photos' candidates, twice over
    with _open(store, model, db) as s:
        try:
            groups = s.duplicates(min_cosine, neighbours=neighbours, include_resolved=include_resolved,
                                  progress=progress)
        finally:
            close()
    if out == "json":
        _print_json([g.to_dict() for g in groups])
        return
    rows = [{"group": g.id, "kind": g.kind, "keep": int(m["path"] == g.keep), "id": m["id"], "path": m["path"],
             "size": m["size"], "width": m["width"], "height": m["height"], "taken_at": m["taken_at"],
             "new": int(m["new"]), "resolution": g.resolution, "reason": _reason(g, m["id"])}
            for g in groups for m in g.members]

    def text() -> None:
        for g in groups:
            state = f", resolved: {g.resolution}" if g.resolution else ""
            click.echo(f"group {g.id}: {g.kind} ({len(g.members)} photos, similarity >= {g.min_score:.3f}{state}):")
            for m in g.members:
                mark = "keep" if m["path"] == g.keep else " new" if m["new"] else "    "
                why = _reason(g, m["id"])
                click.echo(f"  {mark}  {m['id']:>7}  {m['width']}x{m['height']}  {m['path']}" + (f"  ({why})" if why else ""))
        click.echo(f"{len(groups)} groups", err=True)

    _emit([r for r in rows if not r["keep"]] if out == "paths" else rows, out, text)


@main.command()
@click.argument("group")
@click.option("--not-duplicates", is_flag=True, help="These photos are not copies of each other.")
@click.option("--keep", "keep", type=int, metavar="IMAGE_ID", help="Keep this photo (its id in the group).")
@click.option("--trash-others", is_flag=True,
              help="With --keep: move the others to the trash (never deleted) and forget them.")
@_store_options
def resolve(group: str, not_duplicates: bool, keep: int | None, trash_others: bool,
            store: str | None, model: str | None, db: str | None) -> None:
    """Record a decision on duplicate group GROUP, as `simsearch duplicates` last listed it, so it is
    not listed again until a new photo joins it.

    \b
      simsearch resolve 3f2a9c81d0e4 --not-duplicates
      simsearch resolve 3f2a9c81d0e4 --keep 42
      simsearch resolve 3f2a9c81d0e4 --keep 42 --trash-others
    """
    if not_duplicates == (keep is not None):
        raise click.UsageError("give either --not-duplicates or --keep IMAGE_ID")
    if trash_others and keep is None:
        raise click.UsageError("--trash-others goes with --keep")
    with _open(store, model, db) as s:
        found = s.resolve(group, keep=keep, trash_others=trash_others)
    others = [m["path"] for m in found.members if m["id"] != keep]
    if not_duplicates:
        click.echo(f"group {group}: marked as not duplicates ({len(found.members)} photos)")
    else:
        click.echo(f"group {group}: keeping {keep}" + (f"; moved to the trash: {', '.join(others)}" if trash_others else ""))


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
    else:
        click.echo(f"{result.kind}: {result.vectors} vectors in {result.nlist} lists, nprobe "
                   f"{result.nprobe}, {result.refine} x k re-scored, recall@10 {result.recall_at_10:.3f}, "
                   f"{result.seconds} s")


@main.command("eval")
@click.argument("labels", type=click.Path(exists=True), required=False)
@click.option("-k", "--top", "k", type=click.IntRange(1, 1000), default=10, show_default=True, help="k of precision@k.")
@click.option("--ann", is_flag=True, help="Also print recall@k of the store's index against exact search.")
@_store_options
@_json_option
def eval_(labels: str | None, k: int, ann: bool, store: str | None, model: str | None, db: str | None,
          as_json: bool) -> None:
    """Measure retrieval quality: mean average precision and precision@k on labelled photos.

    LABELS is a folder with one subfolder per class, or a CSV with columns file, class and optionally
    split (db / query), like corel1k's labels.csv. Index the photos into the store first.

    \b
      simsearch index ../shared/data/corel1k/images --store data/corel
      simsearch eval ../shared/data/corel1k/labels.csv --store data/corel
      simsearch eval --ann --store data/photos
    """
    from .evaluate import Labels, evaluate

    if labels is None and not ann:
        raise click.UsageError("give LABELS, --ann, or both")
    result: dict[str, Any] = {}
    with _open(store, model, db) as s:
        if labels is not None:
            parsed = Labels.from_folder(labels) if os.path.isdir(labels) else Labels.from_csv(labels)
            result = evaluate(s, parsed, k=k).to_dict()
        if ann:
            result |= {"index_kind": s.stats().index_kind, "ann_recall_at_k": s.ann_recall(k=k), "k": k}
    if as_json:
        _print_json(result)
        return
    if labels is not None:
        click.echo(f"mAP {result['mean_average_precision']:.4f}   P@{k} {result['precision_at_k']:.4f}   "
                   f"({result['queries']} queries, {result['database']} in the database"
                   + (f", {result['missing']} labelled photos not indexed)" if result["missing"] else ")"))
    if ann:
        click.echo(f"recall@{k} of the {result['index_kind']} index against exact search: {result['ann_recall_at_k']:.4f}")


@main.command()
@_store_options
@_runtime_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; 0.0.0.0 exposes it to the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", envvar="SIMSEARCH_TOKEN", metavar="SECRET",
              help="Bearer token required for anything beyond read-only queries (re-indexing). Env: SIMSEARCH_TOKEN.")
@click.option("--max-upload-mb", default=20, show_default=True, type=click.IntRange(1, 1024), help="Largest upload accepted.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN", help="Allow this web origin (repeatable); off by default.")
@click.option("--watch", "watch_folders", is_flag=True, help="Also follow the store's folders and index changes as they happen.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Also answer requests for this host name (repeatable); localhost names and --host always.")
@click.option("--max-upload-pixels", default=50_000_000, show_default=True, type=click.IntRange(1),
              help="Uploaded photos larger than this many pixels are refused (indexing allows more).")
@click.option("--insecure-no-token", is_flag=True,
              help="Allow a --host other than loopback without a token: anyone who can reach it may re-index.")
@click.option("--allow-private-urls", is_flag=True,
              help="Let searches by URL fetch from loopback, private and link-local addresses (this machine and "
                   "its network); by default only public internet addresses are fetched.")
def serve(store: str | None, model: str | None, db: str | None, runtime: str | None, host: str, port: int, token: str | None,
          max_upload_mb: int, cors_origins: tuple[str, ...], watch_folders: bool, allowed_hosts: tuple[str, ...],
          max_upload_pixels: int, insecure_no_token: bool, allow_private_urls: bool) -> None:
    """Serve the web page and HTTP API (OpenAPI docs at /docs).

    An empty (new) store is served too: the page says how to index a folder.

    \b
      simsearch serve --store data/photos
      simsearch serve --store data/photos --watch
      simsearch serve --store data/photos --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    import threading

    import uvicorn

    from .server import create_app
    from .transport import server_options

    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        if not insecure_no_token:
            raise click.UsageError(f"--host {host} lets other machines reach the server: set --token (or "
                                   f"SIMSEARCH_TOKEN), or pass --insecure-no-token to run without one")
        click.echo(f"warning: serving on {host} without a token: anyone who can reach it may start re-indexing",
                   err=True)
    s = _open(store, model, db, create=True, runtime=runtime)
    watcher = None
    if watch_folders:
        from .watch import FolderWatcher

        watcher = FolderWatcher(s, on_report=_print_report)
        threading.Thread(target=watcher.run, args=(threading.Event(),), name="simsearch-watch", daemon=True).start()
    app = create_app(s, token=token or None, max_upload=max_upload_mb * 1024 * 1024,
                     cors_origins=list(cors_origins) or None, host=host, extra_hosts=list(allowed_hosts),
                     max_upload_pixels=max_upload_pixels, watching=watcher or False,
                     allow_private_urls=allow_private_urls)
    if not s.folders():
        click.echo(f"store {s.root} is empty: index a folder with `simsearch index FOLDER {_hint_args(s, db)}`", err=True)
    click.echo(f"simsearch on http://{host}:{port}/ (API docs: /docs)", err=True)
    uvicorn.run(app, host=host, port=port, **server_options())  # slow clients' limits: simsearch.transport


@main.command()
@_store_options
@_runtime_option
@click.option("--debounce", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True,
              help="Seconds a folder must be quiet before its changes are indexed.")
def watch(store: str | None, model: str | None, db: str | None, runtime: str | None, debounce: float) -> None:
    """Keep the store up to date: index new, changed, moved and deleted photos in its folders as they happen.

    Starts with one incremental pass, so changes made while nothing watched are picked up. A folder
    that disappears (an unmounted disk) is left alone, nothing removed, until it is back. Ctrl-C stops.

    \b
      simsearch watch --store data/photos
    """
    import signal
    import threading

    from .watch import FolderWatcher

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with _open(store, model, db, runtime=runtime) as s:
        if not s.folders():
            raise click.ClickException(f"store {s.root} has no folders to watch: index one with "
                                       f"`simsearch index FOLDER {_hint_args(s, db)}`")
        click.echo(f"watching {', '.join(s.folders())} (Ctrl-C stops)", err=True)
        try:
            FolderWatcher(s, debounce=debounce, on_report=_print_report).run(stop)
        except KeyboardInterrupt:
            click.echo("stopped", err=True)


@main.command()
@_json_option
def formats(as_json: bool) -> None:
    """List the photo file extensions simsearch looks at, and what decodes each here."""
    from .formats import supported_formats

    found = supported_formats()
    if as_json:
        _print_json([{"extension": f.extension, "family": f.family, "decoder": f.decoder, "install": f.install}
                     for f in found])
        return
    for f in found:
        click.echo(f"{f.extension:<7} {f.decoder or 'missing: pip install ' + repr(f.install)}")


@main.command("config")
@_json_option
def config_(as_json: bool) -> None:
    """Show the config file's place and the defaults in force (environment first, then the file).

    The file is TOML with any of: store, model, db, runtime (strings), exclude (a list of globs for
    new folders), include_hidden (true/false). $SIMSEARCH_CONFIG moves it.
    """
    from .config import CONFIG_KEYS, config_path, user_config, user_default

    path = config_path()
    in_file = user_config()
    values = {k: user_default(k) for k in CONFIG_KEYS}
    values["store"] = str(default_store_dir())
    if as_json:
        _print_json({"config_file": str(path), "exists": path.exists(), "settings": values})
        return
    click.echo(f"config file: {path}{'' if path.exists() else ' (none yet)'}")
    for key, value in values.items():
        env = CONFIG_KEYS[key][0]
        source = ("env " + env) if env and os.environ.get(env) else "config file" if key in in_file else "default"
        click.echo(f"  {key:<15} {value if value not in (None, []) else '-'}  ({source})")


@main.group()
def model() -> None:
    """Make module folders to use with --model."""


@model.command("import-slim")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--sha256", metavar="HEX", help="Refuse the checkpoint unless its SHA-256 is this.")
@click.option("--no-head", is_flag=True, help="Leave out the 1001-class classification signature.")
def import_slim(checkpoint: str, out_dir: str, sha256: str | None, no_head: bool) -> None:
    """Turn a TF-Slim Inception V2 checkpoint into a module folder for --model.

    CHECKPOINT is the checkpoint file (e.g. inception_v2.ckpt), a checkpoint prefix, or the release
    archive inception_v2_2016_08_28.tar.gz itself.

    \b
      simsearch model import-slim inception_v2_2016_08_28.tar.gz models/inception_v2
      simsearch index ~/Pictures --model models/inception_v2
    """
    from .models import import_slim as run_import

    out = run_import(checkpoint, out_dir, sha256=sha256, include_top=not no_head)
    click.echo(f"wrote {out}: use it with --model {out}")


if __name__ == "__main__":
    main()
