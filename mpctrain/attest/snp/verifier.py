"""The AMD SEV-SNP verifier: report signature, AMD chain, ARK-signed revocation list, VCEK/VLEK binding and
SNP policy knobs.

The common checks (REPORT_DATA against the binding, debug, measurement allowlist, minimum TCB) are left
to ``mpctrain.attest.verify.check_claims``, which runs after this for every backend.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from mpctrain.attest.claims import Claims
from mpctrain.attest.collateral import Collateral
from mpctrain.attest.errors import (
    AttestationError,
    BackendNotAllowed,
    BadSignature,
    CertificateRevoked,
    CollateralMissing,
    CollateralStale,
    Malformed,
    PolicyViolation,
    UntrustedRoot,
)
from mpctrain.attest.evidence import Evidence
from mpctrain.attest.policy import BackendPolicy, PolicyError
from mpctrain.attest.snp.certs import (
    SnpChain,
    check_leaf_binding,
    find_issuers,
    find_leaf,
    leaf_product,
    verify_chain,
)
from mpctrain.attest.snp.report import SIGNING_KEY_NAMES, SnpReport, decode_tcb, parse_report

OPTIONS = ("vmpl", "allow_migration_agent", "allow_smt", "chip_ids", "host_data", "signing_keys", "min_abi",
           "id_key_digests", "author_key_digests", "require_crl")
_ABI = re.compile(r"^(\d{1,3})\.(\d{1,3})$")


class SnpVerifier:
    """Verifies ``Evidence(kind="snp")`` offline, from certificates in the evidence or the collateral cache."""

    kind = "snp"

    def verify(self, evidence: Evidence, *, policy: BackendPolicy, at: datetime, collateral: Collateral) -> Claims:
        try:
            return self._verify(evidence, policy, at, collateral)
        except (AttestationError, PolicyError):
            raise
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # cryptography parses some certificate parts lazily; whatever it still rejects is malformed evidence
            raise Malformed(f"SEV-SNP evidence cannot be processed: {exc}", field="evidence") from exc

    def _verify(self, evidence: Evidence, policy: BackendPolicy, at: datetime, collateral: Collateral) -> Claims:
        if evidence.kind != self.kind:
            raise BackendNotAllowed("evidence is not SEV-SNP evidence", field="kind", expected=self.kind,
                                    actual=evidence.kind)
        options = _read_options(policy.options)
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        report = parse_report(evidence.data)
        key_name = report.signing_key_name
        if key_name not in options["signing_keys"]:
            raise PolicyViolation("report signed by a key type the policy does not accept", field="signing_keys",
                                  expected=options["signing_keys"], actual=key_name)
        if report.mask_chip_key:
            raise BadSignature("report is not signed (MASK_CHIP_KEY set)", field="key_info.mask_chip_key",
                               expected=False, actual=True)
        certs = dict(evidence.certs)
        leaf = find_leaf(report, certs, collateral)
        product = _product(report, leaf_product(leaf))
        ask, ark = find_issuers(product, key_name, certs, collateral)
        chain = SnpChain(leaf=leaf, intermediate=ask, root=ark)
        skew = timedelta(seconds=policy.clock_skew_seconds)
        verify_chain(chain, product=product, key_name=key_name, roots=policy.roots, at=at, skew=skew)
        _check_revocation(chain, product, key_name, collateral, required=options["require_crl"], at=at, skew=skew)
        _check_report_signature(report, leaf)
        check_leaf_binding(leaf, report, product, key_name)
        _check_policy(report, product, options)
        return _claims(report, product, chain)


def crl_name(product: str, key_name: str) -> str:
    """Where ``mpctrain attest fetch-collateral`` stores AMD KDS's CRL for ``product``'s VCEK or VLEK chain."""
    return f"snp/{product}/{'vlek_crl' if key_name == 'vlek' else 'crl'}.der"


def _check_revocation(chain: SnpChain, product: str, key_name: str, collateral: Collateral, *, required: bool,
                      at: datetime, skew: timedelta) -> None:
    """AMD's KDS publishes, per product, a CRL signed by the ARK that lists revoked ASKs (ASVKs): with it in
    the collateral cache, a revoked intermediate fails; ``require_crl`` makes its absence fail too."""
    from mpctrain.attest.tdx.collateral import load_crl

    name = crl_name(product, key_name)
    raw = collateral.get(name)
    if raw is None:
        if required:
            raise CollateralMissing(f"the policy requires AMD's CRL, and the collateral cache has no {name}: run "
                                    "'mpctrain attest fetch-collateral' for this evidence", field=name)
        return
    crl = load_crl(raw, name)
    if crl.issuer != chain.root.subject:
        raise UntrustedRoot(f"{name} is not issued by this chain's ARK", field=f"{name}.issuer",
                            expected=chain.root.subject.rfc4514_string(), actual=crl.issuer.rfc4514_string())
    try:
        valid = crl.is_signature_valid(chain.root.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
        raise BadSignature(f"{name} signature cannot be checked: {exc}", field=f"{name}.signature") from exc
    if not valid:
        raise BadSignature(f"{name} is not signed by this chain's ARK", field=f"{name}.signature")
    if crl.next_update_utc is None or at > crl.next_update_utc + skew:
        raise CollateralStale(f"{name} is past its nextUpdate: fetch a fresh one", field=f"{name}.nextUpdate",
                              expected=f">= {at.isoformat()}", actual=str(crl.next_update_utc))
    if crl.last_update_utc > at + skew:
        raise CollateralStale(f"{name} was issued after the verification time", field=f"{name}.thisUpdate",
                              expected=f"<= {at.isoformat()}", actual=str(crl.last_update_utc))
    for cert, what in ((chain.intermediate, "ASVK" if key_name == "vlek" else "ASK"), (chain.leaf, key_name.upper())):
        if cert.issuer == crl.issuer and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise CertificateRevoked(f"the {what} is revoked by AMD's CRL", field=f"{name}.revoked",
                                     expected="not listed", actual=format(cert.serial_number, "x"))


def _product(report: SnpReport, from_cert: str | None) -> str:
    from_cpu = report.cpuid_product
    if from_cpu and from_cert and from_cpu != from_cert:
        raise UntrustedRoot("certificate is for another product than the report's CPUID", field="product",
                            expected=from_cpu, actual=from_cert)
    product = from_cpu or from_cert
    if product is None:
        raise Malformed("cannot tell the SEV-SNP product: no CPUID in the report and no product in the certificate",
                        field="product")
    return product


def _check_report_signature(report: SnpReport, leaf: x509.Certificate) -> None:
    pub = leaf.public_key()
    try:
        signature = encode_dss_signature(report.signature_r, report.signature_s)
        pub.verify(signature, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError) as exc:
        raise BadSignature(
            f"report signature does not verify with the {report.signing_key_name.upper()} (tampered report, or a "
            "certificate for another chip/TCB)",
            field="signature",
        ) from exc


def _hex_list(value: Any, name: str, sizes: tuple[int, ...]) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"[snp].{name} must be a list of hex strings")
    out = []
    for v in value:
        v = v.lower()
        try:
            raw = bytes.fromhex(v)
        except ValueError as exc:
            raise PolicyError(f"[snp].{name} entry {v!r} is not hex") from exc
        if len(raw) not in sizes:
            raise PolicyError(f"[snp].{name} entry {v!r} must be {' or '.join(map(str, sizes))} bytes")
        out.append(raw.hex())
    return tuple(out)


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"[snp].{name} must be true or false, got {value!r}")
    return value


def check_options(raw: Mapping[str, Any]) -> None:
    """Validate the ``[snp]`` policy knobs when the policy loads (``Policy.from_dict``)."""
    _read_options(raw)


def _read_options(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the SNP knobs of a policy; a typo or wrong type is a ``PolicyError``, not a silent pass."""
    unknown = set(raw) - set(OPTIONS)
    if unknown:
        raise PolicyError(f"unknown [snp] policy keys: {sorted(unknown)}; known: {list(OPTIONS)}")
    opts: dict[str, Any] = {
        "vmpl": None,
        "allow_migration_agent": _bool(raw.get("allow_migration_agent", False), "allow_migration_agent"),
        "allow_smt": _bool(raw.get("allow_smt", True), "allow_smt"),
        "chip_ids": None,
        "host_data": None,
        "id_key_digests": None,
        "author_key_digests": None,
        "min_abi": None,
        "require_crl": _bool(raw.get("require_crl", False), "require_crl"),
    }
    if "vmpl" in raw:
        vmpl = raw["vmpl"]
        if not isinstance(vmpl, int) or isinstance(vmpl, bool) or not 0 <= vmpl <= 3:
            raise PolicyError(f"[snp].vmpl must be an integer 0..3, got {vmpl!r}")
        opts["vmpl"] = vmpl
    if "chip_ids" in raw:
        opts["chip_ids"] = _hex_list(raw["chip_ids"], "chip_ids", (8, 64))
    if "host_data" in raw:
        opts["host_data"] = _hex_list(raw["host_data"], "host_data", (32,))
    if "id_key_digests" in raw:
        opts["id_key_digests"] = _hex_list(raw["id_key_digests"], "id_key_digests", (48,))
    if "author_key_digests" in raw:
        opts["author_key_digests"] = _hex_list(raw["author_key_digests"], "author_key_digests", (48,))
    keys = raw.get("signing_keys", ["vcek", "vlek"])
    if not isinstance(keys, list | tuple) or not keys or any(k not in SIGNING_KEY_NAMES.values() for k in keys):
        raise PolicyError(f'[snp].signing_keys must be a non-empty list of "vcek", "vlek"; got {keys!r}')
    opts["signing_keys"] = tuple(keys)
    if "min_abi" in raw:
        m = _ABI.match(raw["min_abi"]) if isinstance(raw["min_abi"], str) else None
        if m is None:
            raise PolicyError(f'[snp].min_abi must be "major.minor", got {raw["min_abi"]!r}')
        opts["min_abi"] = (int(m.group(1)), int(m.group(2)))
    return opts


def _check_policy(report: SnpReport, product: str, opts: Mapping[str, Any]) -> None:
    bits = report.policy_bits()
    if opts["vmpl"] is not None and report.vmpl != opts["vmpl"]:
        raise PolicyViolation("report comes from another VMPL than the policy requires", field="vmpl",
                              expected=opts["vmpl"], actual=report.vmpl)
    if bits["migrate_ma"] and not opts["allow_migration_agent"]:
        raise PolicyViolation("guest policy allows a migration agent", field="policy.migrate_ma", expected=False,
                              actual=True)
    if not opts["allow_smt"]:
        if report.platform_bits()["smt_enabled"]:
            raise PolicyViolation("SMT is enabled on the platform", field="platform_info.smt_enabled",
                                  expected=False, actual=True)
        if bits["smt"]:
            raise PolicyViolation("guest policy allows SMT", field="policy.smt", expected=False, actual=True)
    if opts["chip_ids"] is not None:
        ids = {report.chip_id.hex(), report.hwid(product).hex()}
        if not ids & set(opts["chip_ids"]):
            raise PolicyViolation("chip is not in the policy's allowlist", field="chip_id",
                                  expected=list(opts["chip_ids"]), actual=report.hwid(product))
    for name, value in (("host_data", report.host_data), ("id_key_digests", report.id_key_digest),
                        ("author_key_digests", report.author_key_digest)):
        allowed = opts[name]
        if allowed is not None and value.hex() not in allowed:
            raise PolicyViolation(f"{name} is not in the policy's allowlist", field=name, expected=list(allowed),
                                  actual=value)
    if opts["min_abi"] is not None and report.abi < opts["min_abi"]:
        raise PolicyViolation("guest policy's ABI version is below the policy minimum", field="policy.abi",
                              expected=">={}.{}".format(*opts["min_abi"]), actual=bits["abi"])


def _claims(report: SnpReport, product: str, chain: SnpChain) -> Claims:
    def tcb(raw: bytes) -> dict[str, int]:
        return decode_tcb(raw, product).as_dict()

    major, minor, build = report.current_version
    cmajor, cminor, cbuild = report.committed_version
    details: dict[str, object] = {
        "version": report.version,
        "guest_svn": report.guest_svn,
        "policy": report.policy_bits(),
        "vmpl": report.vmpl,
        "host_data": report.host_data.hex(),
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "author_key_en": report.author_key_en,
        "report_id": report.report_id.hex(),
        "report_id_ma": report.report_id_ma.hex(),
        "chip_id": report.hwid(product).hex(),
        "signing_key": report.signing_key_name,
        "platform_info": report.platform_bits(),
        "current_tcb": tcb(report.current_tcb_raw),
        "committed_tcb": tcb(report.committed_tcb_raw),
        "launch_tcb": tcb(report.launch_tcb_raw),
        "reported_tcb": tcb(report.reported_tcb_raw),
        "current_firmware": f"{major}.{minor}.{build}",
        "committed_firmware": f"{cmajor}.{cminor}.{cbuild}",
        "cpuid": {"family": report.cpuid_family, "model": report.cpuid_model, "stepping": report.cpuid_stepping},
    }
    if report.launch_mit_vector is not None:
        details["launch_mit_vector"] = report.launch_mit_vector
        details["current_mit_vector"] = report.current_mit_vector
    return Claims(
        backend="snp",
        measurement=report.measurement,
        report_data=report.report_data,
        debug=report.debug,
        tcb=tcb(report.reported_tcb_raw),
        product=product,
        chain=chain.summaries(),
        details=details,
    )
