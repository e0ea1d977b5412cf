"""Genuine vendor evidence cannot vouch for a key it does not bind: a host-made segment on real SNP fails."""

from __future__ import annotations

import pytest
from auditkit import numbered

from mpctrain.attest import BuildInfo, Evidence, EvidenceBundle, Policy
from mpctrain.enclave.audit import AuditBroken, AuditRecord, segment_nonce, verify_log
from mpctrain.seal.keys import IdentityKey, KemKey


def _segment(bundle_for) -> list[bytes]:
    """A segment start as a host would forge it: its own keys, real hardware evidence it replays."""
    key, kem = IdentityKey.generate(), KemKey.generate()
    bundle = bundle_for(key.public_bytes(), kem.public_bytes())
    raw = bundle.to_json()
    fields = {"sig_public": key.public_bytes().hex(), "kem_public": kem.public_bytes().hex(), "kem_alg": "x25519",
              "backend": bundle.cpu.kind, "nonce": segment_nonce("", 0).hex(),
              "evidence_digest": bundle.digest().hex(), "evidence": raw.decode()}
    start = AuditRecord(seq=0, segment=0, time_ms=1, kind="segment.started", prev_hash="", fields=fields).signed(key)
    nxt = AuditRecord(seq=1, segment=0, time_ms=2, kind="output.sealed", prev_hash=start.hash, job_id="j",
                      job_seq=0, fields={"recipient": "mallory"}).signed(key)
    return [start.to_line(), nxt.to_line()]


def test_replayed_snp_evidence_fails_the_binding(vectors, vector_time):
    """The report is genuine (real AMD chain, valid at the vector time); its REPORT_DATA binds other keys."""
    cpu = Evidence("snp", (vectors / "snp" / "milan_v2_report.bin").read_bytes(),
                   {"vcek": (vectors / "snp" / "milan_v2_vcek.der").read_bytes(),
                    "ask_ark": (vectors / "snp" / "ask_ark_milan.pem").read_bytes()})
    policy = Policy.from_dict({"backends": ["snp"], "snp": {"measurements": "report-only"}})

    def bundle_for(sig_public: bytes, kem_public: bytes) -> EvidenceBundle:
        return EvidenceBundle(cpu=cpu, kem_public=kem_public, sig_public=sig_public,
                              build=BuildInfo("forged", b"\x00" * 32))

    with pytest.raises(AuditBroken) as info:
        verify_log(numbered(_segment(bundle_for)), policy, at=vector_time)
    exc = info.value
    assert (exc.line, exc.seq, exc.check) == (1, 0, "evidence")
    assert "binding-mismatch" in exc.detail
