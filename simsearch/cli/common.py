"""What every command shares: the `simsearch` group (library errors become exit codes here, in one
place), logging, the store and output options, and the printing of results, paths and JSON."""

from __future__ import annotations

import io
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from datetime import date
from typing import Any

import click

from .. import __version__
from ..catalog import parse_when
from ..config import DEFAULT_MODEL, DEFAULT_RUNTIME, DEVICES, RUNTIMES, Settings
from ..errors import SimsearchError
from ..formats import catalog_format
from ..paths import display, has_newline, json_text
from ..results import IndexReport, Progress
from ..store import Store


class _Group(click.Group):
    """Library errors become `Error: message` and exit 1; usage errors stay click's exit 2. -v and -q are
    taken after the command too (`simsearch index DIR -v`), as people type them."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            cmd.params += [click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_verbose,
                                        help="Say more (debug detail); also before the command."),
                           click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=_quiet,
                                        help="Say only warnings and errors; also before the command.")]
        super().add_command(cmd, name)

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
    fn = click.option("--device", type=click.Choice(DEVICES),
                      help="Where the compiled model runs: a GPU when one is present and usable (auto), or "
                           "insist on gpu or cpu [default: auto]. Env: SIMSEARCH_DEVICE; config: device.")(fn)
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


def _open(store: str | None, model: str | None, db: str | None, create: bool = False,
          classifier: str | None = None, **settings: Any) -> Store:
    """Only `index` (and `serve --create`, for a new container) creates a store; the others say so when
    there is none."""
    return Store(store, model=model, db=db, create=create, classifier=classifier,
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


class _Format(click.ParamType):
    """A format name or an extension, any case (JPEG, jpg, HEIF, heic, CR2): the name the catalog records."""

    name = "format"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return catalog_format(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_FORMAT = _Format()


class _Pixels(click.ParamType):
    """A number of pixels, as the API and the page count them: 2000000, 2M, 2.5MP or 800k."""

    name = "pixels"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmM])?[pP]?\s*", str(value))
        n = round(float(m.group(1)) * {"k": 1e3, "m": 1e6}.get((m.group(2) or "").lower(), 1)) if m else 0
        if n < 1:
            self.fail(f"{value!r} is not a number of pixels (e.g. 2000000, 2M or 800k)", param, ctx)
        return n


_PIXELS = _Pixels()


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


def _verbose(ctx: click.Context, _: click.Parameter, value: int) -> None:
    if value:
        _configure_logging(value, False)


def _quiet(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(dict)["quiet"] = True
        _configure_logging(0, True)


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


_STAMP = "%Y-%m-%d %H:%M:%S"  # local time on the lines of commands that run for days


def _stamp() -> str:
    return time.strftime(_STAMP)


def _stamped_report(report: IndexReport) -> None:
    """A report line as long-running commands (watch, serve --watch) print them: with the local time."""
    _print_report(report, stamp=True)


def _timestamped_logs() -> None:
    """The library's log lines with the local time, for commands that run for days (watch, serve --watch)."""
    for h in logging.getLogger("simsearch").handlers:
        if isinstance(h, _EchoHandler):
            h.setFormatter(logging.Formatter("%(asctime)s %(message)s", _STAMP))


def _print_report(report: IndexReport, stamp: bool = False) -> None:
    work = report.added + report.updated
    busy = report.seconds - report.timings.get("model_load", 0.0)
    rate = f" ({work / busy:.1f} images/s after loading the model)" if work and busy > 0 else ""
    when = f"{_stamp()} " if stamp else ""
    click.echo(f"{when}{report.folder}: {report.added} added, {report.updated} updated, {report.moved} moved, "
               f"{report.removed} removed, {report.unchanged} unchanged, {report.failed} failed "
               f"in {report.seconds:.1f} s{rate}")
    if report.labelled:
        click.echo(f"  labelled {report.labelled} photos"
                   + (f" ({report.timings['labels'] + report.timings.get('labels_fill', 0.0):.1f} s classifying)"
                      if "labels" in report.timings else ""))
    if (c := report.cpu) and c["photos"] >= 2:
        click.echo(f"  CPU per photo: decode {c['decode_ms']:.1f} ms, model {c['model_ms']:.1f} ms, other "
                   f"{c['other_ms']:.1f} ms; {c['cores']} cores allow {c['bound_per_s']:.1f} images/s, "
                   f"this run {c['per_s']:.1f} ({c['of_bound']:.2f} of that)")
