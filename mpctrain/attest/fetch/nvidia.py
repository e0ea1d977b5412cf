"""NVIDIA collateral: driver and VBIOS RIMs from the RIM service, OCSP responses for the device chain.

- RIM service (``base`` defaults to https://rim.attestation.nvidia.com): ``GET /v1/rim/{id}`` returns JSON
  whose ``rim`` is the base64 SWID tag. Ids: ``NV_GPU_DRIVER_GH100_<driver version>`` and
  ``NV_GPU_VBIOS_<project>_<project SKU>_<chip SKU>_<VBIOS version without dots, upper case>``.
  Stored under the names ``NvidiaGpuVerifier`` reads (``rim_collateral_names``).
- OCSP (default https://ocsp.ndis.nvidia.com): one request per certificate of the device chain between the
  firmware-made leaf and the root (when the evidence carries the chain); responses are stored as
  ``nvidia/ocsp/<sha256 of cert DER>.der``, which the GPU verifier checks (``mpctrain.attest.nvidia.ocsp``).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from mpctrain.attest.evidence import Evidence
from mpctrain.attest.fetch.client import HttpClient
from mpctrain.attest.fetch.content import json_object
from mpctrain.attest.fetch.errors import BadResponse, FetchError
from mpctrain.attest.fetch.store import CacheStore
from mpctrain.attest.nvidia import parse_report, rim_collateral_names
from mpctrain.attest.nvidia.ocsp import ocsp_collateral_name
from mpctrain.attest.nvidia.rim import MAX_RIM_BYTES
from mpctrain.attest.nvidia.spdm import GpuReport

RIM_URL = "https://rim.attestation.nvidia.com"
OCSP_URL = "https://ocsp.ndis.nvidia.com"
MAX_RIM_JSON_BYTES = MAX_RIM_BYTES * 2
MAX_OCSP_BYTES = 64 << 10
_RIM_ID = re.compile(r"NV_GPU_(DRIVER_GH100|VBIOS)_[A-Za-z0-9._]{1,80}")


def rim_ids(report: GpuReport) -> dict[str, str]:
    """RIM service ids for the report's driver and VBIOS (as NVIDIA's verifier spells them)."""
    vbios = report.vbios_version.replace(".", "").upper()
    ids = {
        "driver": f"NV_GPU_DRIVER_GH100_{report.driver_version}",
        "vbios": f"NV_GPU_VBIOS_{report.project}_{report.project_sku}_{report.chip_sku}_{vbios}",
    }
    for role, rid in ids.items():
        if not _RIM_ID.fullmatch(rid):
            raise FetchError(f"the report's {role} fields do not make a valid RIM id", field=f"rim.{role}",
                             actual=rid)
    return ids


def fetch_gpu(client: HttpClient, store: CacheStore, evidence: Evidence, *, base: str = RIM_URL,
              ocsp_base: str | None = OCSP_URL) -> list[str]:
    """Fetch the driver and VBIOS RIMs (and OCSP responses when the chain is known); return names written."""
    report = parse_report(evidence.data)
    names = rim_collateral_names(report)
    written: list[str] = []
    for role, rid in rim_ids(report).items():
        name = names.get(role)
        if name is None:
            raise FetchError(f"no cache name for the {role} RIM of this report", field=f"rim.{role}")
        url = f"{base.rstrip('/')}/v1/rim/{rid}"
        r = client.get(url, max_bytes=MAX_RIM_JSON_BYTES, accept="application/json")
        store.put(name, _rim_xml(r.body, r.url), url=r.url)
        written.append(name)
    chain = evidence.certs.get("chain")
    if ocsp_base and chain:
        written += fetch_ocsp(client, store, chain, base=ocsp_base)
    return written


def fetch_ocsp(client: HttpClient, store: CacheStore, chain_pem: bytes, *, base: str = OCSP_URL) -> list[str]:
    """POST one OCSP request per CA-issued certificate (not the device leaf, not the root); store each response."""
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise FetchError(f"GPU device chain is not PEM: {exc}", field="certs.chain") from exc
    written = []
    # The leaf is made by the GPU's firmware at boot, not by NVIDIA's CA: only its issuers have OCSP status.
    for cert, issuer in itertools.pairwise(certs[1:]):
        req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384()).build()
        r = client.post(base, req.public_bytes(serialization.Encoding.DER), "application/ocsp-request",
                        max_bytes=MAX_OCSP_BYTES)
        try:
            resp = ocsp.load_der_ocsp_response(r.body)
        except ValueError as exc:
            raise BadResponse(f"{base} did not return an OCSP response: {exc}", field="body") from exc
        if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise BadResponse(f"OCSP responder refused the request ({resp.response_status.name})",
                              field="response_status", expected="SUCCESSFUL", actual=resp.response_status.name)
        name = ocsp_collateral_name(cert)
        store.put(name, r.body, url=base)
        written.append(name)
    return written


def _rim_xml(body: bytes, url: str) -> bytes:
    obj = json_object(body, url, "rim")
    try:
        xml = base64.b64decode(obj["rim"], validate=True)
    except (TypeError, ValueError, binascii.Error) as exc:
        raise BadResponse(f"{url}: 'rim' is not base64: {exc}", field="rim") from exc
    if len(xml) > MAX_RIM_BYTES:
        raise BadResponse(f"{url}: RIM too large", field="rim", expected=f"<={MAX_RIM_BYTES}", actual=len(xml))
    if b"SoftwareIdentity" not in xml[:4096] or not xml.lstrip()[:1] == b"<":
        raise BadResponse(f"{url}: 'rim' is not a SWID tag", field="rim")
    return xml
