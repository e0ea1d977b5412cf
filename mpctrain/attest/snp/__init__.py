"""AMD SEV-SNP: report parsing, the certificate table, and the offline verifier (see docs/snp.md)."""

from mpctrain.attest.snp.certtable import parse_cert_table
from mpctrain.attest.snp.report import SnpReport, Tcb, decode_tcb, parse_report
from mpctrain.attest.snp.verifier import SnpVerifier

__all__ = ["SnpReport", "SnpVerifier", "Tcb", "decode_tcb", "parse_cert_table", "parse_report"]
