"""The ``mpctrain`` console script: one sub-command group per role."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

import mpctrain.cli.attest_fetch  # noqa: F401  (registers attest fetch-collateral)
from mpctrain.cli import aggregator, attest, audit, job, keys, party
from mpctrain.memory import keep_freed_memory

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

app = typer.Typer(
    pretty_exceptions_show_locals=False,  # locals in a traceback would print key bytes and data rows
    help="mpctrain: multi-party confidential training", no_args_is_help=True)
app.add_typer(keys.app, name="keys")
app.add_typer(attest.app, name="attest")
app.add_typer(job.app, name="job")
app.add_typer(party.app, name="party")
app.add_typer(aggregator.app, name="aggregator")
app.add_typer(audit.app, name="audit")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keep_freed_memory()  # every role passes multi-megabyte messages: reuse freed pages (mpctrain.memory)


@app.command()
def demo(mode: str = typer.Option("pooled", "--mode", help="pooled | federated (four-bank Flower example)"),
         out: Path | None = typer.Option(None, "--out", help="pooled: directory for the keys, simulated root, audit "
                                         "log and opened outputs (default ./out/demo, in the current directory)"),
         ) -> None:
    """Run the main job on the embedded default: simulated TEE, bundled data, loopback gRPC.

    Needs the example data of a source checkout (examples/): an editable
    install (`pip install -e .`, `make demo`) has it; a plain wheel does not.
    """
    from mpctrain.sim.demo import DemoError

    if mode not in ("pooled", "federated"):
        raise typer.BadParameter(f"unknown mode {mode!r}; use pooled or federated", param_hint="--mode")
    if mode == "federated" and out is not None:
        raise typer.BadParameter("the federated demo writes nothing to disk (it runs in memory)", param_hint="--out")
    try:
        if mode == "federated":
            from mpctrain.enclave.federated.demo import run_federated_demo

            run_federated_demo()
            return
        from mpctrain.sim.demo import run_demo

        run_demo(out)
    except DemoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
