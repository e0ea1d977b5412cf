"""AMD SEV-SNP: report parsing and the offline verifier (see docs/snp.md)."""

from mpctrain.attest.snp.report import SnpReport, Tcb, decode_tcb, parse_report
from mpctrain.attest.snp.verifier import SnpVerifier

__all__ = ["SnpReport", "SnpVerifier", "Tcb", "decode_tcb", "parse_report"]
