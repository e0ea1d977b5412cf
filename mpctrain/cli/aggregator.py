"""`mpctrain aggregator serve --config aggregator.toml`: the enclave's gRPC server."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from mpctrain.enclave.audit import AuditWriteError
from mpctrain.enclave.config import AggregatorConfig, ConfigError
from mpctrain.enclave.server import Aggregator, tls_credentials

app = typer.Typer(
    pretty_exceptions_show_locals=False,  # locals in a traceback would print key bytes and data rows
    help="aggregator (the enclave): serve jobs, attestation, data and results", no_args_is_help=True)


@app.command()
def serve(
    config: Path = typer.Option(..., "--config", "-c", help="aggregator.toml"),
    listen: str | None = typer.Option(None, help="override `listen` (host:port; port 0 picks one)"),
    write_policy: Path | None = typer.Option(None, help="write the enclave policy parties should pin (sim only)"),
) -> None:
    """Generate enclave keys, attest with the configured TEE, and serve until interrupted.

    With a "federated" table in the config, each federated job every party
    consented to is served through that Flower SuperLink: it waits for its
    run (flwr run), checks the run's code and config, and runs the rounds.
    """
    console = Console(highlight=False)
    try:
        cfg = AggregatorConfig.load(config)
        agg = Aggregator.from_config(cfg)
        port = agg.start(listen or cfg.listen, tls_credentials(cfg))
    except AuditWriteError as exc:  # checked before any port is bound: a second aggregator on one log
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except (ConfigError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    host = (listen or cfg.listen).rsplit(":", 1)[0]
    console.print(f"aggregator serving on {host}:{port} (attester {cfg.attester}; "
                  f"{'TLS' if cfg.tls_cert else 'plaintext transport'}; health and reflection on)")
    if cfg.federated is not None:
        console.print(f"federated jobs: served through the SuperLink at {cfg.federated.superlink} "
                      f"({'TLS' if cfg.federated.root_certificates else 'plaintext transport'}); each waits for "
                      "its `flwr run` once every party has consented")
    attester = agg.identity.attester
    measurement = getattr(attester, "measurement", None)
    if measurement is not None:
        console.print(f"measurement {measurement.hex()}")
    if write_policy is not None and cfg.attester == "sim" and cfg.sim_root_dir is not None:
        from mpctrain.attest.sim import ROOT_PEM, root_pin
        from mpctrain.party.profile import policy_toml

        pin = root_pin(cfg.sim_root_dir / ROOT_PEM)
        policy = {"backends": ["sim"], "sim": {"roots": [pin], "measurements": [measurement.hex()]}}
        write_policy.write_text("# written by `mpctrain aggregator serve --write-policy`\n" + policy_toml(policy))
        console.print(f"enclave policy for parties written to {write_policy}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    agg.stop(grace=2.0)
    console.print("aggregator stopped")
