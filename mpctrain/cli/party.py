"""`mpctrain party run --config parties/hospital-a/party.toml`: one party's side of a job."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from mpctrain.attest import PolicyError
from mpctrain.party.config import PartyConfig, PartyConfigError
from mpctrain.party.errors import AttestationRefused, ManifestRejected, PartyError
from mpctrain.party.profile import agent_from_config, run_party

app = typer.Typer(help="party agent: attest, approve, upload sealed data, fetch outputs", no_args_is_help=True)


@app.command()
def run(
    config: Path = typer.Option(..., "--config", "-c", help="party.toml of this party"),
    job: str | None = typer.Option(None, help="job id (default: the first proposed job naming this party)"),
    aggregator: str | None = typer.Option(None, help="override the aggregator address"),
    timeout: float = typer.Option(600.0, help="seconds to wait for the job at each stage"),
    policy: Path | None = typer.Option(None, help="override the profile's attestation policy file"),
) -> None:
    """Attest the aggregator, approve by local rules, upload, wait for training, open the outputs."""
    console = Console(highlight=False)
    try:
        cfg = PartyConfig.load(config)
        agent = agent_from_config(cfg, aggregator, policy)
    except (PartyConfigError, PolicyError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=console,
                      transient=True) as progress:
            task = progress.add_task(f"{cfg.id} → enclave", total=1, visible=False)

            def bar(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total, visible=True)

            run_party(agent, job, timeout=timeout, say=console.print, progress=bar)
    except AttestationRefused as exc:
        console.print(f"[red]refused:[/red] {exc}\nnothing was sent to the aggregator")
        raise typer.Exit(1) from exc
    except ManifestRejected as exc:
        console.print(f"[yellow]not approved:[/yellow] {exc}")
        raise typer.Exit(1) from exc
    except PartyError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        agent.client.close()
