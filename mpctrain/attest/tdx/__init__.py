"""Intel TDX backend: DCAP quote v4/v5 parsing and offline verification against Intel PCS collateral."""

from mpctrain.attest.tdx.quote import Quote, TdReportBody, parse_quote
from mpctrain.attest.tdx.verifier import TdxVerifier, collateral_names

__all__ = ["Quote", "TdReportBody", "TdxVerifier", "collateral_names", "parse_quote"]
