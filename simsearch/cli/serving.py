"""The serve command: the web page and HTTP API under uvicorn, and optionally a watcher."""

from __future__ import annotations

import click

from .common import (
    _hint_args,
    _open,
    _runtime_option,
    _stamped_report,
    _store_options,
    _timestamped_logs,
    main,
)


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
@click.option("--create", is_flag=True,
              help="Serve an empty new store if there is none yet (a new container); without it a store that "
                   "does not exist (a mistyped --store or --db) is an error, never a new empty one.")
@click.option("--allow-private-urls", is_flag=True,
              help="Let searches by URL fetch from loopback, private and link-local addresses (this machine and "
                   "its network); by default only public internet addresses are fetched.")
def serve(store: str | None, model: str | None, db: str | None, runtime: str | None, device: str | None, host: str, port: int, token: str | None,
          max_upload_mb: int, cors_origins: tuple[str, ...], watch_folders: bool, allowed_hosts: tuple[str, ...],
          max_upload_pixels: int, insecure_no_token: bool, create: bool, allow_private_urls: bool) -> None:
    """Serve the web page and HTTP API (OpenAPI docs at /docs).

    With --create, a new empty store is served too: the page says how to index a folder.

    \b
      simsearch serve --store data/photos
      simsearch serve --store data/photos --watch
      simsearch serve --store data/photos --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    import threading

    import uvicorn

    from ..server import create_app
    from ..transport import server_options

    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        if not insecure_no_token:
            raise click.UsageError(f"--host {host} lets other machines reach the server: set --token (or "
                                   f"SIMSEARCH_TOKEN), or pass --insecure-no-token to run without one")
        click.echo(f"warning: serving on {host} without a token: anyone who can reach it may start re-indexing",
                   err=True)
    s = _open(store, model, db, create=create, runtime=runtime, device=device)
    watcher = None
    if watch_folders:
        from ..watch import FolderWatcher

        _timestamped_logs()
        watcher = FolderWatcher(s, on_report=_stamped_report)
        threading.Thread(target=watcher.run, args=(threading.Event(),), name="simsearch-watch", daemon=True).start()
    app = create_app(s, token=token or None, max_upload=max_upload_mb * 1024 * 1024,
                     cors_origins=list(cors_origins) or None, host=host, extra_hosts=list(allowed_hosts),
                     max_upload_pixels=max_upload_pixels, watching=watcher or False,
                     allow_private_urls=allow_private_urls)
    if not s.folders():
        click.echo(f"store {s.root} is empty: index a folder with `simsearch index FOLDER {_hint_args(s, db)}`", err=True)
    click.echo(f"simsearch on http://{host}:{port}/ (API docs: /docs)", err=True)
    uvicorn.run(app, host=host, port=port, **server_options())  # slow clients' limits: simsearch.transport
