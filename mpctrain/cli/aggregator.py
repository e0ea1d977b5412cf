"""`mpctrain aggregator serve --config aggregator.toml`: the enclave's gRPC server."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer

from mpctrain.attest.backend import Attester
from mpctrain.cli.output import error, plain_console, warning
from mpctrain.enclave.audit import AuditWriteError
from mpctrain.enclave.config import AggregatorConfig, ConfigError
from mpctrain.enclave.server import Aggregator, ListenError, make_attester, port_in_use, tls_credentials

app = typer.Typer(
    pretty_exceptions_show_locals=False,  # locals in a traceback would print key bytes and data rows
    help="aggregator (the enclave): serve jobs, attestation, data and results", no_args_is_help=True)


@app.command()
def serve(
    config: Path = typer.Option(..., "--config", "-c", help="aggregator.toml"),
    listen: str | None = typer.Option(None, help="override `listen` (host:port; port 0 picks one)"),
    write_policy: Path | None = typer.Option(None, help="write the enclave policy parties should pin (sim only)"),
    force: bool = typer.Option(False, "--force", help="let --write-policy replace a file that holds another policy"),
) -> None:
    """Generate enclave keys, attest with the configured TEE, and serve until interrupted.

    With a "federated" table in the config, each federated job every party
    consented to is served through that Flower SuperLink: it waits for its
    run (flwr run), checks the run's code and config, and runs the rounds.
    """
    console = plain_console()
    try:
        cfg = AggregatorConfig.load(config)
        address = listen or cfg.listen
        # every refusal that is cheap to foresee comes before the audit log is opened: a refused start leaves
        # no segment record (each one is a signed "an enclave started here" in the log parties verify)
        attester = make_attester(cfg)
        policy_text = _sim_policy(cfg, attester) if write_policy is not None else None
        if policy_text is not None:
            _check_replace(write_policy, policy_text, force)
        credentials = tls_credentials(cfg)
        if port_in_use(address):
            raise ListenError(address, in_use=True)
        agg = Aggregator.from_config(cfg, attester=attester)
        port = agg.start(address, credentials)
    except ListenError as exc:
        console.print(error(f"{exc}; stop it or pass --listen HOST:PORT" if exc.in_use else
                            f"{exc}; fix `listen` in {config} or pass --listen HOST:PORT"))
        raise typer.Exit(1 if exc.in_use else 2) from exc
    except AuditWriteError as exc:  # checked before any port is bound: a second aggregator on one log
        console.print(error(exc))
        raise typer.Exit(1) from None
    except (ConfigError, OSError) as exc:
        console.print(error(exc))
        raise typer.Exit(2) from exc
    host = address.rsplit(":", 1)[0]
    console.print(f"aggregator serving on {host}:{port} (attester {cfg.attester}; "
                  f"{'TLS' if cfg.tls_cert else 'plaintext transport'}; health and reflection on)")
    if cfg.federated is not None:
        console.print(f"federated jobs: served through the SuperLink at {cfg.federated.superlink} "
                      f"({'TLS' if cfg.federated.root_certificates else 'plaintext transport'}); each waits for "
                      "its `flwr run` once every party has consented")
    measurement = getattr(attester, "measurement", None)
    if measurement is not None:
        console.print(f"measurement {measurement.hex()}")
    if write_policy is not None and policy_text is None:
        console.print(warning(f"--write-policy: attester {cfg.attester!r} is no simulation; nothing written (pin "
                              "the measurements you reviewed in each party's policy)"))
    elif write_policy is not None and policy_text is not None:
        try:
            write_policy.write_text(policy_text)
        except OSError as exc:
            agg.stop(grace=0)
            console.print(error(f"cannot write {write_policy}: {exc}"))
            raise typer.Exit(2) from exc
        console.print(f"enclave policy for parties written to {write_policy}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    agg.stop(grace=2.0)
    console.print("aggregator stopped")


def _sim_policy(cfg: AggregatorConfig, attester: Attester) -> str | None:
    """The policy pinning this simulated enclave's root and measurement; None when the TEE is not simulated."""
    if cfg.attester != "sim":
        return None
    from mpctrain.attest.sim import ROOT_PEM, root_pin
    from mpctrain.enclave.server import DEFAULT_SIM_ROOT
    from mpctrain.party.profile import policy_toml

    pin = root_pin((cfg.sim_root_dir or DEFAULT_SIM_ROOT) / ROOT_PEM)
    measurement = attester.measurement.hex()
    policy = {"backends": ["sim"], "sim": {"roots": [pin], "measurements": [measurement]}}
    return "# written by `mpctrain aggregator serve --write-policy`\n" + policy_toml(policy)


def _check_replace(path: Path, text: str, force: bool) -> None:
    """Refuse to replace a file holding other text: it may be the policy parties pin (rewriting it is fine)."""
    try:
        current = path.read_text()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--write-policy {path}: cannot read the file already there ({exc})") from exc
    if current != text and not force:
        raise ConfigError(f"--write-policy {path} exists and holds another policy (perhaps one parties pin, or "
                          "another aggregator's); pass --force to replace it, or write to another file")
