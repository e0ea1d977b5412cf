"""Build a party agent from its profile (party.toml + policy.toml + keys) and run its side of a job."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

from mpctrain.attest import Policy, PolicyError
from mpctrain.attest.policy import report_only_warning
from mpctrain.enclave.auth import UNKNOWN_PARTY
from mpctrain.jobs import JobManifest
from mpctrain.party.agent import PartyAgent
from mpctrain.party.client import AggregatorClient
from mpctrain.party.config import PartyConfig, PartyConfigError
from mpctrain.party.errors import ManifestRejected, PartyError, ShardRefused, Unauthenticated, WaitTimeout
from mpctrain.party.rules import PartyRules, recipients_unchecked

DEFAULT_PROFILES = Path("parties")


def profile_path(party: str, profiles: Path = DEFAULT_PROFILES) -> Path:
    """``--as hospital-a`` means ``parties/hospital-a/party.toml`` (or a path to a party.toml)."""
    p = Path(party)
    if p.suffix == ".toml":
        return p
    return profiles / party / "party.toml"


def tls_credentials(tls_ca: Path | None, who: str = "party") -> grpc.ChannelCredentials | None:
    """Client TLS credentials from a PEM roots file (None: the aggregator speaks plaintext)."""
    if tls_ca is None:
        return None
    try:
        return grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
    except OSError as exc:
        raise PartyConfigError(f"{who}: cannot read tls_ca {tls_ca}: {exc}") from exc


def channel_credentials(config: PartyConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials from the profile's ``tls_ca``."""
    return tls_credentials(config.tls_ca, config.id)


def open_channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    return grpc.secure_channel(address, credentials) if credentials is not None else grpc.insecure_channel(address)


def aggregator_channel(config: PartyConfig, target: str | None = None) -> grpc.Channel:
    """A channel to the aggregator as the profile says: TLS with its ``tls_ca``, else plaintext."""
    return open_channel(target or config.aggregator, channel_credentials(config))


def agent_from_config(config: PartyConfig, target: str | None = None, policy_file: Path | None = None, *,
                      create_keys: bool = False) -> PartyAgent:
    """The agent of a profile; ``create_keys`` for ``party run`` and ``job propose`` only (see ``load_keys``)."""
    identity, kem = config.load_keys(create=create_keys)
    try:
        policy = Policy.load(policy_file or config.policy)
    except PolicyError as exc:
        raise PartyConfigError(f"{config.id}: {exc}") from exc
    client = AggregatorClient(target or config.aggregator, config.id, identity, credentials=channel_credentials(config))
    return PartyAgent(party_id=config.id, identity=identity, kem=kem, policy=policy, client=client,
                      data_path=config.data, rules=config.rules, outputs_dir=config.outputs_dir)


def find_job(agent: PartyAgent, job_id: str | None, timeout: float, poll: float = 1.0) -> JobManifest:
    """The named job, or the first proposed job that names this party (waiting up to ``timeout``).

    A named job past taking data is followed to its end when this party consented to it (a re-run after its
    upload: it fetches the outputs), and refused at once otherwise (states never go back)."""
    deadline = time.monotonic() + timeout
    while True:
        for status in _listed(agent):
            if job_id is not None and status.job_id != job_id:
                continue
            manifest = JobManifest.from_bytes(status.manifest)
            if not manifest.has_party(agent.party_id):
                continue
            if status.state in ("proposed", "open"):
                return manifest
            if job_id is not None:
                if agent.party_id in status.consented:
                    return manifest
                raise PartyError(f"job {job_id} is {status.state} and {agent.party_id} never consented to it: it "
                                 "takes no more consents or data")
        if time.monotonic() > deadline:
            what = f"job {job_id}" if job_id else "a job"
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what} naming {agent.party_id} to be "
                              "proposed (none is: propose it with `mpctrain job propose`, or check --job and the "
                              "aggregator address)", job_id or "", "")
        time.sleep(poll)


def _listed(agent: PartyAgent) -> list[Any]:
    """The jobs naming this party; none while no manifest names it yet (the aggregator does not know it)."""
    try:
        return agent.client.list_jobs()
    except Unauthenticated as exc:
        if UNKNOWN_PARTY not in str(exc):
            raise
        return []


POLICY_FILE = "this party's policy.toml (or the --policy file)"


def report_only(agent: PartyAgent) -> list[str]:
    """The attested backends whose measurement the party's policy only reported (none before attesting)."""
    if agent.enclave is None:
        return []
    return agent.policy.report_only(c.backend for c in (agent.enclave.cpu, *agent.enclave.gpus))


def manual_approval(rules: PartyRules) -> str | None:
    """Why this party's jobs need a person to approve them, or None when its rules may approve alone.

    Rules without ``allowed_recipients`` would approve outputs of the party's data to anyone a job names.
    """
    if not rules.auto_approve:
        return "auto_approve is off"
    return recipients_unchecked(rules)


def run_party(agent: PartyAgent, job_id: str | None = None, *, timeout: float = 600.0,
              say: Callable[[str], Any] = print, progress: Callable[[int, int], None] | None = None,
              ) -> Mapping[str, bytes] | None:
    """The party's whole side: attest, review/approve, wait for consent, upload, wait, fetch outputs."""
    result = agent.attest()  # AttestationRefused propagates: nothing else is sent
    say(f"{agent.party_id}: aggregator attested ({result.cpu.backend}, measurement "
        f"{result.cpu.measurement.hex()[:16]}…, debug={result.cpu.debug})")
    unpinned = report_only(agent)
    if unpinned:
        say(f"{agent.party_id}: warning: {report_only_warning(unpinned, POLICY_FILE)}")
    manifest = find_job(agent, job_id, timeout)
    problems = agent.review(manifest)
    status = agent.client.get_job(manifest.job_id)
    consented = agent.party_id in status.consented
    if problems and not consented:
        raise ManifestRejected(problems)
    shard = None
    if manifest.mode == "pooled" and manifest.party(agent.party_id).role == "data" and \
            agent.party_id not in status.uploaded:  # before consent: a table the job cannot use is refused here
        try:
            shard = agent.check_data(manifest)
        except ShardRefused as exc:
            raise ShardRefused(f"{'not uploading to' if consented else 'not approving'} job {manifest.job_id}: "
                               f"{exc} (nothing was sent)") from None
    if not consented:
        manual = manual_approval(agent.rules)
        if manual:
            force = recipients_unchecked(agent.rules) is not None  # then `job approve` consents only with --force
            say(f"{agent.party_id}: job {manifest.job_id} passes the local rules; {manual}: waiting for "
                f"`mpctrain job approve {manifest.job_id} --as {agent.party_id}{' --force' if force else ''}`"
                + (f" once a person has checked its recipients ({', '.join(manifest.recipients)})" if force else ""))
        else:
            agent.approve(manifest)
            say(f"{agent.party_id}: approved job {manifest.job_id} (digest {manifest.digest().hex()[:16]}…)")
    state = agent.wait(manifest.job_id, ("open", "training"), timeout=timeout)
    if state not in ("open", "training"):
        raise PartyError(f"job {manifest.job_id} is {state}; nothing uploaded")
    if manifest.party(agent.party_id).role == "data":
        if agent.party_id not in agent.client.get_job(manifest.job_id).uploaded:
            res = agent.upload(manifest, progress, shard=shard)
            say(f"{agent.party_id}: uploaded {res.total_size:,} bytes sealed to the enclave ({res.sent_bytes:,} on "
                f"the wire, {_count(res.chunks, 'chunk')})")
        else:  # a re-run: the enclave takes one shard per party
            chunks = agent.accepted_chunks(manifest.job_id)
            what = _count(chunks, "chunk") if chunks is not None else "its shard"
            say(f"{agent.party_id}: already uploaded {what} for job {manifest.job_id}; not uploading again")
    state = agent.wait(manifest.job_id, ("done",), timeout=timeout)
    if state != "done":
        raise PartyError(f"job {manifest.job_id} ended {state}: {agent.client.get_job(manifest.job_id).error}")
    if agent.party_id in manifest.recipients:
        opened = agent.fetch(manifest)
        say(f"{agent.party_id}: outputs opened and receipt verified -> {agent.outputs_dir / manifest.job_id}")
        return opened
    say(f"{agent.party_id}: job done; this party is not a recipient of its outputs")
    return None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def policy_toml(policy: Mapping[str, Any]) -> str:
    """Render a policy dict (scalars, string lists, one level of tables) as TOML."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, Mapping):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    top = [f"{k} = {value(v)}" for k, v in policy.items() if not isinstance(v, Mapping)]
    tables = [f"\n[{k}]\n" + "\n".join(f"{kk} = {value(vv)}" for kk, vv in v.items())
              for k, v in policy.items() if isinstance(v, Mapping)]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"
