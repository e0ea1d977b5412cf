"""The enclave's keys and evidence: generated at start inside the TEE, never written anywhere."""

from __future__ import annotations

from dataclasses import dataclass, field

from mpctrain.attest import BuildInfo, EvidenceBundle
from mpctrain.attest.backend import Attester, GpuAttester
from mpctrain.seal.binding import evidence_binding, gpu_nonce
from mpctrain.seal.keys import IdentityKey, KemKey

ENCLAVE_ID = "enclave"


@dataclass
class EnclaveIdentity:
    """KEM key (parties seal to it), signing key (headers, receipts), attester and build info."""

    attester: Attester
    build: BuildInfo
    kem: KemKey
    sig: IdentityKey
    gpus: list[GpuAttester] = field(default_factory=list)

    @classmethod
    def generate(cls, attester: Attester, build: BuildInfo, kem_alg: str = "x25519",
                 gpus: list[GpuAttester] | None = None) -> EnclaveIdentity:
        return cls(attester=attester, build=build, kem=KemKey.generate(kem_alg), sig=IdentityKey.generate(),
                   gpus=list(gpus or []))

    def evidence(self, nonce: bytes) -> EvidenceBundle:
        """Evidence whose REPORT_DATA binds ``nonce`` to this enclave's public keys and build."""
        kem_pub = self.kem.public_bytes()
        sig_pub = self.sig.public_bytes()
        binding = evidence_binding(nonce, kem_pub, sig_pub, self.build.build_digest)
        cpu = self.attester.attest(binding)
        gpu_ev = []
        for g in self.gpus:
            for i in range(g.gpu_count()):
                gpu_ev.append(g.attest_gpu(i, gpu_nonce(binding, len(gpu_ev))))
        return EvidenceBundle(cpu=cpu, kem_public=kem_pub, sig_public=sig_pub, build=self.build,
                              kem_alg=self.kem.alg, gpus=tuple(gpu_ev))
