"""`mpctrain attest ...`: make a simulated root, verify evidence files offline, run the attestation demo.

Exit codes of ``verify``: 0 every check passed; 1 a check failed (its name is printed); 2 the command
line itself is wrong (missing policy for simulated evidence, bad hex, unreadable policy).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mpctrain.attest.claims import AttestationResult, Claims
from mpctrain.attest.collateral import Collateral
from mpctrain.attest.errors import AttestationError
from mpctrain.attest.evidence import BuildInfo, EvidenceBundle
from mpctrain.attest.files import load_bundle, load_evidence
from mpctrain.attest.policy import Policy, PolicyError, report_only_warning
from mpctrain.attest.sim import SimRootError, SimRootExists, create_sim_root, root_pin
from mpctrain.attest.verify import verify, verify_evidence
from mpctrain.cli.output import error, warning
from mpctrain.seal.binding import NONCE_BYTES, evidence_binding

log = logging.getLogger(__name__)

app = typer.Typer(
    pretty_exceptions_show_locals=False,  # locals in a traceback would print key bytes and data rows
    help="attestation: simulated TEE root, offline evidence verification, demo",
                  no_args_is_help=True)

EXIT_FAILED = 1
EXIT_USAGE = 2


class Kind(StrEnum):
    sim = "sim"
    snp = "snp"
    tdx = "tdx"
    nvidia_gpu = "nvidia-gpu"
    bundle = "bundle"


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _usage(message: str) -> typer.Exit:
    _console(stderr=True).print(error(message))
    return typer.Exit(EXIT_USAGE)


# --------------------------------------------------------------------------- sim-root


@app.command("sim-root")
def sim_root(
    out: Path = typer.Option(..., "--out", help="directory for sim-root.pem and sim-root.key (0600)"),
    force: bool = typer.Option(False, "--force", help="replace an existing root in --out"),
) -> None:
    """Create a simulated vendor root CA and print the SHA-256 a policy pins to trust it."""
    try:
        pem = create_sim_root(out, overwrite=force)
    except SimRootExists:
        raise _usage(f"{out} already holds a simulated root, which policies may pin; pass --force to replace it "
                     "(every policy pinning the old one then refuses this enclave)") from None
    except (SimRootError, OSError) as exc:
        raise _usage(str(exc)) from None
    pin = root_pin(pem)
    con = _console()
    con.print(f"certificate  {pem}", markup=False)
    con.print(f"private key  {pem.with_name('sim-root.key')}  (mode 0600; whoever holds it can forge evidence)",
              markup=False)
    con.print(f"sha256       {pin}")
    con.print("\npolicy snippet:\n")
    con.print(f'backends = ["sim"]\n\n[sim]\nroots = ["{pin}"]\nmeasurements = ["<expected measurement hex>"]',
              markup=False)


# --------------------------------------------------------------------------- verify


def _hex(value: str | None, name: str) -> bytes | None:
    if value is None:
        return None
    try:
        return bytes.fromhex(value.strip().removeprefix("0x"))
    except ValueError:
        raise _usage(f"{name} must be hex, got {value!r}") from None


def _time(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise _usage(f"--at must be an ISO-8601 time such as 2026-11-22T00:00:00Z, got {value!r}") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _needs_policy_message() -> str:
    return ("simulated evidence needs --policy: Policy.default() accepts only real TEEs. Write a policy with "
            'backends = ["sim"] and [sim] roots = ["<sha256 printed by `mpctrain attest sim-root`>"]')


@app.command("verify")
def verify_cmd(
    kind: Kind = typer.Option(..., "--kind", help="evidence kind, or 'bundle' for an EvidenceBundle JSON file"),
    evidence: Path = typer.Option(..., "--evidence", help="report/quote/.hex file, Evidence JSON or bundle JSON"),
    certs: list[Path] = typer.Option([], "--certs", help="certificate file (repeatable): VCEK, ASK/ARK, chain..."),
    policy: Path | None = typer.Option(None, "--policy", help="policy TOML (default: real vendors, no sim)"),
    collateral: Path | None = typer.Option(None, "--collateral", help="directory of cached collateral"),
    expect_report_data: str | None = typer.Option(None, "--expect-report-data",
                                                  help="hex REPORT_DATA (GPU: nonce) the evidence must carry"),
    nonce: str | None = typer.Option(None, "--nonce", help="bundle only: the 32-byte hex nonce you sent"),
    at: str | None = typer.Option(None, "--at", help="verification time, ISO-8601 (default: now)"),
    json_out: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Verify evidence offline against a policy; exit 0 if every check passes, 1 naming the failed check."""
    when = _time(at)
    expected = _hex(expect_report_data, "--expect-report-data")
    nonce_bytes = _hex(nonce, "--nonce")
    if nonce_bytes is not None and kind is not Kind.bundle:
        raise _usage("--nonce applies to --kind bundle; for single evidence pass --expect-report-data")
    if nonce_bytes is not None and len(nonce_bytes) != NONCE_BYTES:
        raise _usage(f"--nonce must be {NONCE_BYTES} bytes of hex, got {len(nonce_bytes)}")
    if kind is Kind.bundle and certs:
        raise _usage("a bundle carries its certificates; --certs applies to single evidence")
    try:
        pol = Policy.load(policy) if policy is not None else None
    except PolicyError as exc:
        raise _usage(str(exc)) from None
    coll = Collateral(directory=collateral) if collateral is not None else None
    try:
        if kind is Kind.bundle:
            bundle = load_bundle(evidence)
            if pol is None and bundle.cpu.kind == "sim":
                raise _usage(_needs_policy_message())
            if nonce_bytes is not None:
                expected = evidence_binding(nonce_bytes, bundle.kem_public, bundle.sig_public,
                                            bundle.build.build_digest)
            if expected is None:
                raise _usage("a bundle is verified against its binding: pass --nonce (the nonce you sent) or "
                             "--expect-report-data (the binding)")
            used = pol or Policy.default()
            result = verify(bundle, expected, used, when, coll)
            _print_bundle_result(result, _unpinned(used, [result.cpu, *result.gpus]), json_out)
            return
        if pol is None and kind is Kind.sim:
            raise _usage(_needs_policy_message())
        ev = load_evidence(kind.value, evidence, certs)
        used = pol or Policy.default()
        claims = verify_evidence(ev, expected, used, when, coll, gpu=kind is Kind.nvidia_gpu)
        _print_claims_result(claims, expected is not None, _unpinned(used, [claims]), json_out)
    except AttestationError as exc:
        _print_failure(exc.check, str(exc), exc.field, json_out)
        raise typer.Exit(EXIT_FAILED) from None
    except (PolicyError, ModuleNotFoundError) as exc:
        _print_failure("configuration", str(exc), None, json_out)
        raise typer.Exit(EXIT_FAILED) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        # A verifier bug must still not look like success, nor dump a traceback on the user.
        log.debug("verifier raised an unexpected exception", exc_info=True)
        _print_failure("internal-error", f"{type(exc).__name__}: {exc} (run with -v for details)", None, json_out)
        raise typer.Exit(EXIT_FAILED) from None


def _unpinned(policy: Policy, claims: list[Claims]) -> list[str]:
    """Backends whose measurement the policy only reported: "passed" must not read as "is the expected code"."""
    return policy.report_only(c.backend for c in claims)


def _warn_unpinned(con: Console, unpinned: list[str]) -> None:
    if unpinned:
        con.print(warning(report_only_warning(unpinned, "a policy file (--policy)")))


def _print_failure(check: str, message: str, field: str | None, json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps({"ok": False, "check": check, "field": field, "error": message}, sort_keys=True))
        return
    con = _console(stderr=True)
    con.print(f"[bold red]FAILED[/bold red] check [bold]{check}[/bold]")
    con.print(message, markup=False)


def claims_table(claims: Claims, title: str) -> Table:
    """A two-column table of verified claims, for the CLI and the demo.

    Cells are ``Text``: certificate subjects and details come from the evidence and print verbatim.
    """
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("claim", style="bold")
    table.add_column("value", overflow="fold")

    def row(claim: str, value: str) -> None:
        table.add_row(Text(claim), Text(value))

    row("backend", claims.backend)
    row("product", claims.product or "-")
    row("measurement", claims.measurement.hex())
    row("report_data", claims.report_data.hex())
    row("debug", str(claims.debug).lower())
    row("tcb", ", ".join(f"{k}={v}" for k, v in sorted(claims.tcb.items())) or "-")
    for i, cert in enumerate(claims.chain):
        row(f"chain[{i}]", f"{cert.subject}  (sha256 {cert.sha256[:16]}…, until {cert.not_after:%Y-%m-%d})")
    for key, value in sorted(claims.details.items()):
        row(key, json.dumps(value, sort_keys=True) if not isinstance(value, str) else value)
    return table


def _print_claims_result(claims: Claims, binding_checked: bool, unpinned: list[str], json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps({"ok": True, "report_data_checked": binding_checked, "measurement_unchecked": unpinned,
                               "claims": claims.to_json_obj()}, sort_keys=True))
        return
    con = _console()
    con.print(claims_table(claims, f"{claims.backend} evidence: every check passed"))
    _warn_unpinned(con, unpinned)
    if not binding_checked:
        con.print("[yellow]warning:[/yellow] report data was NOT compared with an expected value "
                  "(pass --expect-report-data); without it this evidence could be a replay")


def _print_bundle_result(result: AttestationResult, unpinned: list[str], json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps({"ok": True, "measurement_unchecked": unpinned, "result": result.to_json_obj()},
                              sort_keys=True))
        return
    con = _console()
    con.print(claims_table(result.cpu, "CPU evidence: every check passed"))
    for i, gpu in enumerate(result.gpus):
        con.print(claims_table(gpu, f"GPU {i} evidence: every check passed"))
    keys = Table(title="attested enclave keys and build", show_header=False, title_justify="left")
    keys.add_column("field", style="bold")
    keys.add_column("value", overflow="fold")
    keys.add_row("kem", Text(f"{result.kem_alg} {result.kem_public.hex()}"))
    keys.add_row("sig", result.sig_public.hex())
    keys.add_row("build", Text(f"{result.build.version} {result.build.build_digest.hex()}"))
    keys.add_row("evidence digest", result.evidence_digest.hex())
    con.print(keys)
    _warn_unpinned(con, unpinned)


# --------------------------------------------------------------------------- demo


@app.command("demo")
def demo_cmd() -> None:
    """Walk through attestation with the simulated TEE: nonce, binding, policy, sealing, replay."""
    attest_demo()


def _demo_csv(rows: int = 120) -> bytes:
    """A few KB of synthetic patient records (no real data)."""
    rng = random.Random(7)  # noqa: S311 (synthetic demo data, not a secret)
    lines = ["patient_id,age,systolic_bp,cholesterol,smoker,outcome"]
    for i in range(rows):
        age = rng.randint(25, 85)
        bp = rng.randint(100, 180)
        chol = rng.randint(150, 300)
        smoker = rng.random() < 0.3
        risk = (age - 25) / 60 + (bp - 100) / 80 + (0.5 if smoker else 0)
        lines.append(f"P{i:04d},{age},{bp},{chol},{int(smoker)},{int(risk + rng.random() > 1.6)}")
    return ("\n".join(lines) + "\n").encode()


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class DemoFailed(RuntimeError):
    """A demo step gave an outcome other than the one it demonstrates."""


def attest_demo() -> None:
    """Simulated enclave and one party, in process, over loopback gRPC; prints each step.

    Exits with status 1 (``typer.Exit``) if any step has an outcome other than the one it shows.
    """
    from mpctrain.seal.errors import SealError

    con = _console()
    try:
        _run_demo(con)
    except (DemoFailed, AttestationError, SealError) as exc:
        con.print(f"[bold red]demo failed[/bold red] ({type(exc).__name__}): {escape(str(exc))}")
        raise typer.Exit(EXIT_FAILED) from None


def _run_demo(con: Console) -> None:
    import grpc

    from mpctrain import __version__
    from mpctrain.attest.errors import BindingMismatch
    from mpctrain.attest.measure import code_digest, sim_measurement
    from mpctrain.attest.sim import SimAttester, SimRoot
    from mpctrain.seal.keys import IdentityKey, KemKey
    from mpctrain.seal.stream import open_bytes, seal_bytes
    from mpctrain.wire import attestation_pb2 as pb
    from mpctrain.wire import attestation_pb2_grpc as pb_grpc
    from mpctrain.wire.convert import bundle_from_proto, bundle_to_proto

    step = iter(range(1, 100))

    def head(text: str) -> None:
        con.rule(f"[bold]{next(step)}. {text}", align="left")

    with tempfile.TemporaryDirectory(prefix="mpctrain-demo-") as tmp:
        head("vendor: create the simulated TEE root")
        pem = create_sim_root(Path(tmp) / "sim-root")
        pin = root_pin(pem)
        con.print(f"root certificate {pem.name}, SHA-256 (what parties pin): {pin}")

        head("enclave: start, generate keys inside the TEE, get an attestation key")
        identity, kem = IdentityKey.generate(), KemKey.generate("x25519")
        config = b'{"job": "demo", "mode": "pooled"}'
        config_digest = hashlib.sha256(config).digest()
        code = code_digest()
        attester = SimAttester(SimRoot.load(pem.parent), config_digest=config_digest)
        build_digest = code  # what the enclave says it runs; bound into REPORT_DATA
        con.print(f"kem key ({kem.alg}) {kem.public_bytes().hex()}\nsigning key {identity.public_bytes().hex()}")
        con.print(f"measurement = SHA-384(code digest ‖ config digest) = {attester.measurement.hex()}")

        class Enclave(pb_grpc.AttestationServicer):
            def GetEvidence(self, request, context):
                if len(request.nonce) != NONCE_BYTES:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"nonce must be {NONCE_BYTES} bytes")
                binding = evidence_binding(request.nonce, kem.public_bytes(), identity.public_bytes(), build_digest)
                return bundle_to_proto(EvidenceBundle(
                    cpu=attester.attest(binding), kem_public=kem.public_bytes(), kem_alg=kem.alg,
                    sig_public=identity.public_bytes(),
                    build=BuildInfo(version=__version__, build_digest=build_digest, config_digest=config_digest),
                ))

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_AttestationServicer_to_server(Enclave(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.AttestationStub(channel)
                con.print(f"Attestation service listening on 127.0.0.1:{port} (loopback gRPC)")

                head("party: write its own policy (pin the root and the measurement it expects)")
                expected_measurement = sim_measurement(config_digest, code=code)
                policy = Policy.from_dict({"backends": ["sim"], "sim": {
                    "roots": [pin], "measurements": [expected_measurement.hex()], "min_tcb": {"svn": 1}}})
                con.print(f'backends = ["sim"]\n[sim]\nroots = ["{pin}"]\n'
                          f'measurements = ["{expected_measurement.hex()}"]\nmin_tcb = {{ svn = 1 }}', markup=False)

                head("party: send GetEvidence with a fresh 32-byte nonce")
                nonce = os.urandom(NONCE_BYTES)
                bundle = bundle_from_proto(stub.GetEvidence(pb.GetEvidenceRequest(nonce=nonce), timeout=10))
                con.print(f"nonce {nonce.hex()}\nreceived {bundle.cpu.kind} evidence, {len(bundle.cpu.data)} bytes, "
                          f"certificates {sorted(bundle.cpu.certs)}")

                head("party: recompute the binding and verify the bundle")
                binding = evidence_binding(nonce, bundle.kem_public, bundle.sig_public, bundle.build.build_digest)
                result = verify(bundle, binding, policy)
                con.print(claims_table(result.cpu, "verified claims"))
                con.print("[green]attested[/green]: the party now trusts the enclave's kem and signing keys")

                head("party: seal a CSV to the attested kem key")
                party = IdentityKey.generate()
                csv = _demo_csv()
                context = {"purpose": "demo-upload", "job_id": "demo-job", "object_id": "hospital-a/shard-0"}
                frames = seal_bytes(csv, sender=party, sender_id="hospital-a",
                                    recipients=[("enclave", result.kem_alg, result.kem_public)],
                                    chunk_size=1024, **context)
                sealed = b"".join(frames)
                if csv[:40] in sealed:
                    raise DemoFailed("plaintext visible in the sealed stream")
                con.print(f"{len(csv)} bytes of CSV -> {len(frames)} frames, {len(sealed)} bytes; "
                          "no plaintext in the ciphertext")

                head("enclave: open the sealed file in memory")
                opened = open_bytes(frames, recipient_id="enclave", recipient_key=kem,
                                    expected_sender_public=party.public_bytes(),
                                    expected_purpose=context["purpose"], expected_job_id=context["job_id"],
                                    expected_object_id=context["object_id"])
                if opened != csv:
                    raise DemoFailed("the enclave did not recover the party's file")
                rows = opened.count(b"\n") - 1
                con.print(f"opened {rows} rows; SHA-256 {hashlib.sha256(opened).hexdigest()[:16]}… matches the party's")

                head("host: replay the old evidence to a new nonce")
                fresh = os.urandom(NONCE_BYTES)
                expected = evidence_binding(fresh, bundle.kem_public, bundle.sig_public, bundle.build.build_digest)
                try:
                    with _quiet("mpctrain.attest.verify"):  # the rejection is the point; no warning noise
                        verify(bundle, expected, policy)
                except BindingMismatch as exc:
                    con.print(f"[green]rejected[/green] ({exc.check}): report data is bound to the old nonce")
                else:
                    raise DemoFailed("a replayed bundle was accepted")

                head("host: swap in its own kem key")
                host_kem = KemKey.generate("x25519")
                swapped = EvidenceBundle(cpu=bundle.cpu, kem_public=host_kem.public_bytes(), kem_alg=bundle.kem_alg,
                                         sig_public=bundle.sig_public, build=bundle.build)
                try:
                    with _quiet("mpctrain.attest.verify"):
                        verify(swapped, evidence_binding(nonce, swapped.kem_public, swapped.sig_public,
                                                         swapped.build.build_digest), policy)
                except BindingMismatch as exc:
                    con.print(f"[green]rejected[/green] ({exc.check}): the key is not the one bound into the evidence")
                else:
                    raise DemoFailed("a swapped key was accepted")
        finally:
            server.stop(None)
    con.rule("[bold green]demo complete", align="left")
