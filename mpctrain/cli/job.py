"""`mpctrain job propose|approve|status|fetch`: manage a job as one of its parties."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mpctrain.attest import PolicyError
from mpctrain.attest.policy import report_only_warning
from mpctrain.cli.output import error, labelled, plain_console, warning
from mpctrain.enclave.auth import UNKNOWN_PARTY
from mpctrain.jobs import JobManifest, ManifestError
from mpctrain.party.agent import PartyAgent
from mpctrain.party.attestation import attest_for_job
from mpctrain.party.audit_check import AuditCheckFailed
from mpctrain.party.config import PartyConfig, PartyConfigError
from mpctrain.party.errors import AttestationRefused, PartyError, ShardRefused, Unauthenticated
from mpctrain.party.profile import DEFAULT_PROFILES, POLICY_FILE, agent_from_config, profile_path, report_only
from mpctrain.party.rules import recipients_unchecked
from mpctrain.seal.errors import SealError
from mpctrain.seal.keydir import no_keys_message, private_key_files

app = typer.Typer(
    pretty_exceptions_show_locals=False,  # locals in a traceback would print key bytes and data rows
    help="jobs: propose a manifest, approve it, follow it, fetch its outputs", no_args_is_help=True)

AS = typer.Option(..., "--as", help="party id (profile parties/ID/party.toml) or a path to a party.toml")
PROFILES = typer.Option(DEFAULT_PROFILES, help="directory of party profiles")
AGGREGATOR = typer.Option(None, help="override the aggregator address of the profile")
POLICY = typer.Option(None, help="override the profile's attestation policy file")
KEYS = typer.Option(None, "--keys", help="directory with this party's identity.key and kem.key, "
                                         "instead of the profile's keys_dir (every call, reads included, is "
                                         "signed with them)")


def _console() -> Console:
    return plain_console()


def _agent(party: str, profiles: Path, aggregator: str | None, policy: Path | None = None,
           keys: Path | None = None, create_keys: bool = False) -> PartyAgent:
    """The profile's agent; keys are created only for ``create_keys`` (propose) and never in a ``--keys`` dir."""
    try:
        config = PartyConfig.load(profile_path(party, profiles))
        if keys is not None:  # given keys must exist: never generate a new identity in a directory named by hand
            if private_key_files(keys) is None:
                raise PartyConfigError(no_keys_message(keys, "--keys"))
            config = dataclasses.replace(config, keys_dir=keys)
        return agent_from_config(config, aggregator, policy, create_keys=create_keys and keys is None)
    except (PartyConfigError, PolicyError, SealError, OSError) as exc:
        _console().print(error(exc))
        raise typer.Exit(2) from exc


def _fail(exc: Exception) -> typer.Exit:
    message = str(exc)
    if isinstance(exc, Unauthenticated) and UNKNOWN_PARTY in message:
        # the aggregator knows party ids only from manifests, and says no more (it hides which jobs exist)
        message += (" (no job on this aggregator names this party yet, or the job id is wrong; the key is not "
                    "what failed)")
    _console().print(error(message))
    return typer.Exit(1)


# attestation checks that fail before any evidence is verified (``attest_aggregator_evidence``): no policy is at fault
_NO_EVIDENCE = {
    "unreachable": "the aggregator at {target} did not answer; check the address (the profile's aggregator, or "
                   "--aggregator) and that it is running, then propose again",
    "busy": "the aggregator at {target} is busy (it limits how often it serves evidence); propose again shortly",
}


@app.command()
def propose(job_file: Path = typer.Argument(..., help="job.toml"), party: str = AS, profiles: Path = PROFILES,
            aggregator: str | None = AGGREGATOR, keys: Path | None = KEYS,
            skip_enclave_check: bool = typer.Option(
                False, "--skip-enclave-check", help="propose although the live enclave fails the job's "
                "[enclave_policy] (e.g. the job is for an enclave not started yet)")) -> None:
    """Serialise the manifest once and propose it; prints the digest every party will sign.

    The live enclave is first attested under the job's own [enclave_policy],
    as each party will before consenting: a job whose pins the enclave does
    not meet is refused here, naming the check that failed and the values;
    an aggregator that does not answer (or is busy) is said to be so, as no
    pin is at fault then.
    The proposer's keys are created in its profile's keys_dir when it has
    none yet, as the manifest names its public files (the other job commands
    never create keys: they need the identity the job names).
    """
    agent = _agent(party, profiles, aggregator, keys=keys, create_keys=True)  # before the manifest reads its .pub
    try:
        manifest = JobManifest.from_toml(job_file)
    except ManifestError as exc:
        raise _fail(exc) from exc
    if not skip_enclave_check:
        try:
            attest_for_job(agent.client, manifest)
        except AttestationRefused as exc:
            if exc.check in _NO_EVIDENCE:  # the enclave was never checked: neither its pins nor the job's are at fault
                raise _fail(PartyError(f"not proposed: {_NO_EVIDENCE[exc.check].format(target=agent.client.target)}"
                                       f" ({exc})")) from None
            raise _fail(PartyError(
                f"not proposed: the live enclave at {agent.client.target} fails the enclave_policy this job pins, "
                f"so every party's approval would fail. {exc}. Fix the enclave_policy table in {job_file} (for the "
                "simulated TEE: the file `aggregator serve --write-policy` writes), or pass --skip-enclave-check"
            )) from None
    try:
        status = agent.client.propose(manifest)
    except PartyError as exc:
        raise _fail(exc) from exc
    _console().print(f"proposed {status.job_id}: digest {manifest.digest().hex()}\n"
                     f"waiting for consent of {', '.join(status.missing_consents)}")


def _data_problem(agent: PartyAgent, manifest: JobManifest) -> str | None:
    """Why this data party's table would not fit a pooled job (as ``party run`` checks before consenting)."""
    if manifest.mode != "pooled" or manifest.party(agent.party_id).role != "data" or agent.data_path is None:
        return None
    try:
        agent.check_data(manifest)
    except ShardRefused as exc:
        return f"this party's data does not fit the job: {exc}"
    return None


def _consent_confirmed(agent: PartyAgent, manifest: JobManifest, console: Console) -> bool:
    """Whether the enclave-signed audit view records this party's consent to ``manifest``; the host's unsigned
    ``consented`` list alone is not believed. Unconfirmed, the consent is sent anyway after the usual review:
    the enclave records a party's consent once, so a true claim costs nothing and a false one cannot block it."""
    try:
        agent.confirm_consent(manifest)
    except AuditCheckFailed as exc:
        console.print(labelled("note:", "yellow", f"the aggregator reports {agent.party_id} already consented to "
                               f"{manifest.job_id}; not confirmed by a signed record ({exc}). Reviewing the job and "
                               "sending the consent (the enclave records a party's consent once)"))
        return False
    return True


@app.command()
def approve(job_id: str, party: str = AS, profiles: Path = PROFILES, aggregator: str | None = AGGREGATOR,
            policy: Path | None = POLICY, keys: Path | None = KEYS,
            force: bool = typer.Option(False, "--force", help="consent although the job breaks this party's "
                                       "local rules, or the rules name no allowed_recipients (never when the "
                                       "enclave fails the job's policy, or that policy breaks this party's "
                                       "allowed_measurements)")) -> None:
    """Attest the aggregator, review the job under local rules, then sign consent by hand.

    A job that breaks the profile's rules is refused unless --force is given
    after reviewing the problems listed; so is every job while the rules name
    no allowed_recipients, as they checked nobody who receives outputs
    (`party run` does not consent alone then either).

    A federated job is approved only when the ClientApp code named by the
    profile's flower.toml has the digest the manifest pins; the manifest
    and the consent are then stored for the bank's SuperNode too.

    A consent the enclave's signed audit log already records is not sent
    again (for a federated job the local copy is still checked and stored,
    restoring a lost one); one only the aggregator's unsigned reply claims
    is reviewed and sent (the enclave records a party's consent once).
    """
    from mpctrain.enclave.federated.errors import FederatedError  # imports Flower: only when approving

    agent = _agent(party, profiles, aggregator, policy, keys)
    console = _console()
    try:
        agent.attest()
        unpinned = report_only(agent)
        if unpinned:  # as `attest verify`: consent to "genuine hardware" must not read as "the expected code"
            console.print(warning(report_only_warning(unpinned, POLICY_FILE)))
        manifest = agent.manifest(job_id)
        federated = manifest.mode == "federated"
        profile = profile_path(party, profiles).parent
        if agent.party_id in agent.client.get_job(job_id).consented and _consent_confirmed(agent, manifest, console):
            console.print(f"{agent.party_id} already approved {job_id} (consent digest {manifest.digest().hex()}, "
                          "confirmed by the enclave's audit log); nothing sent")
            if federated:  # the bank's SuperNode still needs its local copy, which may be lost or elsewhere
                _restore_federated(profile, manifest, agent, console)
                _flower_hint(profile, job_id, console)
            return
        review = agent.assess(manifest)
        problems = review.problems
        unchecked = recipients_unchecked(agent.rules)
        if unchecked:  # as run_party: rules that checked no recipient do not make a job acceptable
            problems.append(f"{unchecked} (this job's: {', '.join(manifest.recipients)})")
        for p in problems:
            console.print(labelled("note:", "yellow", p))
        if review.enclave:  # typed by the check that found it: a problem's text (a recipient's name) decides nothing
            raise PartyError(f"refusing to consent, with or without --force: {len(review.enclave)} of the problems "
                             "listed above concern the enclave (it fails the job's enclave_policy, or that policy "
                             "accepts measurements this party's allowed_measurements do not); attest the aggregator "
                             "again, or have the job re-proposed with an enclave_policy this party accepts")
        data = _data_problem(agent, manifest)
        if data:
            console.print(labelled("note:", "yellow", data))
        if (problems or data) and not force:
            fix = (" (or name allowed_recipients, their keys in [rules.known_parties], in the profile)"
                   if unchecked else "")
            why = [f"the job breaks {len(problems)} of this party's rules"] * bool(problems) + \
                  ["this party's data does not fit it"] * bool(data)
            raise PartyError(f"refusing to consent: {' and '.join(why)} (listed above); review them, then re-run "
                             f"with --force to consent anyway{fix}")
        if federated:  # the ClientApp must be the consented code; the SuperNode's copy is stored first, as
            # the last consent starts the rounds at once
            from mpctrain.party.flower.profile import approve_federated_job

            approve_federated_job(profile, manifest, agent.identity)
        agent.approve(manifest, force=True)
    except (PartyError, FederatedError) as exc:
        raise _fail(exc) from exc
    console.print(f"{agent.party_id} approved {job_id} (digest {manifest.digest().hex()})")
    if federated:
        _flower_hint(profile, job_id, console)


def _restore_federated(profile: Path, manifest: JobManifest, agent: PartyAgent, console: Console) -> None:
    """For a consent the enclave already records: the local steps alone (the app code check, the manifest and
    consent stored for the SuperNode, which ``flower-exec`` needs), so a lost ``jobs/<id>`` record or another
    copy of the profile can still serve the job. Nothing is sent. Raises ``FederatedError``."""
    from mpctrain.party.flower.profile import approve_federated_job, approved_job_dir, holds_approval

    held = holds_approval(profile, manifest)
    approve_federated_job(profile, manifest, agent.identity)  # local only: checks the code, signs, stores
    if not held:
        console.print(f"stored the manifest and this party's consent in {approved_job_dir(profile, manifest.job_id)} "
                      "for its SuperNode (they were missing or stale there)")


def _flower_hint(profile: Path, job_id: str, console: Console) -> None:
    """Whether the profile's flower.toml names the job: the SuperNode serves only that one."""
    import tomllib

    try:
        named = tomllib.loads((profile / "flower.toml").read_text()).get("job")
    except (OSError, tomllib.TOMLDecodeError):
        named = None
    console.print(f"{profile / 'flower.toml'} names this job: its SuperNode serves it" if named == job_id else
                  f'set job = "{job_id}" in {profile / "flower.toml"} for its SuperNode to serve this job')


@app.command()
def status(job_id: str, party: str = AS, profiles: Path = PROFILES, aggregator: str | None = AGGREGATOR,
           keys: Path | None = KEYS) -> None:
    """State, consents, uploads and the public metrics of a job (the request is signed: parties of the job only)."""
    agent = _agent(party, profiles, aggregator, keys=keys)
    try:
        st = agent.client.get_job(job_id)
    except PartyError as exc:
        raise _fail(exc) from exc
    t = Table(title=f"job {st.job_id}")
    t.add_column("field")
    t.add_column("value")
    mode = _mode(st.manifest)
    t.add_row("state", st.state)
    if mode:
        t.add_row("mode", mode)
    t.add_row("digest", st.manifest_digest.hex())
    t.add_row("consented", ", ".join(st.consented) or "-")
    t.add_row("missing consent", ", ".join(st.missing_consents) or "-")
    if mode == "federated":  # no shard is uploaded: each bank trains on its own data, updates go to the enclave
        t.add_row("uploaded", "n/a (federated: data stays with each party)")
    else:
        t.add_row("uploaded", ", ".join(st.uploaded) or "-")
    for k, v in sorted(st.public_metrics.items()):
        t.add_row(k, f"{v:.4f}")
    if st.state == "done":  # a requested metric the job could not compute is said to be missing, and why
        from mpctrain.enclave.pooled import unavailable_reason

        try:  # the status reply is unsigned and display-only: an unreadable manifest skips these rows
            manifest: JobManifest | None = JobManifest.from_bytes(st.manifest)
        except ManifestError:
            manifest = None
            t.add_row("manifest", "unreadable in the aggregator's reply (metrics not computed cannot be named)")
        if manifest is not None and manifest.mode == "pooled":
            for k in manifest.public_metrics:
                if k not in st.public_metrics and not (k == "train_loss" and not manifest.privacy):
                    t.add_row(k, f"not computed: {unavailable_reason(k, manifest)}")
    if st.error:
        t.add_row("error", st.error)
    t.caption = ("as relayed by the host, unsigned: the enclave-signed record of states and metrics is the "
                 "audit log (`mpctrain audit fetch` then `audit verify`); outputs carry a signed receipt")
    _console().print(t)


def _mode(manifest: bytes) -> str:
    """The job's mode from the (unsigned, display-only) manifest in the status reply; "" when unreadable."""
    try:
        return JobManifest.from_bytes(manifest).mode
    except ManifestError:  # a ValueError: the host relays this reply unsigned
        return ""


@app.command()
def fetch(job_id: str, party: str = AS, out: Path = typer.Option(..., "--out", help="directory for the outputs"),
          profiles: Path = PROFILES, aggregator: str | None = AGGREGATOR, policy: Path | None = POLICY,
          keys: Path | None = KEYS) -> None:
    """Attest, fetch the sealed outputs, open them with this party's key, verify the receipt."""
    agent = _agent(party, profiles, aggregator, policy, keys)
    agent.outputs_dir = out
    try:
        agent.attest()
        st = agent.client.get_job(job_id)
        if st.state == "failed":  # said plainly: a failed job never gets outputs or a receipt
            raise PartyError(f"job {job_id} failed: {st.error or 'no reason recorded'}; it has no outputs")
        if st.state != "done":
            raise PartyError(f"job {job_id} is {st.state}: its outputs exist once it is done (follow it with "
                             f"`mpctrain job status {job_id} --as {party}`)")
        opened = agent.fetch(agent.manifest(job_id))
    except PartyError as exc:
        raise _fail(exc) from exc
    console = _console()
    for name, data in opened.items():
        console.print(f"{name}: {len(data):,} bytes -> {out / job_id}")
    console.print(f"{agent.party_id}: outputs opened and receipt verified (signed by the attested enclave over "
                  f"this job and these outputs) -> {out / job_id}")


@app.command("app-digest")
def app_digest(app_dir: Path = typer.Argument(..., help="a Flower app directory (its .py files)")) -> None:
    """Print the code digest of a Flower app, for code_digest in the job's training.flower table.

    It is SHA-384 over the directory's .py files, the same hash every bank
    and the enclave compute before any of that code runs.
    """
    from mpctrain.party.flower.runtime import app_code_digest

    try:
        typer.echo(app_code_digest(app_dir))
    except OSError as exc:
        raise _fail(exc) from exc
