"""`mpctrain audit ...`: verify an audit log offline and print what happened per job; fetch one over gRPC.

Exit codes of ``verify``: 0 the log verifies; 1 a record fails (line, seq and check are printed);
2 the command line is wrong (unreadable policy or evidence file, bad time).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import typer

from mpctrain.attest import AttestationError, EvidenceBundle, Policy, PolicyError
from mpctrain.enclave.audit import AuditBroken, cross_check, printable, read_lines, render, summarize, verify_log
from mpctrain.enclave.audit.reader import RawLine
from mpctrain.seal.errors import SealError
from mpctrain.seal.keydir import identity_key_file
from mpctrain.seal.keys import IdentityKey

app = typer.Typer(
    pretty_exceptions_show_locals=False,  # locals in a traceback would print key bytes and data rows
    help="audit log: verify offline, summarise per job, fetch from an aggregator", no_args_is_help=True)

EXIT_FAILED = 1
EXIT_USAGE = 2
MAX_EVIDENCE_FILE = 32 << 20


def _usage(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def _time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise _usage(f"--at must be an ISO-8601 time such as 2026-11-22T00:00:00Z, got {value!r}") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _head(value: str | None) -> tuple[int, str] | None:
    if value is None:
        return None
    seq, _, digest = value.partition(":")
    if not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise _usage(f"--head must be SEQ:HASH (64 lowercase hex), got {value!r}")
    return int(seq), digest


def load_evidence_files(paths: list[Path]) -> dict[str, EvidenceBundle]:
    """Evidence bundles (JSON) by digest; a directory contributes every ``*.json`` in it."""
    out: dict[str, EvidenceBundle] = {}
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    for f in files:
        try:
            if f.stat().st_size > MAX_EVIDENCE_FILE:
                raise _usage(f"{f} is larger than {MAX_EVIDENCE_FILE} bytes: not an evidence bundle")
            bundle = EvidenceBundle.from_json(f.read_bytes())
        except OSError as exc:
            raise _usage(f"cannot read evidence {f}: {exc}") from None
        except AttestationError as exc:
            raise _usage(f"{f} is not an evidence bundle: {exc}") from None
        out[bundle.digest().hex()] = bundle
    return out


@app.command("verify")
def verify_cmd(
    log_path: Path = typer.Argument(..., metavar="LOG", help="audit log (JSON Lines) as stored or fetched"),
    policy: Path = typer.Option(..., "--policy", help="policy TOML the enclave of every segment must satisfy"),
    evidence: list[Path] = typer.Option([], "--evidence",
                                        help="evidence bundle JSON or a directory of them (repeatable): for "
                                             "segments whose record does not embed its evidence, or a bundle you "
                                             "attested yourself, to cross-check with the log"),
    at: str | None = typer.Option(None, "--at", help="check certificates at this ISO-8601 time "
                                                     "(default: each segment's start time)"),
    job: str | None = typer.Option(None, "--job", help="print only this job's summary"),
    partial: bool = typer.Option(False, "--partial", help="the file is one job's view (GetLog with a job id)"),
    head: str | None = typer.Option(None, "--head", help="SEQ:HASH printed by an earlier verify: the log must "
                                                         "still hold that record (detects a cut tail or rollback)"),
    json_out: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Check chain, signatures, sequence, segment links and times; print consents, inputs and outputs per job."""
    try:
        pol = Policy.load(policy)
    except PolicyError as exc:
        raise _usage(str(exc)) from None
    bundles = load_evidence_files(evidence)
    when = _time(at)
    pinned = _head(head)
    try:
        lines: list[RawLine] = list(read_lines(log_path))
    except OSError as exc:
        raise _usage(f"cannot read {log_path}: {exc}") from None
    try:
        report = verify_log(lines, pol, evidence=bundles, at=when, partial=partial, expect_head=pinned)
    except AuditBroken as exc:
        if json_out:
            typer.echo(json.dumps({"ok": False, "line": exc.line, "seq": exc.seq, "check": exc.check,
                                   "error": exc.detail}, sort_keys=True))
        else:
            typer.echo(f"FAILED {printable(exc)}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    checks = cross_check(report, bundles)
    jobs = summarize(report.records)
    if job is not None:
        jobs = {k: v for k, v in jobs.items() if k == job}
    seq, last_hash = report.head
    if json_out:
        typer.echo(json.dumps({
            "ok": True, "records": len(report.records), "head": {"seq": seq, "hash": last_hash},
            "segments": [{"segment": s.number, "line": s.line, "backend": s.backend,
                          "measurement": s.measurement.hex(), "sig_public": s.sig_public.hex(),
                          "evidence_digest": s.evidence_digest} for s in report.segments],
            "warnings": report.warnings, "jobs": {k: v.to_json_obj() for k, v in jobs.items()},
            "cross_checks": [{"evidence_digest": c.evidence_digest, "ok": c.ok, "message": c.message}
                             for c in checks],
        }, sort_keys=True))
        if not all(c.ok for c in checks):
            raise typer.Exit(EXIT_FAILED)
        return
    typer.echo(f"OK {len(report.records)} records in {len(report.segments)} segment(s); head {seq}:{last_hash}")
    for s in report.segments:
        typer.echo(f"segment {s.number} (line {s.line}): {s.backend} measurement {s.measurement.hex()[:32]}… "
                   f"enclave key {s.sig_public.hex()[:16]}… evidence {s.evidence_digest[:16]}…")
    for w in report.warnings:
        typer.echo(f"warning: {printable(w)}")
    for c in checks:
        typer.echo(f"{'evidence' if c.ok else 'FAILED evidence'} {c.evidence_digest[:16]}…: {c.message}")
    for summary in jobs.values():
        for text in render(summary):
            typer.echo(text)
    if not all(c.ok for c in checks):
        raise typer.Exit(EXIT_FAILED)


# a bare HOST:PORT: a DNS name (underscores too: gRPC's resolver takes them), an IPv4 address, or an
# IPv6 address in brackets with an optional zone id ([fe80::1%eth0]:50051)
_TARGET = re.compile(r"(\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.~-]+)?\]|[A-Za-z0-9_][A-Za-z0-9_.-]*):(\d{1,5})")
# gRPC target URIs, passed through as they are: gRPC parses them (dns:///agg:50051, unix:/run/agg.sock)
TARGET_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:")


def check_target(target: str) -> None:
    """An aggregator address is what gRPC dials: HOST:PORT or a target URI (``dns:``, ``unix:``, ...). Anything
    else, often a job id, would fail later as an unhelpful DNS error, so it is refused here with a hint."""
    scheme = next((s for s in TARGET_SCHEMES if target.startswith(s)), None)
    if scheme is not None and target[len(scheme):].strip("/") and not any(c.isspace() for c in target):
        return
    m = _TARGET.fullmatch(target)
    if m is None or not 0 < int(m.group(2)) < 65536:
        hint = " (a job id goes in --job)" if ":" not in target else ""
        raise _usage(f"HOST:PORT must be the aggregator's address, such as 127.0.0.1:50051 (a party profile's "
                     f"aggregator), or a gRPC target URI such as dns:///agg.example:50051 or unix:/run/agg.sock; "
                     f"got {target!r}{hint}")


def load_signer(party: str, profiles: Path, keys: Path | None) -> tuple[str, IdentityKey, Path | None]:
    """(party id, identity key, the profile's ``tls_ca``) for a signed request: the key from ``--keys DIR`` when
    given, else from the party's profile."""
    from mpctrain.party.config import PartyConfig, PartyConfigError
    from mpctrain.party.profile import profile_path

    tls_ca = None
    if keys is not None and not party.endswith(".toml"):
        party_id, keys_dir = party, keys
    else:
        try:
            cfg = PartyConfig.load(profile_path(party, profiles))
        except PartyConfigError as exc:
            raise _usage(f"{exc} (or pass --keys DIR with the identity key)") from None
        party_id, keys_dir, tls_ca = cfg.id, keys or cfg.keys_dir, cfg.tls_ca
    try:
        found = identity_key_file(keys_dir)
    except SealError as exc:
        raise _usage(str(exc)) from None
    if found is None:
        raise _usage(f"no identity key (identity.key) in {keys_dir}")
    try:
        return party_id, IdentityKey.load(found), tls_ca
    except (SealError, OSError) as exc:
        raise _usage(f"cannot load the identity key {found}: {exc}") from None


@app.command("fetch")
def fetch_cmd(
    target: str = typer.Argument(..., metavar="HOST:PORT",
                                 help="the aggregator's gRPC address, e.g. 127.0.0.1:50051 (a party profile's "
                                      "aggregator value) or a gRPC target URI (dns:///HOST:PORT, unix:PATH); "
                                      "not a job id: that goes in --job"),
    out: Path = typer.Option(..., "--out", help="file to write the log to (verify it with `audit verify`)"),
    party: str = typer.Option(..., "--as", help="party id signing the request (profile parties/ID/party.toml) "
                                                "or a path to a party.toml"),
    profiles: Path = typer.Option(Path("parties"), "--profiles", help="directory of party profiles"),
    keys: Path | None = typer.Option(None, "--keys", help="directory holding the identity key (identity.key), "
                                                          "instead of the profile's keys_dir"),
    job: str = typer.Option("", "--job", help="only this job's view (then verify with --partial)"),
    timeout: float = typer.Option(60.0, "--timeout", help="seconds"),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", help="PEM roots for the aggregator's transport TLS "
                                                              "(default: the party profile's tls_ca; none: plaintext)"),
) -> None:
    """Copy the audit log of the aggregator at HOST:PORT (or one job's view) to a file, byte for byte.

    HOST:PORT is the aggregator's gRPC address, as in a party profile
    (e.g. 127.0.0.1:50051), or a gRPC target URI (dns:///HOST:PORT,
    unix:PATH); a job id goes in --job.

    The request is signed with the --as party's identity key. One job's
    view (--job) is for the parties of that job. The whole log is for a
    party named by any job on that aggregator, or for one of its auditors
    (the auditors table of its aggregator.toml).
    """
    from mpctrain.party.audit_check import AuditCheckFailed, fetch_audit_log
    from mpctrain.party.config import PartyConfigError
    from mpctrain.party.profile import open_channel, tls_credentials

    check_target(target)
    party_id, identity, profile_ca = load_signer(party, profiles, keys)
    try:
        credentials = tls_credentials(tls_ca or profile_ca, party_id)
    except PartyConfigError as exc:
        raise _usage(str(exc)) from None
    with open_channel(target, credentials) as channel:
        try:
            lines = fetch_audit_log(channel, job, party_id=party_id, identity=identity, timeout=timeout)
        except AuditCheckFailed as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
    out.write_bytes(b"".join(raw for _, raw in lines))
    typer.echo(f"wrote {len(lines)} records to {out}")

