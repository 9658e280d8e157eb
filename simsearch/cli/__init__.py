"""The `simsearch` command: parse, call one Store method, print. Errors become exit codes in one place
(simsearch.cli.common). The commands live by group: indexing, querying, duplicates, serving, upkeep
(stats, check, optimize) and setup (formats, config, model); importing this package registers them all.
"""

from __future__ import annotations

from . import duplicates, indexing, querying, serving, setup, upkeep  # noqa: F401 (each registers its commands)
from .common import main

__all__ = ["main"]
