"""`mpctrain attest ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="attest commands", no_args_is_help=True)
