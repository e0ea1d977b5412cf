"""`mpctrain party ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="party commands", no_args_is_help=True)
