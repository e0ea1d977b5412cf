"""`mpctrain aggregator ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="aggregator commands", no_args_is_help=True)
