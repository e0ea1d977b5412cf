"""Collateral fetcher against a local HTTP server (127.0.0.1) that serves ../shared/vectors at the vendors'
URL paths; the fetched directory must then verify the SNP and TDX vectors offline (the cache-layout proof)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mpctrain.attest import Collateral, Evidence, Policy, UntrustedRoot, verify_evidence
from mpctrain.attest.fetch import (
    MANIFEST,
    BadResponse,
    CacheStore,
    CollateralFetcher,
    Endpoints,
    FetchError,
    HttpClient,
    HttpStatusError,
    InsecureUrl,
    NetworkError,
    NotFound,
    RateLimiter,
    ResponseTooLarge,
    check_url,
    fetch_collateral,
)
from mpctrain.attest.fetch.amd import vcek_url
from mpctrain.attest.fetch.client import _retry_after
from mpctrain.attest.fetch.nvidia import rim_ids
from mpctrain.attest.nvidia import parse_report as parse_gpu_report
from mpctrain.attest.snp import decode_tcb
from mpctrain.attest.snp import parse_report as parse_snp_report
from mpctrain.attest.tdx import parse_quote
from mpctrain.cli.main import app

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FMSPC = "50806f000000"
NO_MATCH_OK = ["UpToDate", "SWHardeningNeeded", "NoMatchingTcbLevel"]
H100_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")


# ------------------------------------------------------------------ a local vendor server


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Route = Reply | list[Reply] | Callable[[bytes], Reply]


@dataclass
class Server:
    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)

    def hits(self, target: str) -> int:
        return sum(1 for _, t in self.log if t == target)


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _serve(self, body: bytes) -> None:
            server.log.append((self.command, self.path))
            route = server.routes.get(self.path)
            if route is None:
                reply = Reply(404, b"not here")
            elif isinstance(route, list):
                reply = route.pop(0) if len(route) > 1 else route[0]
            elif callable(route):
                reply = route(body)
            else:
                reply = route
            if reply.delay:
                time.sleep(reply.delay)
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            if "Content-Length" not in reply.headers:
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            try:
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_GET(self) -> None:
            self._serve(b"")

        def do_POST(self) -> None:
            self._serve(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

    return Handler


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server(url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(srv))
    httpd.daemon_threads = True
    srv.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield srv
    httpd.shutdown()
    httpd.server_close()


# ------------------------------------------------------------------ vendor content


@dataclass(frozen=True)
class Vectors:
    snp_report: bytes
    snp_routes: dict[str, Reply]
    tdx_quote: bytes
    tdx_routes: dict[str, Reply]
    gpu: Evidence
    gpu_routes: dict[str, Route]


def _crl(issuer_cn: str) -> bytes:
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)])
    crl = (x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now)
           .next_update(now + timedelta(days=7)).sign(key, hashes.SHA384()))
    return crl.public_bytes(serialization.Encoding.DER)


def _ocsp_responder(chain: list[x509.Certificate]) -> Callable[[bytes], Reply]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test OCSP responder")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA384()))
    by_serial = {c.serial_number: (c, chain[i + 1]) for i, c in enumerate(chain[:-1])}

    def respond(body: bytes) -> Reply:
        req = ocsp.load_der_ocsp_request(body)
        subject, issuer = by_serial[req.serial_number]
        resp = (ocsp.OCSPResponseBuilder()
                .add_response(cert=subject, issuer=issuer, algorithm=hashes.SHA384(),
                              cert_status=ocsp.OCSPCertStatus.GOOD, this_update=now,
                              next_update=now + timedelta(days=1), revocation_time=None, revocation_reason=None)
                .responder_id(ocsp.OCSPResponderEncoding.HASH, cert).sign(key, hashes.SHA384()))
        return Reply(body=resp.public_bytes(serialization.Encoding.DER),
                     headers={"Content-Type": "application/ocsp-response"})

    return respond


def _rim_json(rim_id: str, xml: bytes) -> Reply:
    doc = {"id": rim_id, "rim": base64.b64encode(xml).decode(), "sha256": hashlib.sha256(xml).hexdigest()}
    return Reply(body=json.dumps(doc).encode(), headers={"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def vec(vectors: Path) -> Vectors:
    snp_dir, tdx_dir, nv = vectors / "snp", vectors / "tdx", vectors / "nvidia"
    report = (snp_dir / "milan_v2_report.bin").read_bytes()
    parsed = parse_snp_report(report)
    tcb = decode_tcb(parsed.reported_tcb_raw, "Milan")
    # The KDS URL written out by hand from AMD's documented format, not with the code under test.
    vcek_path = (f"/vcek/v1/Milan/{parsed.chip_id.hex()}?blSPL={tcb.bl:02d}&teeSPL={tcb.tee:02d}"
                 f"&snpSPL={tcb.snp:02d}&ucodeSPL={tcb.ucode:02d}")
    snp_routes = {
        vcek_path: Reply(body=(snp_dir / "milan_v2_vcek.der").read_bytes()),
        "/vcek/v1/Milan/cert_chain": Reply(body=(snp_dir / "ask_ark_milan.pem").read_bytes()),
        "/vcek/v1/Milan/crl": Reply(body=_crl("ARK-Milan")),
    }

    def chain_header(name: str) -> str:
        return urllib.parse.quote((tdx_dir / name).read_text())

    tcb_reply = Reply(body=(tdx_dir / "sample_tcbInfo_response").read_bytes(),
                      headers={"TCB-Info-Issuer-Chain": chain_header("tcb_info_issuer_chain.pem")})
    tdx_routes = {
        f"/tdx/certification/v4/tcb?fmspc={FMSPC}": tcb_reply,
        "/tdx/certification/v4/qe/identity": Reply(
            body=(tdx_dir / "sample_qeIdentity_response").read_bytes(),
            headers={"SGX-Enclave-Identity-Issuer-Chain": chain_header("qe_identity_issuer_chain.pem")}),
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": Reply(
            body=(tdx_dir / "pckcrl").read_bytes(),
            headers={"SGX-PCK-CRL-Issuer-Chain": chain_header("pck_crl_issuer_chain.pem")}),
        # Hex-encoded DER, as PCS v4 sends it: the fetcher must store DER.
        "/sgx/certification/v4/rootcacrl": Reply(body=(tdx_dir / "rootcrl.der").read_bytes().hex().encode()),
    }
    chain_pem = (nv / "h100_cert_chain.pem").read_bytes()
    gpu = Evidence("nvidia-gpu", bytes.fromhex((nv / "h100_report.hex").read_text().strip()), {"chain": chain_pem})
    driver_id, vbios_id = "NV_GPU_DRIVER_GH100_550.90.07", "NV_GPU_VBIOS_1010_0200_882_96009F0001"
    gpu_routes: dict[str, Route] = {
        f"/v1/rim/{driver_id}": _rim_json(driver_id, (nv / "Driver_RIM_test_no_gpu.swidtag").read_bytes()),
        f"/v1/rim/{vbios_id}": _rim_json(vbios_id, (nv / "1010_0200_882_96005E0001_PROD.swidtag").read_bytes()),
        "/ocsp": _ocsp_responder(x509.load_pem_x509_certificates(chain_pem)),
    }
    return Vectors(report, snp_routes, (tdx_dir / "spr_v4_quote.dat").read_bytes(), tdx_routes, gpu, gpu_routes)


@dataclass
class Sleeps:
    calls: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def client(sleeps: Sleeps, **kw: object) -> HttpClient:
    return HttpClient(sleep=sleeps, timeout=kw.pop("timeout", 5.0), **kw)  # type: ignore[arg-type]


def endpoints(server: Server, **kw: str | None) -> Endpoints:
    return Endpoints(amd_kds=server.url, intel_pcs=server.url, nvidia_rim=server.url,
                     nvidia_ocsp=kw.get("ocsp", server.url + "/ocsp"))


@pytest.fixture
def all_routes(server: Server, vec: Vectors) -> Server:
    server.routes.clear()
    server.log.clear()
    server.routes.update(vec.snp_routes)
    server.routes.update(vec.tdx_routes)
    server.routes.update(vec.gpu_routes)
    return server


# ------------------------------------------------------------------ the cache-layout proof


def test_fetched_cache_verifies_snp_and_tdx_offline(all_routes, vec, sleeps, tmp_path, vector_time, vectors) -> None:
    vcek_path = next(p for p in vec.snp_routes if "SPL=" in p)
    all_routes.routes[vcek_path] = [Reply(503, b"busy", {"Retry-After": "2"}), vec.snp_routes[vcek_path]]
    out = tmp_path / "cache"
    result = fetch_collateral(out, snp_reports=[vec.snp_report], tdx_quotes=[vec.tdx_quote],
                              endpoints=endpoints(all_routes), client=client(sleeps))
    # 503 then 200: one retry, after the server's Retry-After.
    assert all_routes.hits(vcek_path) == 2 and sleeps.calls == [2.0]
    parsed = parse_snp_report(vec.snp_report)
    assert sorted(result.written) == sorted([
        f"snp/Milan/vcek/{parsed.chip_id.hex()}-{parsed.reported_tcb_raw.hex()}.der",
        "snp/Milan/ask_ark.pem", "snp/Milan/crl.der",
        f"tdx/tcbinfo/{FMSPC}.json", f"tdx/tcbinfo/{FMSPC}.issuer_chain.pem", "tdx/qe_identity.json",
        "tdx/qe_identity.issuer_chain.pem", "tdx/pckcrl.der", "tdx/pckcrl.issuer_chain.pem", "tdx/rootcrl.der"])

    # Offline now: evidence without certificates, only the fetched directory. The stand-in CRL is not
    # AMD's (the fake KDS cannot sign as the real ARK), and the verifier reads it: it is refused.
    coll = Collateral(directory=out)
    with pytest.raises(UntrustedRoot, match=r"crl\.der"):
        verify_evidence(Evidence("snp", vec.snp_report), parsed.report_data, Policy.default(), vector_time, coll)
    fake_crl = (out / "snp/Milan/crl.der").read_bytes()
    (out / "snp/Milan/crl.der").unlink()
    snp_claims = verify_evidence(Evidence("snp", vec.snp_report), parsed.report_data, Policy.default(),
                                 vector_time, coll)
    assert snp_claims.product == "Milan" and snp_claims.measurement.hex().startswith("7a1e5c26")
    quote = parse_quote(vec.tdx_quote)
    pol = Policy.from_dict({"backends": ["tdx"], "tdx": {"measurements": "report-only",
                                                         "accepted_tcb_statuses": NO_MATCH_OK}})
    tdx_claims = verify_evidence(Evidence("tdx", vec.tdx_quote), quote.body.report_data, pol, vector_time, coll)
    assert tdx_claims.details["collateral_missing"] == []
    assert tdx_claims.details["tcb_status"] == "NoMatchingTcbLevel"
    assert (out / "tdx/rootcrl.der").read_bytes() == (vectors / "tdx" / "rootcrl.der").read_bytes()

    (out / "snp/Milan/crl.der").write_bytes(fake_crl)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["version"] == 1 and set(manifest["files"]) == set(result.written)
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size"] == len(data)
        assert entry["url"].startswith(all_routes.url + "/")
        assert datetime.fromisoformat(entry["fetched_at"].replace("Z", "+00:00")).tzinfo is not None
    assert not list(out.rglob("*.tmp"))


def test_empty_cache_does_not_verify(vec, tmp_path, vector_time) -> None:
    """The control for the test above: without the fetched files, the same calls fail."""
    from mpctrain.attest import CollateralMissing

    with pytest.raises(CollateralMissing):
        verify_evidence(Evidence("snp", vec.snp_report), None, Policy.default(), vector_time,
                        Collateral(directory=tmp_path))


def test_gpu_rims_and_ocsp_land_where_the_verifier_reads(all_routes, vec, sleeps, tmp_path, vector_time) -> None:
    out = tmp_path / "cache"
    result = fetch_collateral(out, gpu_evidence=[vec.gpu], endpoints=endpoints(all_routes), client=client(sleeps))
    assert result.written[:2] == ["nvidia/rim/driver/550.90.07.swidtag",
                                  "nvidia/rim/vbios/1010_0200_96.00.9F.00.01.swidtag"]
    ocsp_names = result.written[2:]
    assert len(ocsp_names) == 3 and all(n.startswith("nvidia/ocsp/") for n in ocsp_names)  # 5 certs: not leaf/root
    assert all_routes.hits("/ocsp") == 3
    for name in ocsp_names:
        assert ocsp.load_der_ocsp_response((out / name).read_bytes()).certificate_status == ocsp.OCSPCertStatus.GOOD
    pol = Policy.from_dict({"backends": ["snp"], "nvidia-gpu": {"measurements": "report-only",
                                                                "rim_verification_time": "2024-06-01T00:00:00Z"}})
    gpu = Evidence("nvidia-gpu", vec.gpu.data, vec.gpu.certs)
    # the fake responder's answers are not signed by the certificates' issuers (only NVIDIA's CA can): refused
    with pytest.raises(UntrustedRoot, match="authorised for OCSP"):
        verify_evidence(gpu, H100_NONCE, pol, vector_time, Collateral(directory=out), gpu=True)
    for name in ocsp_names:
        (out / name).unlink()
    claims = verify_evidence(gpu, H100_NONCE, pol, vector_time, Collateral(directory=out), gpu=True)
    assert [c["status"] for c in claims.details["ocsp"]] == ["not checked"] * 3
    rim = claims.details["rim"]
    assert rim["driver"]["source"] == "collateral:nvidia/rim/driver/550.90.07.swidtag"
    assert rim["vbios"]["source"] == "collateral:nvidia/rim/vbios/1010_0200_96.00.9F.00.01.swidtag"
    assert rim["driver"]["status"] == rim["vbios"]["status"] == "verified"


def test_gpu_without_chain_or_ocsp_url_fetches_only_rims(all_routes, vec, sleeps, tmp_path) -> None:
    out = tmp_path / "c"
    r1 = fetch_collateral(out, gpu_evidence=[Evidence("nvidia-gpu", vec.gpu.data)],
                          endpoints=endpoints(all_routes), client=client(sleeps))
    r2 = fetch_collateral(out, gpu_evidence=[vec.gpu], endpoints=endpoints(all_routes, ocsp=None),
                          client=client(sleeps))
    assert len(r1.written) == len(r2.written) == 2 and all_routes.hits("/ocsp") == 0


def test_rim_ids_match_nvidia_spelling(vec) -> None:
    assert rim_ids(parse_gpu_report(vec.gpu.data)) == {
        "driver": "NV_GPU_DRIVER_GH100_550.90.07", "vbios": "NV_GPU_VBIOS_1010_0200_882_96009F0001"}


def test_sgx_tcb_info_on_request(all_routes, vec, sleeps, tmp_path) -> None:
    all_routes.routes[f"/sgx/certification/v4/tcb?fmspc={FMSPC}"] = vec.tdx_routes[
        f"/tdx/certification/v4/tcb?fmspc={FMSPC}"]
    fetcher = CollateralFetcher(tmp_path, endpoints=endpoints(all_routes), client=client(sleeps))
    names = fetcher.tdx(vec.tdx_quote, sgx_tcb=True)
    assert f"sgx/tcbinfo/{FMSPC}.json" in names and f"sgx/tcbinfo/{FMSPC}.issuer_chain.pem" in names
    with pytest.raises(FetchError):
        from mpctrain.attest.fetch.intel import fetch_sgx_tcb_info

        fetch_sgx_tcb_info(fetcher.client, fetcher.store, "../etc", base=all_routes.url)


# ------------------------------------------------------------------ HTTP behaviour


def test_404_is_typed_and_manifest_lists_what_landed(all_routes, vec, sleeps, tmp_path) -> None:
    del all_routes.routes["/tdx/certification/v4/qe/identity"]
    out = tmp_path / "c"
    with pytest.raises(NotFound) as err:
        fetch_collateral(out, tdx_quotes=[vec.tdx_quote], endpoints=endpoints(all_routes), client=client(sleeps))
    assert err.value.status == 404 and err.value.check == "fetch-not-found"
    assert "/tdx/certification/v4/qe/identity" in err.value.url
    assert sleeps.calls == []  # 404 is not retried
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(manifest["files"]) == [f"tdx/tcbinfo/{FMSPC}.issuer_chain.pem", f"tdx/tcbinfo/{FMSPC}.json"]


def test_v2_report_tries_every_product_then_not_found(all_routes, vec, sleeps, tmp_path) -> None:
    vcek_path = next(p for p in vec.snp_routes if "SPL=" in p)
    del all_routes.routes[vcek_path]
    with pytest.raises(NotFound, match="any product"):
        fetch_collateral(tmp_path, snp_reports=[vec.snp_report], endpoints=endpoints(all_routes),
                         client=client(sleeps))
    tried = [t for _, t in all_routes.log if "SPL=" in t]
    assert [t.split("/")[3] for t in tried] == ["Milan", "Genoa", "Turin"]
    assert "fmcSPL=" in tried[-1] and "fmcSPL=" not in tried[0]  # Turin's TCB has an FMC field


def test_explicit_product_is_the_only_one_tried(all_routes, vec, sleeps, tmp_path) -> None:
    with pytest.raises(NotFound):
        fetch_collateral(tmp_path, snp_reports=[vec.snp_report], endpoints=endpoints(all_routes),
                         client=client(sleeps), snp_product="Genoa")
    assert [t.split("/")[3] for _, t in all_routes.log] == ["Genoa"]
    with pytest.raises(FetchError, match="product"):
        fetch_collateral(tmp_path, snp_reports=[vec.snp_report], endpoints=endpoints(all_routes),
                         client=client(sleeps), snp_product="Naples")


def test_masked_chip_id_cannot_be_looked_up(all_routes, vec, sleeps, tmp_path) -> None:
    masked = bytearray(vec.snp_report)
    masked[0x1A0:0x1E0] = bytes(64)
    with pytest.raises(FetchError, match="masked"):
        fetch_collateral(tmp_path, snp_reports=[bytes(masked)], endpoints=endpoints(all_routes),
                         client=client(sleeps))
    assert all_routes.log == []


def test_garbage_evidence_is_malformed_not_a_crash(all_routes, sleeps, tmp_path) -> None:
    from mpctrain.attest import Malformed

    for kw in ({"snp_reports": [b"\x00" * 10]}, {"tdx_quotes": [b"garbage"]},
               {"gpu_evidence": [Evidence("nvidia-gpu", b"\x11\xe0")]}):
        with pytest.raises(Malformed):
            fetch_collateral(tmp_path, endpoints=endpoints(all_routes), client=client(sleeps), **kw)
    assert all_routes.log == []


def test_retries_exhausted(all_routes, sleeps) -> None:
    all_routes.routes["/busy"] = Reply(503, b"busy")
    with pytest.raises(HttpStatusError) as err:
        client(sleeps, retries=3, backoff=0.5).get(all_routes.url + "/busy")
    assert err.value.status == 503 and "4 attempts" in str(err.value)
    assert sleeps.calls == [0.5, 1.0, 2.0]  # exponential backoff
    assert all_routes.hits("/busy") == 4


def test_429_honours_retry_after_capped(all_routes, sleeps) -> None:
    all_routes.routes["/slow"] = [Reply(429, headers={"Retry-After": "3"}), Reply(429, headers={"Retry-After": "999"}),
                                  Reply(200, b"ok")]
    assert client(sleeps, max_delay=10).get(all_routes.url + "/slow").body == b"ok"
    assert sleeps.calls == [3.0, 10.0]


def test_other_4xx_not_retried(all_routes, sleeps) -> None:
    all_routes.routes["/bad"] = Reply(400, b"bad request")
    with pytest.raises(HttpStatusError) as err:
        client(sleeps).get(all_routes.url + "/bad")
    assert err.value.status == 400 and not isinstance(err.value, NotFound) and sleeps.calls == []


def test_response_size_limits(all_routes, sleeps) -> None:
    all_routes.routes["/big"] = Reply(body=b"x" * 1000)
    all_routes.routes["/lying"] = Reply(body=b"x" * 1000, headers={"Content-Length": "10"})
    all_routes.routes["/declared"] = Reply(body=b"", headers={"Content-Length": str(10 << 20)})
    c = client(sleeps, max_bytes=100)
    with pytest.raises(ResponseTooLarge):
        c.get(all_routes.url + "/big")
    with pytest.raises(ResponseTooLarge):
        c.get(all_routes.url + "/declared")
    assert c.get(all_routes.url + "/big", max_bytes=1000).body == b"x" * 1000
    assert len(c.get(all_routes.url + "/lying").body) == 10  # never reads past what it accepts


def test_timeout_then_network_error(all_routes, sleeps) -> None:
    all_routes.routes["/hang"] = Reply(body=b"late", delay=1.0)
    with pytest.raises(NetworkError, match="2 attempts"):
        client(sleeps, timeout=0.2, retries=1).get(all_routes.url + "/hang")
    assert len(sleeps.calls) == 1


def test_connection_refused_is_network_error(sleeps) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(NetworkError):
        client(sleeps, retries=2).get(f"http://127.0.0.1:{port}/x")
    assert len(sleeps.calls) == 2


@pytest.mark.parametrize("url", ["http://kdsintf.amd.com/vcek", "http://10.0.0.1/x", "ftp://127.0.0.1/x",
                                 "file:///etc/passwd", "https://", "127.0.0.1/x", "http://127.0.0.1.evil.com/"])
def test_insecure_urls_refused(url, sleeps) -> None:
    with pytest.raises(InsecureUrl):
        client(sleeps).get(url)


@pytest.mark.parametrize("url", ["https://kdsintf.amd.com", "http://127.0.0.1:8080/x", "http://[::1]/x",
                                 "http://localhost/x", "http://127.3.2.1/"])
def test_allowed_urls(url) -> None:
    check_url(url)


def test_default_client_is_rate_limited(tmp_path) -> None:
    assert CollateralFetcher(tmp_path).client.limiter.interval == 0.5


def test_insecure_endpoints_refused_up_front(tmp_path) -> None:
    with pytest.raises(InsecureUrl):
        CollateralFetcher(tmp_path, endpoints=Endpoints(intel_pcs="http://api.trustedservices.intel.com"))


def test_redirect_to_plain_http_refused(all_routes, sleeps) -> None:
    all_routes.routes["/moved"] = Reply(302, headers={"Location": "http://collateral.invalid/x"})
    all_routes.routes["/moved-ok"] = Reply(302, headers={"Location": all_routes.url + "/target"})
    all_routes.routes["/target"] = Reply(body=b"here")
    with pytest.raises(InsecureUrl):
        client(sleeps).get(all_routes.url + "/moved")
    assert client(sleeps).get(all_routes.url + "/moved-ok").body == b"here"


def test_rate_limiter_spaces_requests(all_routes, sleeps) -> None:
    all_routes.routes["/r"] = Reply(body=b"ok")
    now = [100.0]
    c = HttpClient(rate=4, sleep=sleeps, clock=lambda: now[0])
    for _ in range(3):
        c.get(all_routes.url + "/r")
    assert sleeps.calls == [0.25, 0.5]  # the clock stands still: each request waits for its slot


def test_rate_limiter_unit() -> None:
    t = [0.0]
    waits: list[float] = []
    lim = RateLimiter(2, clock=lambda: t[0], sleep=waits.append)
    assert lim.acquire() == 0.0
    assert lim.acquire() == 0.5
    t[0] = 10.0
    assert lim.acquire() == 0.0
    assert RateLimiter(None).acquire() == RateLimiter(0).acquire() == 0.0
    with pytest.raises(ValueError):
        RateLimiter(-1)


def test_retry_after_forms() -> None:
    assert _retry_after("7") == 7.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    future = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 20 < (_retry_after(future) or 0) <= 30
    assert _retry_after("Mon, 01 Jan 2001 00:00:00 GMT") == 0.0


# ------------------------------------------------------------------ content checks


@pytest.mark.parametrize("route, body", [
    ("vcek", b"<html>rate limited</html>"),
    ("chain", b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"),
    ("crl", b"not a crl"),
])
def test_snp_bad_bodies_are_not_cached(all_routes, vec, sleeps, tmp_path, route, body) -> None:
    path = {"vcek": next(p for p in vec.snp_routes if "SPL=" in p), "chain": "/vcek/v1/Milan/cert_chain",
            "crl": "/vcek/v1/Milan/crl"}[route]
    all_routes.routes[path] = Reply(body=body)
    with pytest.raises(BadResponse):
        fetch_collateral(tmp_path, snp_reports=[vec.snp_report], endpoints=endpoints(all_routes),
                         client=client(sleeps))
    assert not any("tmp" in p.name for p in tmp_path.rglob("*"))
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert not any(route in f for f in files)


def test_vcek_with_wrong_subject_refused(all_routes, vec, sleeps, tmp_path, vectors) -> None:
    path = next(p for p in vec.snp_routes if "SPL=" in p)
    ask = x509.load_pem_x509_certificates((vectors / "snp" / "ask_ark_milan.pem").read_bytes())[0]
    all_routes.routes[path] = Reply(body=ask.public_bytes(serialization.Encoding.DER))
    with pytest.raises(BadResponse, match="SEV-VCEK"):
        fetch_collateral(tmp_path, snp_reports=[vec.snp_report], endpoints=endpoints(all_routes),
                         client=client(sleeps))


def test_tdx_missing_header_or_wrong_fmspc(all_routes, vec, sleeps, tmp_path) -> None:
    tcb_path = f"/tdx/certification/v4/tcb?fmspc={FMSPC}"
    good = vec.tdx_routes[tcb_path]
    all_routes.routes[tcb_path] = Reply(body=good.body)
    with pytest.raises(BadResponse, match="TCB-Info-Issuer-Chain"):
        fetch_collateral(tmp_path, tdx_quotes=[vec.tdx_quote], endpoints=endpoints(all_routes), client=client(sleeps))
    other = good.body.replace(FMSPC.encode(), b"00906ed50000")
    all_routes.routes[tcb_path] = Reply(body=other, headers=good.headers)
    with pytest.raises(BadResponse, match="another platform"):
        fetch_collateral(tmp_path, tdx_quotes=[vec.tdx_quote], endpoints=endpoints(all_routes), client=client(sleeps))
    all_routes.routes[tcb_path] = Reply(body=b"[1, 2]", headers=good.headers)
    with pytest.raises(BadResponse, match="tcbInfo"):
        fetch_collateral(tmp_path, tdx_quotes=[vec.tdx_quote], endpoints=endpoints(all_routes), client=client(sleeps))
    all_routes.routes[tcb_path] = Reply(body=b"{not json", headers=good.headers)
    with pytest.raises(BadResponse, match="JSON"):
        fetch_collateral(tmp_path, tdx_quotes=[vec.tdx_quote], endpoints=endpoints(all_routes), client=client(sleeps))
    assert not (tmp_path / f"tdx/tcbinfo/{FMSPC}.json").exists()


@pytest.mark.parametrize("doc", [{"id": "x"}, {"rim": "!!!not base64"}, {"rim": base64.b64encode(b"<html/>").decode()}])
def test_rim_bad_bodies(all_routes, vec, sleeps, tmp_path, doc) -> None:
    all_routes.routes["/v1/rim/NV_GPU_DRIVER_GH100_550.90.07"] = Reply(body=json.dumps(doc).encode())
    with pytest.raises(BadResponse):
        fetch_collateral(tmp_path, gpu_evidence=[vec.gpu], endpoints=endpoints(all_routes), client=client(sleeps))


def test_ocsp_refusal_is_typed(all_routes, vec, sleeps, tmp_path) -> None:
    unauthorized = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
    all_routes.routes["/ocsp"] = Reply(body=unauthorized.public_bytes(serialization.Encoding.DER))
    with pytest.raises(BadResponse, match="UNAUTHORIZED"):
        fetch_collateral(tmp_path, gpu_evidence=[vec.gpu], endpoints=endpoints(all_routes), client=client(sleeps))
    all_routes.routes["/ocsp"] = Reply(body=b"junk")
    with pytest.raises(BadResponse, match="OCSP"):
        fetch_collateral(tmp_path, gpu_evidence=[vec.gpu], endpoints=endpoints(all_routes), client=client(sleeps))


# ------------------------------------------------------------------ the cache store


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../b", "a//b", "", ".hidden", MANIFEST, "a/./b",
                                  "snp/Milan/" + "x" * 300, "a\\b", "a b"])
def test_unsafe_cache_names(tmp_path, name) -> None:
    with pytest.raises(FetchError):
        CacheStore(tmp_path).put(name, b"x", url="https://x")
    assert list(tmp_path.iterdir()) == []


def test_store_atomic_replace_and_manifest_merge(tmp_path) -> None:
    times = iter([datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC),
                  datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 2, tzinfo=UTC)])
    s1 = CacheStore(tmp_path, clock=lambda: next(times))
    s1.put("snp/Milan/ask_ark.pem", b"one", url="https://a")
    s1.save_manifest()
    s2 = CacheStore(tmp_path, clock=lambda: next(times))
    s2.put("tdx/rootcrl.der", b"two", url="https://b")
    s2.save_manifest()
    doc = json.loads((tmp_path / MANIFEST).read_text())
    assert doc["updated"] == "2026-02-02T00:00:00Z"
    assert doc["files"]["snp/Milan/ask_ark.pem"]["fetched_at"] == "2026-01-01T00:00:00Z"
    assert doc["files"]["tdx/rootcrl.der"] == {"url": "https://b", "sha256": hashlib.sha256(b"two").hexdigest(),
                                               "size": 3, "fetched_at": "2026-02-01T00:00:00Z"}
    (tmp_path / MANIFEST).write_text("{broken")
    CacheStore(tmp_path).save_manifest()  # a corrupt old manifest is replaced, not fatal
    assert json.loads((tmp_path / MANIFEST).read_text())["files"] == {}
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["ask_ark.pem", MANIFEST, "rootcrl.der"]


def test_store_unwritable_dir(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FetchError):
        CacheStore(blocker / "sub")


def test_vcek_url_turin_has_fmc(vec) -> None:
    url = vcek_url("https://kds", "Turin", parse_snp_report(vec.snp_report))
    assert url.startswith("https://kds/vcek/v1/Turin/") and "&fmcSPL=" in url
    assert len(url.split("/")[6].split("?")[0]) == 16  # Turin: 8-byte hwid


# ------------------------------------------------------------------ CLI


def test_cli_fetch_then_verify_offline(all_routes, vec, tmp_path) -> None:
    report = tmp_path / "report.bin"
    report.write_bytes(vec.snp_report)
    quote = tmp_path / "quote.dat"
    quote.write_bytes(vec.tdx_quote)
    out = tmp_path / "cache"
    runner = CliRunner()
    res = runner.invoke(app, ["attest", "fetch-collateral", "--out", str(out), "--snp-report", str(report),
                              "--tdx-quote", str(quote), "--amd-kds", all_routes.url, "--intel-pcs", all_routes.url,
                              "--rate", "0", "--retries", "1"])
    assert res.exit_code == 0, res.output
    assert "snp/Milan/ask_ark.pem" in res.output and "OK 10 files" in res.output
    assert (out / MANIFEST).is_file()
    verify = ["attest", "verify", "--kind", "snp", "--evidence", str(report), "--collateral", str(out),
              "--at", "2026-11-22T00:00:00Z"]
    res = runner.invoke(app, verify)
    assert res.exit_code == 1 and "untrusted-root" in res.output  # the fake KDS's CRL is not signed by AMD's ARK
    (out / "snp/Milan/crl.der").unlink()
    res = runner.invoke(app, verify)
    assert res.exit_code == 0, res.output


def test_cli_failures(all_routes, vec, tmp_path) -> None:
    report = tmp_path / "report.bin"
    report.write_bytes(vec.snp_report)
    runner = CliRunner()
    base = ["attest", "fetch-collateral", "--out", str(tmp_path / "c")]
    res = runner.invoke(app, [*base, "--snp-report", str(report), "--amd-kds", all_routes.url, "--snp-product",
                              "Genoa", "--retries", "0"])
    assert res.exit_code == 1 and "fetch-not-found" in res.output
    assert runner.invoke(app, base).exit_code == 2
    res = runner.invoke(app, [*base, "--snp-report", str(report), "--amd-kds", "http://kdsintf.amd.com"])
    assert res.exit_code == 2 and "https" in res.output
    assert runner.invoke(app, [*base, "--snp-report", str(tmp_path / "missing.bin")]).exit_code == 2
    assert runner.invoke(app, [*base, "--snp-report", str(report), "--snp-product", "Naples"]).exit_code == 2


def _as_vlek(report: bytes) -> bytes:
    raw = bytearray(report)
    key_info = int.from_bytes(raw[0x48:0x4C], "little") & ~(0x7 << 2) | (1 << 2)
    raw[0x48:0x4C] = key_info.to_bytes(4, "little")
    return bytes(raw)


def test_vlek_report_fetches_asvk_chain_for_the_product_kds_knows(all_routes, vec, sleeps, tmp_path, vectors) -> None:
    asvk_ark = (vectors / "snp" / "ask_ark_genoa_vlek.pem").read_bytes()
    all_routes.routes["/vlek/v1/Genoa/cert_chain"] = Reply(body=asvk_ark)
    all_routes.routes["/vlek/v1/Genoa/crl"] = Reply(body=_crl("ARK-Genoa"))
    result = fetch_collateral(tmp_path, snp_reports=[_as_vlek(vec.snp_report)], endpoints=endpoints(all_routes),
                              client=client(sleeps))
    assert result.written == ["snp/Genoa/asvk_ark.pem", "snp/Genoa/vlek_crl.der"]
    assert [t for _, t in all_routes.log if "cert_chain" in t] == [
        "/vlek/v1/Milan/cert_chain", "/vlek/v1/Genoa/cert_chain", "/vlek/v1/Turin/cert_chain"]
    assert not any("/vcek/" in t for _, t in all_routes.log)  # VLEKs are not on KDS


def test_vlek_report_with_no_chain_anywhere_is_not_found(all_routes, vec, sleeps, tmp_path) -> None:
    with pytest.raises(NotFound):
        fetch_collateral(tmp_path, snp_reports=[_as_vlek(vec.snp_report)], endpoints=endpoints(all_routes),
                         client=client(sleeps))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=600))
def test_content_checks_fuzz(body: bytes) -> None:
    """Random bodies give BadResponse (or pass, if they happen to be valid), never another exception."""
    from mpctrain.attest.fetch import content
    from mpctrain.attest.fetch.nvidia import _rim_xml

    for check in (lambda b: content.der_certificate(b, "u", "SEV-VCEK"), lambda b: content.pem_chain(b, "u", count=2),
                  lambda b: content.crl_der(b, "u"), lambda b: content.json_object(b, "u", "tcbInfo"),
                  lambda b: _rim_xml(b, "u"), lambda b: content.header_chain(b.decode("latin-1"), "u", "H")):
        try:
            check(body)
        except BadResponse:
            pass


def test_cli_gpu_report_hex_and_evidence_json(all_routes, vec, tmp_path) -> None:
    hex_file = tmp_path / "gpu.hex"
    hex_file.write_text(vec.gpu.data.hex())
    json_file = tmp_path / "gpu.json"
    json_file.write_text(json.dumps(vec.gpu.to_json_obj()))
    runner = CliRunner()
    base = ["attest", "fetch-collateral", "--nvidia-rim", all_routes.url, "--rate", "0"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--gpu-report", str(hex_file),
                              "--nvidia-ocsp", ""])
    assert res.exit_code == 0, res.output
    assert "nvidia/rim/driver/550.90.07.swidtag" in res.output and all_routes.hits("/ocsp") == 0
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--gpu-report", str(json_file),
                              "--nvidia-ocsp", all_routes.url + "/ocsp"])
    assert res.exit_code == 0, res.output
    assert all_routes.hits("/ocsp") == 3 and len(list((tmp_path / "b" / "nvidia" / "ocsp").iterdir())) == 3
