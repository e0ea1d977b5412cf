"""Intel Provisioning Certification Service (PCS) v4: TDX tcbInfo, QE identity, PCK CRL, root CA CRL.

URLs (``base`` defaults to https://api.trustedservices.intel.com):

- ``/tdx/certification/v4/tcb?fmspc=..``: tcbInfo JSON; issuer chain in header ``TCB-Info-Issuer-Chain``;
- ``/tdx/certification/v4/qe/identity``: QE identity JSON; header ``SGX-Enclave-Identity-Issuer-Chain``;
- ``/sgx/certification/v4/pckcrl?ca=platform|processor&encoding=der``: header ``SGX-PCK-CRL-Issuer-Chain``;
- ``/sgx/certification/v4/rootcacrl``: the Intel SGX Root CA's CRL;
- ``/sgx/certification/v4/tcb?fmspc=..``: SGX tcbInfo (not read by the TDX verifier; fetched on request).

Issuer-chain headers are URL-encoded PEM. FMSPC and the PCK CA come from the quote's PCK certificate.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpctrain.attest.errors import Malformed
from mpctrain.attest.fetch.client import HttpClient
from mpctrain.attest.fetch.content import crl_der, header_chain, json_object
from mpctrain.attest.fetch.errors import BadResponse, FetchError
from mpctrain.attest.fetch.store import CacheStore
from mpctrain.attest.tdx import collateral_names, parse_quote
from mpctrain.attest.tdx.pck import common_name, load_chain, parse_sgx_extensions

PCS_URL = "https://api.trustedservices.intel.com"
MAX_JSON_BYTES = 1 << 20
MAX_CRL_BYTES = 4 << 20
PCK_CA = {"Intel SGX PCK Platform CA": "platform", "Intel SGX PCK Processor CA": "processor"}
TCB_CHAIN_HEADERS = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
QE_CHAIN_HEADER = "SGX-Enclave-Identity-Issuer-Chain"
CRL_CHAIN_HEADER = "SGX-PCK-CRL-Issuer-Chain"


@dataclass(frozen=True)
class QuotePlatform:
    """What the PCS lookups need from a quote: FMSPC (hex) and which PCK CA issued its PCK."""

    fmspc: str
    ca: str


def quote_platform(quote_bytes: bytes) -> QuotePlatform:
    quote = parse_quote(quote_bytes)
    certs = load_chain(quote.pck_chain, "pck_chain")
    pck = parse_sgx_extensions(certs[0])
    issuer = common_name(certs[1]) if len(certs) > 1 else ""
    ca = PCK_CA.get(issuer)
    if ca is None:
        raise Malformed("the quote's PCK is not issued by an Intel PCK Platform/Processor CA", field="pck_chain[1]",
                        expected=sorted(PCK_CA), actual=issuer)
    return QuotePlatform(fmspc=pck.fmspc.hex(), ca=ca)


def fetch_tdx(client: HttpClient, store: CacheStore, quote_bytes: bytes, *, base: str = PCS_URL,
              sgx_tcb: bool = False) -> list[str]:
    """Fetch what ``TdxVerifier`` needs to verify ``quote_bytes`` offline; return the cache names written."""
    plat = quote_platform(quote_bytes)
    names = {k: v.cache_name for k, v in collateral_names(plat.fmspc).items()}
    base = base.rstrip("/")
    written: list[str] = []

    def put(key: str, data: bytes, url: str) -> None:
        store.put(names[key], data, url=url)
        written.append(names[key])

    r = client.get(f"{base}/tdx/certification/v4/tcb?fmspc={plat.fmspc}", max_bytes=MAX_JSON_BYTES)
    _check_fmspc(json_object(r.body, r.url, "tcbInfo"), plat.fmspc, r.url)
    chain = header_chain(r.header(*TCB_CHAIN_HEADERS), r.url, TCB_CHAIN_HEADERS[0])
    put("tcb_info", r.body, r.url)
    put("tcb_info_issuer_chain", chain, r.url)

    r = client.get(f"{base}/tdx/certification/v4/qe/identity", max_bytes=MAX_JSON_BYTES)
    json_object(r.body, r.url, "enclaveIdentity")
    chain = header_chain(r.header(QE_CHAIN_HEADER), r.url, QE_CHAIN_HEADER)
    put("qe_identity", r.body, r.url)
    put("qe_identity_issuer_chain", chain, r.url)

    r = client.get(f"{base}/sgx/certification/v4/pckcrl?ca={plat.ca}&encoding=der", max_bytes=MAX_CRL_BYTES)
    crl = crl_der(r.body, r.url)
    chain = header_chain(r.header(CRL_CHAIN_HEADER), r.url, CRL_CHAIN_HEADER)
    put("pck_crl", crl, r.url)
    put("pck_crl_issuer_chain", chain, r.url)

    r = client.get(f"{base}/sgx/certification/v4/rootcacrl", max_bytes=MAX_CRL_BYTES)
    put("root_crl", crl_der(r.body, r.url), r.url)

    if sgx_tcb:
        written += fetch_sgx_tcb_info(client, store, plat.fmspc, base=base)
    return written


def fetch_sgx_tcb_info(client: HttpClient, store: CacheStore, fmspc: str, *, base: str = PCS_URL) -> list[str]:
    """SGX tcbInfo for ``fmspc`` → ``sgx/tcbinfo/<fmspc>.json`` and ``.issuer_chain.pem``."""
    if len(fmspc) != 12 or any(c not in "0123456789abcdef" for c in fmspc):
        raise FetchError("FMSPC must be 6 bytes of lower-case hex", field="fmspc", actual=fmspc)
    r = client.get(f"{base.rstrip('/')}/sgx/certification/v4/tcb?fmspc={fmspc}", max_bytes=MAX_JSON_BYTES)
    _check_fmspc(json_object(r.body, r.url, "tcbInfo"), fmspc, r.url)
    chain = header_chain(r.header(*TCB_CHAIN_HEADERS), r.url, TCB_CHAIN_HEADERS[0])
    store.put(f"sgx/tcbinfo/{fmspc}.json", r.body, url=r.url)
    store.put(f"sgx/tcbinfo/{fmspc}.issuer_chain.pem", chain, url=r.url)
    return [f"sgx/tcbinfo/{fmspc}.json", f"sgx/tcbinfo/{fmspc}.issuer_chain.pem"]


def _check_fmspc(obj: dict, fmspc: str, url: str) -> None:
    info = obj.get("tcbInfo")
    got = info.get("fmspc") if isinstance(info, dict) else None
    if not isinstance(got, str) or got.lower() != fmspc:
        raise BadResponse(f"{url} returned tcbInfo for another platform", field="fmspc", expected=fmspc, actual=got)
