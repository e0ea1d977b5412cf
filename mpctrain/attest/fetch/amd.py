"""AMD Key Distribution Service (KDS): the VCEK for one chip and TCB, the ASK/ARK (ASVK/ARK) chain, CRLs.

URLs (``base`` defaults to https://kdsintf.amd.com):

- ``/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`` (+ ``&fmcSPL=..`` on Turin): VCEK DER;
  hwid is CHIP_ID in hex (Turin: its first 8 bytes), the SPLs are the report's REPORTED_TCB;
- ``/vcek/v1/{product}/cert_chain`` (VLEK: ``/vlek/v1/...``): ASK (ASVK) then ARK, PEM;
- ``/vcek/v1/{product}/crl`` (VLEK: ``/vlek/v1/...``): the ARK's CRL, DER.

VLEKs are not public (AMD provisions them to the cloud provider): they come with the evidence.
"""

from __future__ import annotations

import logging

from mpctrain.attest.fetch.client import HttpClient
from mpctrain.attest.fetch.content import crl_der, der_certificate, pem_chain
from mpctrain.attest.fetch.errors import FetchError, NotFound
from mpctrain.attest.fetch.store import CacheStore
from mpctrain.attest.snp.report import PRODUCTS, SnpReport, decode_tcb, parse_report

log = logging.getLogger(__name__)

KDS_URL = "https://kdsintf.amd.com"
MAX_CERT_BYTES = 64 << 10
MAX_CRL_BYTES = 1 << 20


def vcek_url(base: str, product: str, report: SnpReport) -> str:
    """The KDS URL of the VCEK that signed ``report`` if it was made on ``product``."""
    tcb = decode_tcb(report.reported_tcb_raw, product)
    query = f"blSPL={tcb.bl:02d}&teeSPL={tcb.tee:02d}&snpSPL={tcb.snp:02d}&ucodeSPL={tcb.ucode:02d}"
    if tcb.fmc is not None:
        query += f"&fmcSPL={tcb.fmc:02d}"
    return f"{base.rstrip('/')}/vcek/v1/{product}/{report.hwid(product).hex()}?{query}"


def vcek_cache_name(product: str, report: SnpReport) -> str:
    return f"snp/{product}/vcek/{report.hwid(product).hex()}-{report.reported_tcb_raw.hex()}.der"


def fetch_snp(client: HttpClient, store: CacheStore, report_bytes: bytes, *, base: str = KDS_URL,
              product: str | None = None) -> list[str]:
    """Fetch what ``SnpVerifier`` needs to verify ``report_bytes`` offline; return the cache names written.

    The product comes from ``product``, else the report's CPUID (v3+); for v2 reports each product is
    tried in turn (KDS answers 404 for the wrong one).
    """
    report = parse_report(report_bytes)
    if product is not None and product not in PRODUCTS:
        raise FetchError("unknown SEV-SNP product", field="product", expected=list(PRODUCTS), actual=product)
    products = [product] if product else ([report.cpuid_product] if report.cpuid_product else list(PRODUCTS))
    key = report.signing_key_name
    written: list[str] = []
    if key == "vcek":
        if not any(report.chip_id):
            raise FetchError("the report's CHIP_ID is masked, so KDS cannot name its VCEK; ship the VCEK with the "
                             "evidence (configfs-tsm auxblob)", field="chip_id")
        chosen = None
        tried = []
        for p in products:
            url = vcek_url(base, p, report)
            tried.append(url)
            try:
                resp = client.get(url, max_bytes=MAX_CERT_BYTES)
            except NotFound:
                if len(products) > 1:
                    continue
                raise
            store.put(vcek_cache_name(p, report), der_certificate(resp.body, url, "SEV-VCEK"), url=url)
            written.append(vcek_cache_name(p, report))
            chosen = p
            break
        if chosen is None:
            raise NotFound(f"AMD KDS has no VCEK for this chip and TCB under any product (tried {len(tried)})",
                           url=tried[-1], status=404)
        chains = [(chosen, "vcek", "ask_ark.pem")]
    else:
        chains = [(p, "vlek", "asvk_ark.pem") for p in products]
    for p, kind, fname in chains:
        root = f"{base.rstrip('/')}/{kind}/v1/{p}"
        try:
            chain = client.get(f"{root}/cert_chain", max_bytes=MAX_CERT_BYTES)
        except NotFound:
            if p != chains[-1][0]:
                continue
            if written:
                break
            raise
        store.put(f"snp/{p}/{fname}", pem_chain(chain.body, chain.url, count=2), url=chain.url)
        crl = client.get(f"{root}/crl", max_bytes=MAX_CRL_BYTES)
        crl_name = f"snp/{p}/{'crl' if kind == 'vcek' else 'vlek_crl'}.der"
        store.put(crl_name, crl_der(crl.body, crl.url), url=crl.url)
        written += [f"snp/{p}/{fname}", crl_name]
    return written
