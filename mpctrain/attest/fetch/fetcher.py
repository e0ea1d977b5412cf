"""Fill a collateral cache directory for a set of evidence, so verification then runs offline."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mpctrain.attest.evidence import Evidence
from mpctrain.attest.fetch import amd, intel, nvidia
from mpctrain.attest.fetch.client import HttpClient, check_url
from mpctrain.attest.fetch.store import CacheStore

log = logging.getLogger(__name__)

DEFAULT_RATE = 2.0  # requests per second when the caller brings no client: KDS answers bursts with 429


@dataclass(frozen=True)
class Endpoints:
    """Service base URLs; override them for a mirror (https, or http on loopback only)."""

    amd_kds: str = amd.KDS_URL
    intel_pcs: str = intel.PCS_URL
    nvidia_rim: str = nvidia.RIM_URL
    nvidia_ocsp: str | None = nvidia.OCSP_URL

    def check(self) -> None:
        for url in (self.amd_kds, self.intel_pcs, self.nvidia_rim, self.nvidia_ocsp):
            if url is not None:
                check_url(url)


@dataclass
class FetchResult:
    """Cache names written in this run, and the manifest's path."""

    written: list[str] = field(default_factory=list)
    manifest: Path | None = None


class CollateralFetcher:
    """One run: a shared HTTP client (retries, rate limit, limits) and one cache directory."""

    def __init__(
        self, out: str | Path, *, endpoints: Endpoints | None = None, client: HttpClient | None = None
    ) -> None:
        self.endpoints = endpoints or Endpoints()
        self.endpoints.check()
        self.client = client or HttpClient(rate=DEFAULT_RATE)
        self.store = CacheStore(out)

    def snp(self, report: bytes, *, product: str | None = None) -> list[str]:
        return amd.fetch_snp(self.client, self.store, report, base=self.endpoints.amd_kds, product=product)

    def tdx(self, quote: bytes, *, sgx_tcb: bool = False) -> list[str]:
        return intel.fetch_tdx(self.client, self.store, quote, base=self.endpoints.intel_pcs, sgx_tcb=sgx_tcb)

    def gpu(self, evidence: Evidence) -> list[str]:
        return nvidia.fetch_gpu(self.client, self.store, evidence, base=self.endpoints.nvidia_rim,
                                ocsp_base=self.endpoints.nvidia_ocsp)

    def save_manifest(self) -> Path:
        return self.store.save_manifest()


def fetch_collateral(
    out: str | Path,
    *,
    snp_reports: Iterable[bytes] = (),
    tdx_quotes: Iterable[bytes] = (),
    gpu_evidence: Iterable[Evidence] = (),
    endpoints: Endpoints | None = None,
    client: HttpClient | None = None,
    snp_product: str | None = None,
) -> FetchResult:
    """Fetch everything the given evidence needs into ``out``; the manifest is written even on failure,
    listing what did land (every file is complete: writes are atomic)."""
    fetcher = CollateralFetcher(out, endpoints=endpoints, client=client)
    result = FetchResult()
    try:
        for report in snp_reports:
            result.written += fetcher.snp(report, product=snp_product)
        for quote in tdx_quotes:
            result.written += fetcher.tdx(quote)
        for ev in gpu_evidence:
            result.written += fetcher.gpu(ev)
    finally:
        if fetcher.store.written:
            result.manifest = fetcher.save_manifest()
    log.info("fetched %d collateral files into %s", len(result.written), out)
    return result
