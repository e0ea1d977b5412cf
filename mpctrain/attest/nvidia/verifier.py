"""Verifier for NVIDIA H100/H200 confidential-computing GPU evidence (SPDM GET_MEASUREMENTS + RIMs).

Checks, in order: strict parse (``Malformed``); device chain leaf → pinned NVIDIA Device Identity CA
(``UntrustedRoot``, ``BadSignature``, ``CertificateExpired``); the leaf's ECDSA P-384 signature over
request ‖ response-without-signature, which proves the response answers *this* request and nonce
(``BadSignature``); the leaf's DICE FWID equals the opaque FWID (``BadSignature``: the signing key is
certified for other firmware); driver/VBIOS allowlists (``PolicyViolation``); RIM comparison
(``ReferenceMismatch`` / ``CollateralMissing`` when ``require_rim``, otherwise reported in details).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from mpctrain.attest.claims import Claims
from mpctrain.attest.collateral import Collateral
from mpctrain.attest.errors import (
    AttestationError,
    BackendNotAllowed,
    BadSignature,
    CollateralMissing,
    Malformed,
    PolicyViolation,
    ReferenceMismatch,
)
from mpctrain.attest.evidence import Evidence
from mpctrain.attest.nvidia.chain import leaf_fwid, load_pem_chain, verify_chain
from mpctrain.attest.nvidia.ocsp import check_chain
from mpctrain.attest.nvidia.rim import MAX_RIM_BYTES, NVIDIA_RIM_ROOT_SHA256, Rim, verify_rim
from mpctrain.attest.nvidia.spdm import GpuReport, parse_report
from mpctrain.attest.policy import BackendPolicy, PolicyError

KIND = "nvidia-gpu"
CHAIN_CERT = "chain"
CHAIN_COLLATERAL = "nvidia/chain.pem"
RIM_ROLES = ("driver", "vbios")
KNOWN_OPTIONS = frozenset({"drivers", "vbios", "require_rim", "rim_files", "rim_roots", "rim_verification_time",
                           "require_ocsp"})
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DRIVER = re.compile(r"(\d{1,3})\.(\d{1,3})(?:\.(\d{1,3}))?")


@dataclass(frozen=True)
class NvidiaOptions:
    """The ``[nvidia-gpu]`` policy knobs, validated (a wrong type is a ``PolicyError``)."""

    drivers: tuple[str, ...] | None = None
    vbios: tuple[str, ...] | None = None
    require_rim: bool = False
    rim_files: Mapping[str, Path] | None = None
    rim_roots: tuple[str, ...] = (NVIDIA_RIM_ROOT_SHA256,)
    rim_verification_time: datetime | None = None
    require_ocsp: bool = False

    @classmethod
    def from_policy(cls, options: Mapping[str, Any]) -> NvidiaOptions:
        unknown = set(options) - KNOWN_OPTIONS
        if unknown:
            raise PolicyError(f"unknown [nvidia-gpu] policy options {sorted(unknown)}; known: {sorted(KNOWN_OPTIONS)}")
        require = options.get("require_rim", False)
        if not isinstance(require, bool):
            raise PolicyError(f"[nvidia-gpu].require_rim must be true or false, got {require!r}")
        require_ocsp = options.get("require_ocsp", False)
        if not isinstance(require_ocsp, bool):
            raise PolicyError(f"[nvidia-gpu].require_ocsp must be true or false, got {require_ocsp!r}")
        files = options.get("rim_files")
        rim_files = None
        if files is not None:
            if not isinstance(files, Mapping) or not set(files) <= set(RIM_ROLES) or not all(
                isinstance(v, str | Path) and str(v) and "\x00" not in str(v) for v in files.values()
            ):
                raise PolicyError('[nvidia-gpu].rim_files must be a table like { driver = "path", vbios = "path" }')
            rim_files = {k: Path(v) for k, v in files.items()}
        roots = _strings(options, "rim_roots")
        if roots is not None and not all(re.fullmatch(r"[0-9a-fA-F]{64}", r) for r in roots):
            raise PolicyError("[nvidia-gpu].rim_roots must be SHA-256 hex digests")
        return cls(
            drivers=_strings(options, "drivers"),
            vbios=_strings(options, "vbios"),
            require_rim=require,
            rim_files=rim_files,
            rim_roots=tuple(r.lower() for r in roots) if roots is not None else (NVIDIA_RIM_ROOT_SHA256,),
            rim_verification_time=_time(options.get("rim_verification_time")),
            require_ocsp=require_ocsp,
        )


def check_options(options: Mapping[str, Any]) -> None:
    """Validate the ``[nvidia-gpu]`` policy knobs when the policy loads (``Policy.from_dict``)."""
    NvidiaOptions.from_policy(options)


def _strings(options: Mapping[str, Any], name: str) -> tuple[str, ...] | None:
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"[nvidia-gpu].{name} must be a list of strings, got {value!r}")
    return tuple(value)


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise PolicyError(f"[nvidia-gpu].rim_verification_time is not an ISO 8601 time: {value!r}") from exc
    if not isinstance(value, datetime):
        raise PolicyError("[nvidia-gpu].rim_verification_time must be a date-time")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class NvidiaGpuVerifier:
    """``verify(evidence, policy=, at=, collateral=) -> Claims`` for ``kind = "nvidia-gpu"``.

    Claims: ``measurement`` = SHA-384 over the measurement block values concatenated in ascending
    block-index order; ``report_data`` = the 32-byte requester nonce; ``debug`` = False (the report has
    no debug flag; devtools mode changes the measurements, which RIM comparison catches);
    ``tcb`` = ``{"driver": major*10**6 + minor*10**3 + patch}``; ``product`` = ``project_sku_chip``.
    Measurement indices in ``details`` use NVIDIA's RIM numbering: SPDM block index - 1.
    """

    kind = KIND

    def verify(self, evidence: Evidence, *, policy: BackendPolicy, at: datetime, collateral: Collateral) -> Claims:
        if evidence.kind != KIND:
            raise BackendNotAllowed("not NVIDIA GPU evidence", field="kind", expected=KIND, actual=evidence.kind)
        at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
        options = NvidiaOptions.from_policy(policy.options)
        report = parse_report(evidence.data)
        pem = evidence.certs[CHAIN_CERT] if CHAIN_CERT in evidence.certs else collateral.get(CHAIN_COLLATERAL)
        if pem is None:
            raise CollateralMissing("GPU evidence has no device certificate chain", field="certs.chain",
                                    expected=f"evidence certs['{CHAIN_CERT}'] or collateral {CHAIN_COLLATERAL}")
        certs = load_pem_chain(pem, CHAIN_CERT)
        chain = verify_chain(certs, roots=policy.roots, at=at, skew_seconds=policy.clock_skew_seconds,
                             what=CHAIN_CERT)
        revocation = check_chain(certs, collateral, required=options.require_ocsp, at=at,
                                 skew=timedelta(seconds=policy.clock_skew_seconds))
        _check_signature(report, certs[0].public_key())
        fwid = leaf_fwid(certs[0])
        if not hmac.compare_digest(fwid, report.fwid):
            raise BadSignature("the device certificate is for other firmware than the report's FWID",
                               field="fwid", expected=fwid, actual=report.fwid)
        _check_allowlists(report, options)
        measurements = report.measurements_by_rim_index()
        rim_details, mismatches = _compare_rims(report, measurements, evidence, collateral, options, policy, at)
        details: dict[str, object] = {
            "driver_version": report.driver_version,
            "vbios_version": report.vbios_version,
            "measurements": {str(i): v.hex() for i, v in measurements.items()},
            "fwid": report.fwid.hex(),
            "responder_nonce": report.responder_nonce.hex(),
            "project": report.project,
            "project_sku": report.project_sku,
            "chip_sku": report.chip_sku,
            "slot": report.slot,
            "rim": rim_details,
            "mismatches": mismatches,
            "ocsp": revocation,
        }
        return Claims(
            backend=KIND,
            measurement=report.measurement_digest(),
            report_data=report.requester_nonce,
            debug=False,
            tcb=_tcb(report.driver_version),
            product=f"{report.project}_{report.project_sku}_{report.chip_sku}",
            chain=chain,
            details=details,
        )


def _check_signature(report: GpuReport, key: object) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise BadSignature("device leaf does not hold a P-384 key", field="chain[0].key")
    r = int.from_bytes(report.signature[:48], "big")
    s = int.from_bytes(report.signature[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise BadSignature("GPU measurement signature does not verify over request and response",
                           field="signature") from exc


def _check_allowlists(report: GpuReport, options: NvidiaOptions) -> None:
    if options.drivers is not None and report.driver_version not in options.drivers:
        raise PolicyViolation("GPU driver version not allowed", field="driver_version",
                              expected=list(options.drivers), actual=report.driver_version)
    if options.vbios is not None and report.vbios_version.upper() not in {v.upper() for v in options.vbios}:
        raise PolicyViolation("GPU VBIOS version not allowed", field="vbios_version",
                              expected=list(options.vbios), actual=report.vbios_version)


def _tcb(driver: str) -> dict[str, int]:
    m = _DRIVER.fullmatch(driver)
    if m is None:
        return {}
    major, minor, patch = (int(g or 0) for g in m.groups())
    return {"driver": major * 1_000_000 + minor * 1_000 + patch}


def rim_collateral_names(report: GpuReport) -> dict[str, str]:
    """Cache names the fetcher writes: driver RIM by driver version, VBIOS RIM by project, SKU and version."""
    names = {}
    if _SAFE_NAME.fullmatch(report.driver_version):
        names["driver"] = f"nvidia/rim/driver/{report.driver_version}.swidtag"
    vbios = f"{report.project}_{report.project_sku}_{report.vbios_version}"
    if _SAFE_NAME.fullmatch(vbios):
        names["vbios"] = f"nvidia/rim/vbios/{vbios}.swidtag"
    return names


def _find_rim(
    role: str, report: GpuReport, evidence: Evidence, collateral: Collateral, options: NvidiaOptions
) -> tuple[str, bytes] | None:
    """Policy file first, then the party's collateral cache, then a RIM shipped with the evidence.

    A file the policy names but that cannot be read is an error even when RIMs are optional.
    """
    if options.rim_files is not None and role in options.rim_files:
        path = options.rim_files[role]
        try:
            if path.stat().st_size > MAX_RIM_BYTES:
                raise Malformed("RIM file too large", field=f"rim_files.{role}", actual=path.stat().st_size)
            return f"policy:{path}", path.read_bytes()
        except OSError as exc:
            raise CollateralMissing(f"cannot read RIM file named by the policy: {exc}", field=f"rim_files.{role}",
                                    expected=str(path)) from exc
    name = rim_collateral_names(report).get(role)
    if name is not None:
        blob = collateral.get(name)
        if blob is not None:
            return f"collateral:{name}", blob
    blob = evidence.certs.get(f"rim_{role}")
    if blob is not None:
        return f"evidence:rim_{role}", blob
    return None


def _compare_rims(
    report: GpuReport,
    measurements: Mapping[int, bytes],
    evidence: Evidence,
    collateral: Collateral,
    options: NvidiaOptions,
    policy: BackendPolicy,
    at: datetime,
) -> tuple[dict[str, object], list[int]]:
    """Verify and compare the driver and VBIOS RIMs; raise only when the policy requires them."""
    rim_at = options.rim_verification_time or at
    expected_versions = {"driver": report.driver_version, "vbios": report.vbios_version}
    details: dict[str, object] = {"required": options.require_rim, "verified_at": rim_at.isoformat()}
    mismatches: set[int] = set()
    wrong_versions: list[str] = []
    complete = True
    for role in RIM_ROLES:
        found = _find_rim(role, report, evidence, collateral, options)
        if found is None:
            complete = False
            looked = [rim_collateral_names(report).get(role, "(no usable cache name)"), f"evidence certs['rim_{role}']"]
            if options.require_rim:
                raise CollateralMissing(f"no {role} RIM for this GPU", field=f"rim.{role}", expected=looked)
            details[role] = {"status": "missing", "looked_for": looked}
            continue
        source, blob = found
        try:
            rim = verify_rim(blob, roots=options.rim_roots, at=rim_at, skew_seconds=policy.clock_skew_seconds,
                             what=f"rim.{role}")
        except AttestationError as exc:
            if options.require_rim:
                raise
            complete = False
            details[role] = {"status": "invalid", "source": source, "error": f"{exc.check}: {exc}"}
            continue
        bad = rim.mismatches(measurements)
        version_ok = rim.version.lower() == expected_versions[role].lower()
        if not version_ok:
            wrong_versions.append(f"{role} RIM is for {rim.version}, the GPU reports {expected_versions[role]}")
        mismatches.update(bad)
        details[role] = _rim_summary(rim, source, bad, version_ok)
    ordered = sorted(mismatches)
    details["compared"] = complete
    details["match"] = complete and not ordered and not wrong_versions
    if options.require_rim and (ordered or wrong_versions):
        reasons = [f"measurement indices {ordered} differ from the RIMs"] if ordered else []
        raise ReferenceMismatch("GPU does not match its reference manifests: " + "; ".join(reasons + wrong_versions),
                                field="measurements" if ordered else "rim.version",
                                expected="RIM golden values", actual=ordered if ordered else wrong_versions)
    return details, ordered


def _rim_summary(rim: Rim, source: str, bad: list[int], version_ok: bool) -> dict[str, object]:
    return {
        "status": "verified",
        "source": source,
        "tag_id": rim.tag_id,
        "version": rim.version,
        "version_matches": version_ok,
        "product": rim.product,
        "signer": rim.chain[0].subject,
        "signer_not_after": rim.chain[0].not_after.isoformat(),
        "indices": sorted(rim.golden),
        "mismatches": bad,
    }
