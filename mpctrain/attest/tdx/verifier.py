"""The Intel TDX verifier: quote signatures, PCK chain, collateral evaluation and the ``[tdx]`` knobs.

Order: parse, PCK chain to the pinned root, QE report signature, attestation key binding, quote signature,
then collateral (CRLs, tcbInfo, QE identity, TCB level) and policy. Common checks (REPORTDATA, debug,
MRTD allowlist, min TCB) are left to ``mpctrain.attest.verify.check_claims``.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from mpctrain.attest.claims import Claims
from mpctrain.attest.collateral import Collateral
from mpctrain.attest.errors import (
    BackendNotAllowed,
    BadSignature,
    CertificateExpired,
    CertificateRevoked,
    CollateralMissing,
    CollateralStale,
    PolicyViolation,
    TcbStatusNotAllowed,
    UntrustedRoot,
)
from mpctrain.attest.evidence import Evidence
from mpctrain.attest.policy import BackendPolicy
from mpctrain.attest.tdx import collateral as coll
from mpctrain.attest.tdx.options import RTMR_NAMES, TdxOptions, tdx_options
from mpctrain.attest.tdx.pck import (
    PCK_CA_CNS,
    PCK_LEAF_CN,
    TCB_SIGNING_CN,
    PckExtensions,
    check_validity,
    common_name,
    load_chain,
    parse_sgx_extensions,
    summarize,
    verify_chain,
)
from mpctrain.attest.tdx.quote import Quote, parse_quote

T = TypeVar("T")
CACHE_ENTRIES = 64


@dataclass(frozen=True)
class _Source:
    """Where one collateral item is looked up: the evidence's certs key, then the cache name."""

    evidence_key: str
    cache_name: str


def collateral_names(fmspc_hex: str) -> dict[str, _Source]:
    """The collateral this verifier reads; the fetcher fills the cache under these names."""
    return {
        "tcb_info": _Source("tcb_info", f"tdx/tcbinfo/{fmspc_hex}.json"),
        "tcb_info_issuer_chain": _Source("tcb_info_issuer_chain", f"tdx/tcbinfo/{fmspc_hex}.issuer_chain.pem"),
        "qe_identity": _Source("qe_identity", "tdx/qe_identity.json"),
        "qe_identity_issuer_chain": _Source("qe_identity_issuer_chain", "tdx/qe_identity.issuer_chain.pem"),
        "pck_crl": _Source("pck_crl", "tdx/pckcrl.der"),
        "pck_crl_issuer_chain": _Source("pck_crl_issuer_chain", "tdx/pckcrl.issuer_chain.pem"),
        "root_crl": _Source("root_crl", "tdx/rootcrl.der"),
    }


REQUIRED = ("tcb_info", "tcb_info_issuer_chain", "qe_identity", "qe_identity_issuer_chain", "pck_crl", "root_crl")


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t is not None else None


def _attestation_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError as exc:
        raise BadSignature("attestation key is not a P-256 point", field="attestation_key") from exc


class _State:
    """Per-call collateral findings: staleness reasons and nextUpdate times for the claims."""

    def __init__(self, at: datetime, skew: int, opts: TdxOptions) -> None:
        self.at = at
        self.skew = timedelta(seconds=skew)
        self.opts = opts
        self.stale: list[tuple[str, str, str]] = []
        self.next_update: dict[str, str | None] = {}

    def window(self, name: str, issued: datetime, next_update: datetime | None) -> None:
        """Not-yet-valid collateral is refused; past nextUpdate or older than the maximum age is stale."""
        if issued > self.at + self.skew:
            raise CertificateExpired(f"{name} is issued after the verification time", field=f"{name}.issued",
                                     expected=f"<={_iso(self.at)}", actual=_iso(issued))
        self.next_update[name] = _iso(next_update)
        if next_update is not None and next_update < self.at - self.skew:
            self.stale.append((f"{name}.nextUpdate", f">={_iso(self.at)}", str(_iso(next_update))))
        days = self.opts.max_collateral_age_days
        if days is not None and self.at - issued > timedelta(days=days) + self.skew:
            self.stale.append((f"{name}.issued", f"within {days} days of {_iso(self.at)}", str(_iso(issued))))

    def signer(self, name: str, cert: x509.Certificate) -> None:
        """A collateral signer that has expired since signing makes the collateral stale, not forged."""
        if cert.not_valid_after_utc < self.at - self.skew:
            self.stale.append((f"{name}.signer.notAfter", f">={_iso(self.at)}", str(_iso(cert.not_valid_after_utc))))


class _Cache:
    """Bounded map from a hash of input bytes (and pins) to a verified, time-independent result."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self._entries = entries
        self._data: dict[bytes, Any] = {}
        self._lock = threading.Lock()

    def get_or_build(self, parts: tuple[bytes, ...], build: Callable[[], T]) -> T:
        h = hashlib.sha256()
        for p in parts:
            h.update(len(p).to_bytes(8, "big"))
            h.update(p)
        key = h.digest()
        with self._lock:
            if key in self._data:
                return self._data[key]
        value = build()  # raises on failure: failures are never stored
        with self._lock:
            if len(self._data) >= self._entries:
                self._data.clear()
            self._data[key] = value
        return value


_SHARED_CACHE = _Cache()


class TdxVerifier:
    """Verifies Intel TDX quotes (v4, v5 body types 2/3) offline against cached Intel PCS collateral.

    Verified PCK chains and collateral (signatures and signer chains, which do not depend on the
    verification time) are cached, keyed by a hash of their bytes and the pinned roots; failures are
    never cached. ``verify_evidence`` makes a new instance per call, so instances share one process-wide
    cache unless given ``private_cache=True``.
    """

    kind = "tdx"

    def __init__(self, *, private_cache: bool = False) -> None:
        self._cache = _Cache() if private_cache else _SHARED_CACHE

    def _cached(self, parts: tuple[bytes, ...], build: Callable[[], T]) -> T:
        return self._cache.get_or_build(parts, build)

    def verify(
        self, evidence: Evidence, *, policy: BackendPolicy, at: datetime, collateral: Collateral
    ) -> Claims:
        if evidence.kind != self.kind:
            raise BackendNotAllowed("evidence is not a TDX quote", field="kind", expected=self.kind,
                                    actual=evidence.kind)
        opts = tdx_options(policy)
        at = _utc(at)
        skew = policy.clock_skew_seconds
        quote = parse_quote(evidence.data)
        certs, pck_key = self._pck_chain(quote.pck_chain, policy.roots)
        for i, cert in enumerate(certs):
            check_validity(cert, at, skew, f"pck_chain[{i}]")
        coll.verify_raw_p256(pck_key, quote.qe_report_signature, quote.qe_report.raw, "qe_report")
        expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
        if not hmac.compare_digest(expected, quote.qe_report.report_data):
            raise BadSignature("the QE report does not certify this attestation key", field="qe_report.report_data",
                               expected=expected, actual=quote.qe_report.report_data)
        coll.verify_raw_p256(_attestation_key(quote.attestation_key), quote.signature, quote.signed, "quote")
        pck = parse_sgx_extensions(certs[0])
        state = _State(at, skew, opts)
        details = self._collateral(evidence, collateral, quote, certs, pck, policy.roots, state)
        if state.stale:
            details["collateral_stale"] = [f"{f} {a} (expected {e})" for f, e, a in state.stale]
            if opts.fresh_required:
                f, e, a = state.stale[0]
                raise CollateralStale("collateral stale (nextUpdate passed, too old or signer expired); refetch it",
                                      field=f, expected=e, actual=a)
        else:
            details["collateral_stale"] = []
        details["collateral_next_update"] = state.next_update
        status = details["tcb_status"]
        if status is not None and status not in opts.accepted_tcb_statuses:
            raise TcbStatusNotAllowed("platform TCB status is not accepted by the policy", field="tcb_status",
                                      expected=list(opts.accepted_tcb_statuses), actual=status)
        _check_options(quote, opts)
        return self._claims(quote, certs, pck, details)

    def _pck_chain(
        self, raw: bytes, roots: tuple[str, ...]
    ) -> tuple[tuple[x509.Certificate, ...], ec.EllipticCurvePublicKey]:
        """Parse and check the PCK chain's links and pin (time-independent, so cacheable)."""

        def build() -> tuple[tuple[x509.Certificate, ...], ec.EllipticCurvePublicKey]:
            certs = load_chain(raw, "pck_chain")
            key = verify_chain(certs, roots, name="pck_chain", leaf_cns=(PCK_LEAF_CN,), ca_cns=PCK_CA_CNS, at=None,
                               skew=0)
            return tuple(certs), key

        return self._cached((b"pck", raw, *(r.encode() for r in roots)), build)

    # ------------------------------------------------------------ collateral

    def _collateral(
        self,
        evidence: Evidence,
        collateral: Collateral,
        quote: Quote,
        certs: tuple[x509.Certificate, ...],
        pck: PckExtensions,
        roots: tuple[str, ...],
        state: _State,
    ) -> dict[str, object]:
        names = collateral_names(pck.fmspc.hex())
        found = {key: _sources(evidence, collateral, src) for key, src in names.items()}
        missing = [k for k in REQUIRED if not found[k]]
        if missing and state.opts.require_collateral:
            raise CollateralMissing("TDX collateral missing from the evidence and the cache; run the fetcher",
                                    field=missing[0], expected=names[missing[0]].cache_name, actual=None)
        details: dict[str, object] = {"collateral_missing": missing}
        root, pck_ca, leaf = certs[-1], certs[1], certs[0]
        root_key = bytes(root.public_bytes(Encoding.DER))

        # Every copy offered (evidence, cache) must verify; revocation in any of them counts; the newest
        # copy decides status and freshness, so old collateral shipped by the host cannot roll back the cache.
        root_crls = [self._crl(raw, root, roots, "root_crl") for _, raw in found["root_crl"]]
        for crl in root_crls:
            _not_revoked(crl, pck_ca, "pck_chain[1]")
        if root_crls:
            newest = max(root_crls, key=lambda c: c.last_update_utc)
            state.window("root_crl", newest.last_update_utc, newest.next_update_utc)
        pck_crls = []
        for origin, raw in found["pck_crl"]:
            issuer = pck_ca
            chain_raw = _paired(found["pck_crl_issuer_chain"], origin)
            if chain_raw is not None:
                chain = load_chain(chain_raw, "pck_crl_issuer_chain")
                verify_chain(chain, roots, name="pck_crl_issuer_chain", leaf_cns=PCK_CA_CNS, at=None, skew=0)
                issuer = chain[0]
            if issuer.subject != leaf.issuer:
                raise CollateralMissing("the PCK CRL is not from the CA that issued this PCK", field="pck_crl.issuer",
                                        expected=leaf.issuer.rfc4514_string(), actual=issuer.subject.rfc4514_string())
            crl = self._crl(raw, issuer, roots, "pck_crl")
            _not_revoked(crl, leaf, "pck_chain[0]")
            pck_crls.append(crl)
        if pck_crls:
            newest = max(pck_crls, key=lambda c: c.last_update_utc)
            state.window("pck_crl", newest.last_update_utc, newest.next_update_utc)

        tcb_infos = []
        for origin, raw in found["tcb_info"]:
            chain_raw = _paired(found["tcb_info_issuer_chain"], origin)
            if chain_raw is None:
                continue
            info, signer = self._signed(raw, chain_raw, roots, "tcb_info", "tcbInfo", coll.parse_tcb_info, root_key)
            for crl in root_crls:
                _not_revoked(crl, signer, "tcb_info.signer")
            if info.fmspc != pck.fmspc:
                raise CollateralMissing("tcbInfo is for another platform (FMSPC)", field="tcb_info.fmspc",
                                        expected=pck.fmspc, actual=info.fmspc)
            if info.pce_id != pck.pceid:
                raise CollateralMissing("tcbInfo is for another PCE", field="tcb_info.pceId", expected=pck.pceid,
                                        actual=info.pce_id)
            tcb_infos.append((info, signer))
        tcb_info = qe_identity = None
        if tcb_infos:
            tcb_info, signer = max(tcb_infos, key=lambda t: (t[0].tcb_evaluation_data_number, t[0].issue_date))
            state.window("tcb_info", tcb_info.issue_date, tcb_info.next_update)
            state.signer("tcb_info", signer)
        qe_identities = []
        for origin, raw in found["qe_identity"]:
            chain_raw = _paired(found["qe_identity_issuer_chain"], origin)
            if chain_raw is None:
                continue
            ident, signer = self._signed(raw, chain_raw, roots, "qe_identity", "enclaveIdentity",
                                         coll.parse_qe_identity, root_key)
            for crl in root_crls:
                _not_revoked(crl, signer, "qe_identity.signer")
            qe_identities.append((ident, signer))
        if qe_identities:
            qe_identity, signer = max(qe_identities,
                                      key=lambda t: (t[0].tcb_evaluation_data_number, t[0].issue_date))
            state.window("qe_identity", qe_identity.issue_date, qe_identity.next_update)
            state.signer("qe_identity", signer)
            _check_qe_identity(quote, qe_identity)
        if tcb_info is None:
            details.update(tcb_status=None, tcb_date=None, advisory_ids=[])
            return details
        module = coll.find_module_identity(tcb_info, quote.body.tee_tcb_svn)
        if module is not None and not coll.module_matches(module, quote.body.mrsignerseam,
                                                          quote.body.seam_attributes):
            if module.mrsigner != quote.body.mrsignerseam:
                raise PolicyViolation("TDX module signer does not match tcbInfo", field="mrsignerseam",
                                      expected=module.mrsigner, actual=quote.body.mrsignerseam)
            raise PolicyViolation("SEAM_ATTRIBUTES do not match tcbInfo under its mask", field="seam_attributes",
                                  expected=module.attributes, actual=quote.body.seam_attributes)
        ev = coll.evaluate(tcb_info, pck.sgx_tcb_components, pck.pcesvn, quote.body.tee_tcb_svn, qe_identity,
                           quote.qe_report.isvsvn)
        details.update(
            tcb_status=ev.status, platform_tcb_status=ev.platform_status, tdx_module_tcb_status=ev.module_status,
            qe_tcb_status=ev.qe_status, tcb_date=ev.tcb_date, advisory_ids=list(ev.advisory_ids),
            tcb_evaluation_data_number=tcb_info.tcb_evaluation_data_number,
        )
        return details

    def _crl(
        self, raw: bytes, issuer: x509.Certificate, roots: tuple[str, ...], name: str
    ) -> x509.CertificateRevocationList:
        def build() -> x509.CertificateRevocationList:
            crl = coll.load_crl(raw, name)
            if crl.issuer != issuer.subject:
                raise UntrustedRoot(f"{name} is not issued by the expected CA", field=f"{name}.issuer",
                                    expected=issuer.subject.rfc4514_string(), actual=crl.issuer.rfc4514_string())
            try:
                ok = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                raise BadSignature(f"{name} signature cannot be checked: {exc}", field=f"{name}.signature") from exc
            if not ok:
                raise BadSignature(f"{name} signature does not verify", field=f"{name}.signature")
            if crl.next_update_utc is None:
                raise CollateralStale(f"{name} has no nextUpdate", field=f"{name}.nextUpdate")
            return crl

        return self._cached((b"crl", raw, issuer.public_bytes(Encoding.DER), *(r.encode() for r in roots)), build)

    def _signed(
        self,
        raw: bytes,
        chain_raw: bytes,
        roots: tuple[str, ...],
        name: str,
        inner: str,
        parse: Callable[[dict[str, Any]], T],
        root_der: bytes,
    ) -> tuple[T, x509.Certificate]:
        def build() -> tuple[T, x509.Certificate]:
            chain = load_chain(chain_raw, f"{name}_issuer_chain")
            verify_chain(chain, roots, name=f"{name}_issuer_chain", leaf_cns=(TCB_SIGNING_CN,), at=None, skew=0)
            signer = chain[0]
            body, obj, sig = coll.split_signed_json(raw, inner, name)
            coll.verify_raw_p256(signer.public_key(), sig, body, name)  # type: ignore[arg-type]
            parsed = parse(obj)
            # The signer must have been valid when it signed, however old the collateral is now.
            issued = parsed.issue_date  # type: ignore[attr-defined]
            for i, cert in enumerate(chain):
                check_validity(cert, issued, 0, f"{name}_issuer_chain[{i}] at issueDate")
            return parsed, signer

        return self._cached((b"json", name.encode(), raw, chain_raw, root_der, *(r.encode() for r in roots)), build)

    # ------------------------------------------------------------ claims

    def _claims(
        self, quote: Quote, certs: tuple[x509.Certificate, ...], pck: PckExtensions, details: dict[str, object]
    ) -> Claims:
        b = quote.body
        tcb = {f"tee_tcb_svn_{i}": v for i, v in enumerate(b.tee_tcb_svn)}
        if b.tee_tcb_svn2 is not None:
            tcb.update({f"tee_tcb_svn2_{i}": v for i, v in enumerate(b.tee_tcb_svn2)})
        tcb.update({f"cpu_svn_{i}": v for i, v in enumerate(pck.sgx_tcb_components)})
        tcb["pce_svn"] = pck.pcesvn
        tcb["qe_isvsvn"] = quote.qe_report.isvsvn
        details.update(
            {f"rtmr{i}": r.hex() for i, r in enumerate(b.rtmrs)},
            mrseam=b.mrseam.hex(), mrsignerseam=b.mrsignerseam.hex(), mrconfigid=b.mrconfigid.hex(),
            mrowner=b.mrowner.hex(), mrownerconfig=b.mrownerconfig.hex(), td_attributes=b.td_attributes.hex(),
            xfam=b.xfam.hex(), seam_attributes=b.seam_attributes.hex(), tee_tcb_svn=b.tee_tcb_svn.hex(),
            fmspc=pck.fmspc.hex(), pceid=pck.pceid.hex(), cpusvn=pck.cpusvn.hex(), quote_version=quote.version,
            body_type=quote.body_type, qe_mrenclave=quote.qe_report.mrenclave.hex(),
            qe_mrsigner=quote.qe_report.mrsigner.hex(), pck_issuer=common_name(certs[1]),
            trailing_bytes=quote.trailing_bytes,
        )
        if b.mrservicetd is not None and b.tee_tcb_svn2 is not None:
            details.update(mrservicetd=b.mrservicetd.hex(), tee_tcb_svn2=b.tee_tcb_svn2.hex())
        return Claims(
            backend="tdx", measurement=b.mrtd, report_data=b.report_data, debug=b.debug, tcb=tcb, product="TDX",
            chain=tuple(summarize(c) for c in certs), details=details,
        )


def _sources(evidence: Evidence, collateral: Collateral, src: _Source) -> list[tuple[str, bytes]]:
    """The copies of one collateral item: from the evidence, then from the cache when it differs."""
    out = []
    shipped = evidence.certs.get(src.evidence_key)
    if shipped is not None:
        out.append(("evidence", shipped))
    cached = collateral.get(src.cache_name)
    if cached is not None and cached != shipped:
        out.append(("cache", cached))
    return out


def _paired(chains: list[tuple[str, bytes]], origin: str) -> bytes | None:
    """The issuer chain from the same origin as the item, else any other copy."""
    for o, raw in chains:
        if o == origin:
            return raw
    return chains[0][1] if chains else None


def _not_revoked(crl: x509.CertificateRevocationList, cert: x509.Certificate, name: str) -> None:
    if crl.issuer == cert.issuer and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise CertificateRevoked(f"{name} is revoked", field=f"{name}.serial", expected="not in CRL",
                                 actual=format(cert.serial_number, "x"))


def _masked(a: bytes, mask: bytes) -> bytes:
    return bytes(x & m for x, m in zip(a, mask, strict=True))


def _check_qe_identity(quote: Quote, ident: coll.QeIdentity) -> None:
    """The quoting enclave must be Intel's TD QE: MRSIGNER, ISVPRODID, MISCSELECT and ATTRIBUTES masks."""
    qe = quote.qe_report
    checks = [
        ("qe_report.mrsigner", ident.mrsigner, qe.mrsigner),
        ("qe_report.isvprodid", ident.isvprodid, qe.isvprodid),
        ("qe_report.miscselect", ident.miscselect & ident.miscselect_mask, qe.miscselect & ident.miscselect_mask),
        ("qe_report.attributes", _masked(ident.attributes, ident.attributes_mask),
         _masked(qe.attributes, ident.attributes_mask)),
    ]
    for field, want, got in checks:
        if want != got:
            raise PolicyViolation("quoting enclave does not match Intel's QE identity", field=field, expected=want,
                                  actual=got)


def _check_options(quote: Quote, opts: TdxOptions) -> None:
    b = quote.body
    if opts.rtmrs:
        for name, allowed in opts.rtmrs.items():
            actual = b.rtmrs[RTMR_NAMES.index(name)]
            if actual not in allowed:
                raise PolicyViolation("RTMR not in the policy's allowlist", field=name,
                                      expected=[a.hex() for a in allowed], actual=actual)
    for name, allowed in (opts.allowlists or {}).items():
        actual = getattr(b, name)
        if actual not in allowed:
            raise PolicyViolation(f"{name.upper()} not in the policy's allowlist", field=name,
                                  expected=[a.hex() for a in allowed], actual=actual)
    for name, rule in (opts.masks or {}).items():
        value = int.from_bytes(getattr(b, name), "little")
        if value & rule.mask != rule.value:
            raise PolicyViolation(f"{name.upper()} does not satisfy the policy mask", field=name,
                                  expected=f"value & {rule.mask:#018x} == {rule.value:#018x}", actual=f"{value:#018x}")
