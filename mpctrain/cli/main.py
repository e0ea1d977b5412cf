"""The ``mpctrain`` console script: one sub-command group per role."""

from __future__ import annotations

import logging
import os

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
def demo(mode: str = typer.Option("pooled", "--mode", help="pooled | federated (four-bank Flower example)")) -> None:
    """Run the main job on the embedded default: simulated TEE, bundled data, loopback gRPC."""
    if mode == "federated":
        from mpctrain.enclave.federated.demo import run_federated_demo

        run_federated_demo()
        return
    if mode != "pooled":
        raise typer.BadParameter(f"unknown mode {mode!r}; use pooled or federated", param_hint="--mode")
    try:
        from mpctrain.sim.demo import run_demo
    except ImportError:
        from mpctrain.cli.attest import attest_demo as run_demo  # until the pooled demo exists
    run_demo()
