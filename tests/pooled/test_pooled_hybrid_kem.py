"""The post-quantum hybrid KEM (ML-KEM-768 + X25519) end to end: attested key, sealed shards, sealed outputs."""

from __future__ import annotations

from mpctrain.enclave.events import MemoryEventSink
from mpctrain.sim.cluster import SimCluster
from mpctrain.train.tensors import state_from_bytes
from pooled_kit import run_job


def test_pooled_job_with_hybrid_kem(tmp_path):
    with SimCluster(tmp_path, events=MemoryEventSink(), kem_alg="mlkem768-x25519") as c:
        m, agents = run_job(c, "hybrid")
        assert {p.kem_alg for p in m.parties} == {"mlkem768-x25519"}
        a = agents["hospital-a"]
        enclave = a.attest()
        assert enclave.kem_alg == "mlkem768-x25519" and len(enclave.kem_public) == 1184 + 32
        assert state_from_bytes(a.fetch(m)["model"])
