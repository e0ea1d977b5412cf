"""`mpctrain party run --config parties/hospital-a/party.toml`: one party's side of a job."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from mpctrain.attest import PolicyError
from mpctrain.cli.output import error, labelled, plain_console
from mpctrain.party.config import PartyConfig, PartyConfigError
from mpctrain.party.errors import AttestationRefused, ManifestRejected, PartyError
from mpctrain.party.profile import agent_from_config, run_party
from mpctrain.seal.errors import SealError
from mpctrain.train.data import DataError

app = typer.Typer(
    pretty_exceptions_show_locals=False,  # locals in a traceback would print key bytes and data rows
    help="party agent: attest, approve, upload sealed data, fetch outputs", no_args_is_help=True)


@app.command()
def run(
    config: Path = typer.Option(..., "--config", "-c", help="party.toml of this party"),
    job: str | None = typer.Option(None, help="job id (default: the first proposed job naming this party)"),
    aggregator: str | None = typer.Option(None, help="override the aggregator address"),
    timeout: float = typer.Option(600.0, help="seconds to wait for the job at each stage"),
    policy: Path | None = typer.Option(None, help="override the profile's attestation policy file"),
) -> None:
    """Attest the aggregator, approve by local rules, upload, wait for training, open the outputs."""
    console = plain_console()
    try:
        cfg = PartyConfig.load(config)
        agent = agent_from_config(cfg, aggregator, policy, create_keys=True)  # a party's first run makes its keys
    except (PartyConfigError, PolicyError, SealError, OSError) as exc:
        console.print(error(exc))
        raise typer.Exit(2) from exc
    try:
        with Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(), console=console,
                      transient=True) as progress:
            task = progress.add_task(f"{cfg.id} → enclave", total=1, visible=False)

            def bar(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total, visible=True)

            run_party(agent, job, timeout=timeout, say=console.print, progress=bar)
    except AttestationRefused as exc:
        console.print(labelled("refused:", "red", f"{exc}\nnothing was sent to the aggregator"))
        raise typer.Exit(1) from exc
    except ManifestRejected as exc:
        console.print(labelled("not approved:", "yellow", exc))
        raise typer.Exit(1) from exc
    except (PartyError, DataError, SealError) as exc:  # one line: never a traceback of keys or rows
        console.print(error(exc))
        raise typer.Exit(1) from exc
    finally:
        agent.client.close()


@app.command("fl-audit")
def fl_audit(
    profile: Path = typer.Option(..., "--profile", "-p", help="party profile directory (party.toml, flower.toml)"),
    job: str | None = typer.Option(None, help="job id (default: the one flower.toml names)"),
    policy: Path | None = typer.Option(None, help="override the profile's attestation policy file"),
) -> None:
    """Check a federated job in the enclave's audit log against the updates this bank's SuperNode sent."""
    import dataclasses

    from mpctrain.attest import Policy
    from mpctrain.enclave.federated.errors import FederatedError
    from mpctrain.party.audit_check import AuditCheckFailed, fetch_job_view
    from mpctrain.party.flower.attestation import attest_enclave
    from mpctrain.party.flower.audit import check_federated_audit
    from mpctrain.party.flower.profile import load_profile
    from mpctrain.party.flower.sent import read_sent
    from mpctrain.party.profile import aggregator_channel

    console = plain_console()
    try:
        rt = load_profile(profile, job_id=job)
        if policy is not None:
            rt = dataclasses.replace(rt, policy=Policy.load(policy))
        cfg = PartyConfig.load(profile / "party.toml")
        sent = read_sent(rt.sent_log, rt.manifest.job_id) if rt.sent_log is not None else []
        enclave = attest_enclave(rt.evidence, rt.policy)
        with aggregator_channel(cfg) as channel:
            view = fetch_job_view(channel, rt.manifest.job_id, party_id=rt.party_id, identity=rt.identity,
                                  evidence=[enclave.evidence_digest])
        report = check_federated_audit(view, runtime=rt, enclave=enclave, sent=sent)
    except (FederatedError, PartyConfigError, PolicyError, OSError) as exc:
        console.print(error(exc))
        raise typer.Exit(2) from exc
    except AuditCheckFailed as exc:
        console.print(labelled("audit check failed:", "red", exc))
        raise typer.Exit(1) from exc
    s = report.summary
    console.print(f"job {s.job_id}: {s.rounds} round(s); {len(report.accepted)} update(s) of {rt.party_id} on record, "
                  f"all sent by it; outputs to {sorted(s.outputs)}")
    for u in report.not_accepted:
        console.print(labelled("not on record:", "yellow", f"{u.object_id} (run {u.run_id}): sent, but the round "
                                                            "went on without it"))


@app.command("flower-exec")
def flower_exec(
    profile: Path = typer.Option(..., "--profile", "-p", help="party profile directory (party.toml, flower.toml)"),
    supernode: str = typer.Option("127.0.0.1:9094", help="the SuperNode's Runtime API (flower-supernode --port)"),
    root_certificates: Path | None = typer.Option(None, help="its TLS CA, when it serves that API over TLS"),
    policy: Path | None = typer.Option(None, help="override the profile's attestation policy file"),
) -> None:
    """Run this bank's SuperNode's ClientApp tasks: only approved jobs' code.

    Start the SuperNode with --isolation process: it runs no app itself.
    Every FAB it relays is checked here before any of it runs: the run
    must name a job this bank approved (mpctrain-job, else flower.toml's
    job), and the FAB must hold exactly that job's consented code.
    """
    import signal
    import threading

    from mpctrain.attest import Policy
    from mpctrain.party.flower.executor import ApprovedJobs, serve_tasks

    console = plain_console()
    try:
        cfg = PartyConfig.load(profile / "party.toml")
        cfg.load_keys(create=False)  # a bank's keys exist before it approves anything
        jobs = ApprovedJobs(profile, Policy.load(policy) if policy is not None else None)
        roots = root_certificates.read_bytes() if root_certificates is not None else None
    except (PartyConfigError, PolicyError, SealError, OSError) as exc:
        console.print(error(exc))
        raise typer.Exit(2) from exc
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"{cfg.id}: running the ClientApp tasks of {supernode}, for the jobs approved in {profile} only")
    stats = serve_tasks(supernode, jobs, root_certificates=roots, stop=stop)
    console.print(f"{cfg.id}: stopped after {stats.tasks} task(s), {stats.failed} refused or failed")
