"""Commands about simsearch itself: formats, config, and the model group (import-slim)."""

from __future__ import annotations

import os

import click

from ..config import DEFAULT_DEVICE, DEFAULT_MODEL, DEFAULT_PRECISION, DEFAULT_RUNTIME, default_store_dir
from .common import _json_option, _print_json, main


@main.command()
@_json_option
def formats(as_json: bool) -> None:
    """List the photo file extensions simsearch looks at, and what decodes each here."""
    from ..formats import supported_formats

    found = supported_formats()
    if as_json:
        _print_json([{"extension": f.extension, "family": f.family, "decoder": f.decoder, "install": f.install}
                     for f in found])
        return
    for f in found:
        click.echo(f"{f.extension:<7} {f.decoder or 'missing: pip install ' + repr(f.install)}")


@main.command("config")
@click.option("--store", metavar="DIR", type=click.Path(file_okay=False),
              help="Also show this store's folders and what each leaves out [default: the default store, if any].")
@_json_option
def config_(store: str | None, as_json: bool) -> None:
    """Show the config file's place, the defaults in force (environment first, then the file, then
    simsearch's own), and the store's folders with the excludes each remembers.

    The file is TOML with any of: store, model, db, runtime, precision, device (strings), exclude (a list
    of globs for new folders), include_hidden (true/false). $SIMSEARCH_CONFIG moves it.
    """
    from ..config import CONFIG_KEYS, config_path, user_config, user_default

    path = config_path()
    in_file = user_config()
    values = {k: user_default(k) for k in CONFIG_KEYS}
    builtin = {"store": str(default_store_dir()), "model": DEFAULT_MODEL, "db": "SQLite in the store folder",
               "runtime": DEFAULT_RUNTIME, "precision": DEFAULT_PRECISION, "device": DEFAULT_DEVICE,
               "exclude": [], "include_hidden": False}
    sources = {}
    for key in CONFIG_KEYS:
        env = CONFIG_KEYS[key][0]
        sources[key] = ("env " + env) if env and os.environ.get(env) else "config file" if key in in_file else "default"
        if values[key] is None:
            values[key] = builtin[key]
    folders = _store_folders(store or values["store"], explicit=store is not None)
    if as_json:
        _print_json({"config_file": str(path), "exists": path.exists(), "settings": values, "sources": sources,
                     "folders": folders})
        return
    click.echo(f"config file: {path}{'' if path.exists() else ' (none yet)'}")
    for key, value in values.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        click.echo(f"  {key:<15} {shown if shown not in ('', None) else '-'}  ({sources[key]})")
    if folders is not None:
        click.echo(f"folders of the store at {store or values['store']}:" if folders else
                   f"the store at {store or values['store']} has no folders yet")
        for folder, options in folders.items():
            left_out = ", ".join(options["exclude"]) or "nothing beyond junk"
            click.echo(f"  {folder}  excludes: {left_out}" + ("; hidden files included" if options["include_hidden"] else ""))


def _store_folders(store: str, explicit: bool) -> dict[str, dict[str, object]] | None:
    """Each folder of the store with its remembered scan options; None where there is no store or it cannot
    be read (an error only when one was named)."""
    from ..errors import SimsearchError
    from ..store import Store

    try:
        with Store(store) as s:
            return {f: s.scan_options(f).to_meta() for f in s.folders()}
    except SimsearchError:  # config must show the settings even where the default store cannot be read
        if explicit:
            raise
        return None


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
    from ..models import import_slim as run_import

    out = run_import(checkpoint, out_dir, sha256=sha256, include_top=not no_head)
    click.echo(f"wrote {out}: use it with --model {out}")
