"""Commands that change what the store holds from the folders: index (here or on Ray), watch, remove,
and the failures they recorded."""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ..config import PRECISIONS, RESIZE_POLICIES
from ..classifier import DEFAULT_CLASSIFIER
from ..distributed import DEFAULT_SHARD_SIZE, RayOptions
from ..store import absolute
from .common import (
    _emit,
    _hint_args,
    _json_option,
    _open,
    _output,
    _output_option,
    _print_json,
    _print_report,
    _progress_bar,
    _runtime_option,
    _stamp,
    _stamped_report,
    _store_options,
    _timestamped_logs,
    main,
)


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
              help="Model arithmetic, fixed when the store is made: auto (the fastest this CPU runs that "
                   "keeps the neighbours on a sample of the folder's photos), fp32, bf16 (CPUs with AVX512_BF16 "
                   "or AMX), or int8 calibrated on the folder's own photos (VNNI) [default: the store's, or auto].")
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
@click.option("--labels", is_flag=True,
              help="Keep each photo's ImageNet labels from now on (remembered for the store): photos indexed "
                   "before are labelled without being embedded again; then `query --label dog` finds them.")
@click.option("--classifier", metavar="HANDLE",
              help=f"With --labels: the classification module (URL or folder) [default: {DEFAULT_CLASSIFIER}].")
@_json_option
@click.pass_obj
def index(obj: dict[str, Any], folder: str | None, store: str | None, model: str | None, db: str | None,
          excludes: tuple[str, ...], include_hidden: bool | None, batch_size: int | None, workers: int | None,
          fingerprints: bool | None, resize: str | None, precision: str | None, runtime: str | None, device: str | None, ray_address: str | None,
          staging: str | None, shard_size: int | None, actors: int | None, labels: bool, classifier: str | None,
          as_json: bool) -> None:
    """Index FOLDER: embed new and changed photos, follow moved ones, forget deleted ones.

    Without FOLDER, every folder of the store is brought up to date, each with the choices
    (--exclude, --include-hidden) remembered for it.

    \b
      simsearch index ~/Pictures --store data/photos
      simsearch index ~/Pictures --exclude 'Screenshots' --exclude '*.tmp.jpg'
      simsearch index --store data/photos
      simsearch index --labels --store data/photos   # add ImageNet labels, no re-embedding
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
    if classifier and not labels:
        raise click.UsageError("--classifier goes with --labels")
    progress, close = _progress_bar(obj["quiet"] or as_json)
    with _ray_off_stdout() if ray else contextlib.nullcontext(), \
            _open(store, model, db, create=folder is not None, classifier=classifier, batch_size=batch_size,
                  workers=workers, resize=resize, precision=precision, runtime=runtime, device=device,
                  fingerprints=fingerprints) as s:
        try:
            if folder is None:
                reports = s.update(progress=progress, ray=ray, labels=labels)
            else:
                reports = [s.index(folder, progress=progress, ray=ray, exclude=excludes or None,
                                   include_hidden=include_hidden, labels=labels)]
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


@main.command()
@_store_options
@_runtime_option
@click.option("--debounce", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True,
              help="Seconds a folder must be quiet before its changes are indexed.")
def watch(store: str | None, model: str | None, db: str | None, runtime: str | None, device: str | None,
          debounce: float) -> None:
    """Keep the store up to date: index new, changed, moved and deleted photos in its folders as they happen.

    Starts with one incremental pass, so changes made while nothing watched are picked up. A folder
    that disappears (an unmounted disk) is left alone, nothing removed, until it is back. Ctrl-C stops.

    \b
      simsearch watch --store data/photos
    """
    import signal
    import threading

    from ..watch import FolderWatcher

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with _open(store, model, db, runtime=runtime, device=device) as s:
        if not s.folders():
            raise click.ClickException(f"store {s.root} has no folders to watch: index one with "
                                       f"`simsearch index FOLDER {_hint_args(s, db)}`")
        _timestamped_logs()
        click.echo(f"{_stamp()} watching {', '.join(s.folders())} (Ctrl-C stops)", err=True)
        try:
            FolderWatcher(s, debounce=debounce, on_report=_stamped_report).run(stop)
        except KeyboardInterrupt:
            click.echo("stopped", err=True)


@main.command()
@click.argument("paths", nargs=-1, required=True)
@_store_options
@_json_option
def remove(paths: tuple[str, ...], store: str | None, model: str | None, db: str | None, as_json: bool) -> None:
    """Forget PATHS (files, or everything under folders); the files themselves are not touched.

    A later `simsearch index` of their folder adds them again if they are still there: the command says
    so, and which --exclude keeps them out.
    """
    with _open(store, model, db) as s:
        removed = s.remove(paths)
        back = _indexed_again(s, paths)
    if as_json:
        _print_json({"removed": removed, "indexed_again_by": back})
        return
    click.echo(f"removed {removed} images")
    for b in back:
        excludes = " ".join(f"--exclude {shlex.quote(g)}" for g in b["exclude"])
        click.echo(f"note: {b['path']} is inside {b['folder']}, which this store indexes: the next `simsearch "
                   f"index` of it adds them again. To keep them out: simsearch index {shlex.quote(b['folder'])} "
                   f"{excludes}", err=True)


def _indexed_again(s: Any, paths: tuple[str, ...]) -> list[dict[str, Any]]:
    """The removed paths that a later index of one of the store's folders would add again (inside it, not
    left out by its remembered excludes), with the excludes that would keep each out."""
    out = []
    for p in paths:
        path = Path(absolute(p))  # as Store.remove resolved it
        for folder in s.folders():
            try:
                rel = path.relative_to(folder).as_posix()
            except ValueError:
                continue
            options = s.scan_options(folder)
            if rel == "." or not (options.keeps_dir(rel, path.name) if path.is_dir() else
                                  options.keeps_file(rel, path.name)):
                continue  # the folder itself, or already left out
            out.append({"path": str(path), "folder": folder, "exclude": [*options.exclude, rel]})
    return out


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
