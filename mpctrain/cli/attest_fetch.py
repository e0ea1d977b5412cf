"""`mpctrain attest fetch-collateral`: fill a collateral cache so `mpctrain attest verify --collateral DIR`
then runs offline.

Exit codes: 0 everything fetched; 1 a fetch failed (the check name and what to change are printed; files
already fetched stay, complete, and are listed in the manifest); 2 the command line is wrong.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from mpctrain.attest.errors import AttestationError
from mpctrain.attest.fetch import Endpoints, HttpClient, InsecureUrl, fetch_collateral
from mpctrain.attest.fetch.amd import KDS_URL
from mpctrain.attest.fetch.intel import PCS_URL
from mpctrain.attest.fetch.nvidia import OCSP_URL, RIM_URL
from mpctrain.attest.files import load_evidence
from mpctrain.attest.snp.report import PRODUCTS
from mpctrain.cli.attest import app
from mpctrain.cli.output import error, labelled, plain_console

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_USAGE = 2


@app.command("fetch-collateral")
def fetch_collateral_cmd(
    out: Path = typer.Option(..., "--out", help="cache directory to fill (created if missing)"),
    snp_report: list[Path] = typer.Option([], "--snp-report", help="SEV-SNP report (raw or Evidence JSON)"),
    tdx_quote: list[Path] = typer.Option([], "--tdx-quote", help="TDX quote (raw or Evidence JSON)"),
    gpu_report: list[Path] = typer.Option([], "--gpu-report", help="GPU report (.hex or Evidence JSON with chain)"),
    amd_kds: str = typer.Option(KDS_URL, "--amd-kds", help="AMD KDS base URL"),
    intel_pcs: str = typer.Option(PCS_URL, "--intel-pcs", help="Intel PCS base URL"),
    nvidia_rim: str = typer.Option(RIM_URL, "--nvidia-rim", help="NVIDIA RIM service base URL"),
    nvidia_ocsp: str = typer.Option(OCSP_URL, "--nvidia-ocsp", help="NVIDIA OCSP responder URL ('' to skip)"),
    snp_product: str | None = typer.Option(None, "--snp-product",
                                           help=f"SEV-SNP product for v2 reports ({', '.join(PRODUCTS)})"),
    retries: int = typer.Option(4, "--retries", min=0, max=20, help="retries on 429/5xx/network errors"),
    rate: float = typer.Option(2.0, "--rate", min=0.0, help="at most R requests per second (0: no limit)"),
    timeout: float = typer.Option(30.0, "--timeout", min=1.0, help="seconds per request"),
) -> None:
    """Fetch VCEKs, cert chains, CRLs, TCB info, QE identity and RIMs for the given evidence files."""
    con = plain_console(soft_wrap=True)
    err = plain_console(stderr=True, soft_wrap=True)
    if not (snp_report or tdx_quote or gpu_report):
        err.print(error("give at least one --snp-report, --tdx-quote or --gpu-report"))
        raise typer.Exit(EXIT_USAGE)
    if snp_product is not None and snp_product not in PRODUCTS:
        err.print(error(f"--snp-product must be one of {', '.join(PRODUCTS)}"))
        raise typer.Exit(EXIT_USAGE)
    try:
        snp = [load_evidence("snp", p).data for p in snp_report]
        tdx = [load_evidence("tdx", p).data for p in tdx_quote]
        gpus = [load_evidence("nvidia-gpu", p) for p in gpu_report]
    except AttestationError as exc:
        err.print(error(exc))
        raise typer.Exit(EXIT_USAGE) from None
    endpoints = Endpoints(amd_kds=amd_kds, intel_pcs=intel_pcs, nvidia_rim=nvidia_rim,
                          nvidia_ocsp=nvidia_ocsp or None)
    try:
        endpoints.check()
    except InsecureUrl as exc:
        err.print(error(exc))
        raise typer.Exit(EXIT_USAGE) from None
    try:
        client = HttpClient(timeout=timeout, retries=retries, rate=rate or None)
        result = fetch_collateral(out, snp_reports=snp, tdx_quotes=tdx, gpu_evidence=gpus, endpoints=endpoints,
                                  client=client, snp_product=snp_product)
    except AttestationError as exc:
        err.print(labelled("FAILED", "red", f"{exc.check}: {exc}"))
        raise typer.Exit(EXIT_FAILED) from None
    for name in result.written:
        con.print(f"  {name}")
    con.print(labelled("OK", "green", f"{len(result.written)} files in {out} (manifest: {result.manifest}); verify "
                                     f"with `mpctrain attest verify --collateral {out} ...`"))
