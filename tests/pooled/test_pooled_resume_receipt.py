"""Interrupted uploads resume to the same model; receipts verify only as the enclave signed them."""

from __future__ import annotations

import dataclasses

import pytest

from mpctrain.attest import Policy, verify
from mpctrain.attest.evidence import EvidenceBundle
from mpctrain.enclave.receipt import ReceiptError, output_digest, receipt_nonce, verify_receipt
from mpctrain.party.agent import load_shard
from mpctrain.party.uploader import ShardUpload
from mpctrain.seal.binding import evidence_binding
from mpctrain.seal.keys import IdentityKey
from pooled_kit import FAST_TRAINING, run_job


def test_interrupted_upload_resumes_and_trains_the_same_model(cluster):
    m_ref, agents = run_job(cluster, "resume-ref")
    ref_model = agents["hospital-a"].fetch(m_ref)["model"]

    m = cluster.manifest("resume-cut", parties=["hospital-a", "hospital-b", "hospital-c"], training=FAST_TRAINING)
    agents = {p: cluster.agent(p) for p in ("hospital-a", "hospital-b", "hospital-c")}
    agents["hospital-a"].client.propose(m)
    for ag in agents.values():
        ag.attest()
        ag.approve(m)
    a = agents["hospital-a"]
    up = ShardUpload(a.client, m.job_id, a.enclave, a.identity, "hospital-a", load_shard(a.data_path, m),
                     chunk_size=2048)
    first = up.send(stop_after=5)  # the connection "drops" after 5 chunks
    assert not first.complete
    status = up.status()
    assert status.known and status.next_index == 5 and status.received_bytes == 5 * 2048
    resumed = up.send()  # picks up at chunk 5, never resending 0..4
    assert resumed.complete and resumed.chunks == up.n_chunks
    agents["hospital-b"].upload(m)
    agents["hospital-c"].upload(m)
    assert a.wait(m.job_id, ("done",), timeout=120) == "done"
    assert a.fetch(m)["model"] == ref_model  # same shards, same seed: bit-identical weights


def test_forged_receipt_fails(cluster):
    m, agents = run_job(cluster, "receipt")
    a = agents["hospital-a"]
    opened = a.fetch(m)
    r = a.client.get_receipt(m.job_id)
    sig_public = a.enclave.sig_public
    verify_receipt(r, sig_public, m.digest(), opened)

    # the receipt's evidence is fresh evidence bound to this job and these outputs
    bundle = EvidenceBundle.from_json(r.evidence)
    nonce = receipt_nonce(m.digest(), output_digest(dict(r.outputs)))
    binding = evidence_binding(nonce, bundle.kem_public, bundle.sig_public, bundle.build.build_digest)
    result = verify(bundle, binding, a.policy)
    assert result.sig_public == sig_public

    forgeries = {
        "signed by another key": dataclasses.replace(
            r, signature=IdentityKey.generate().sign(b"x")),
        "time moved": dataclasses.replace(r, time=r.time + 1),
        "output digest swapped": dataclasses.replace(r, output_digest=bytes(32)),
        "evidence digest swapped": dataclasses.replace(r, evidence_digest=bytes(32)),
        "other job": dataclasses.replace(r, job_digest=bytes(32)),
    }
    for what, forged in forgeries.items():
        with pytest.raises(ReceiptError):
            verify_receipt(forged, sig_public, m.digest(), opened)
            pytest.fail(what)
    # an enclave key nobody attested cannot vouch for the outputs
    with pytest.raises(ReceiptError, match="does not verify"):
        verify_receipt(r, IdentityKey.generate().public_bytes(), m.digest(), opened)
    # outputs that differ from the signed digests
    with pytest.raises(ReceiptError, match="differs"):
        verify_receipt(r, sig_public, m.digest(), {**opened, "model": opened["model"] + b"\0"})
    # a listed output digest changed without re-signing
    bad_list = dataclasses.replace(r, outputs=tuple((n, bytes(32)) for n, _ in r.outputs))
    with pytest.raises(ReceiptError):
        verify_receipt(bad_list, sig_public, m.digest(), opened)
    # an extra entry for an output name put in front of the signed list (the real one further on)
    padded = dataclasses.replace(r, outputs=(("model", bytes(32)), *r.outputs))
    with pytest.raises(ReceiptError, match="twice"):
        verify_receipt(padded, sig_public, m.digest(), opened)
    # the receipt bound to another manifest
    with pytest.raises(ReceiptError, match="another manifest"):
        verify_receipt(r, sig_public, bytes(32), opened)
    # evidence bytes swapped for other evidence
    with pytest.raises(ReceiptError, match="evidence"):
        verify_receipt(dataclasses.replace(r, evidence=r.evidence + b" "), sig_public, m.digest(), opened)
    assert isinstance(a.policy, Policy)


def test_receipt_evidence_is_fresh_and_from_the_attested_enclave(cluster):
    import os

    from mpctrain.attest.measure import sim_measurement
    from mpctrain.party.errors import OutputError
    from mpctrain.party.outputs import verify_receipt_evidence

    m, agents = run_job(cluster, "receipt-evidence")
    a = agents["hospital-a"]
    r = a.client.get_receipt(m.job_id)
    result = verify_receipt_evidence(r, a.enclave, a.policy)
    assert result.cpu.backend == "sim"
    with pytest.raises(OutputError, match="measurement-not-allowed"):
        verify_receipt_evidence(r, a.enclave, cluster.policy(measurement=sim_measurement(b"other")))
    # evidence served for some other nonce, re-signed into a receipt by nobody: the binding does not match
    other = a.client.get_evidence(os.urandom(32)).to_json()
    swapped = dataclasses.replace(r, evidence=other)
    with pytest.raises(OutputError, match="binding-mismatch"):
        verify_receipt_evidence(swapped, a.enclave, a.policy)
    with pytest.raises(OutputError, match="malformed"):
        verify_receipt_evidence(dataclasses.replace(r, evidence=b"{}"), a.enclave, a.policy)
    with pytest.raises(OutputError, match="malformed"):  # stripped of its evidence: no check is skipped
        verify_receipt_evidence(dataclasses.replace(r, evidence=b""), a.enclave, a.policy)
    # genuine evidence, but an enclave other than the one this party attested before uploading
    stale = dataclasses.replace(a.enclave, sig_public=IdentityKey.generate().public_bytes())
    with pytest.raises(OutputError, match="another enclave key"):
        verify_receipt_evidence(r, stale, a.policy)


def test_upload_survives_a_dropped_connection(cluster):
    from mpctrain.party.client import AggregatorClient
    from mpctrain.party.uploader import upload_shard
    from pooled_kit import Relay

    m = cluster.manifest("dropped", parties=["hospital-a", "hospital-b", "hospital-c"], training=FAST_TRAINING,
                         quorum=1)
    a = cluster.agent("hospital-a")
    a.client.propose(m)
    for pid in ("hospital-a", "hospital-b", "hospital-c"):
        ag = cluster.agent(pid)
        ag.attest()
        ag.approve(m)
    a.attest()
    relay = Relay(cluster.aggregator.port, cut_after=20_000)  # the host drops the TCP connection mid-upload
    client = AggregatorClient(f"127.0.0.1:{relay.port}", "hospital-a", a.identity)
    try:
        shard = load_shard(a.data_path, m)
        seen = []
        res = upload_shard(client, m.job_id, a.enclave, a.identity, "hospital-a", shard, chunk_size=2048,
                           progress=lambda done, total: seen.append(done), retries=5)
    finally:
        client.close()
        relay.close()
    assert relay.cuts == 1
    assert res.complete and res.total_size == len(shard)
    assert seen.count(0) == 1 and seen == sorted(seen)  # resumed where it stopped, never from chunk 0
    assert seen[-1] == len(shard)
    assert a.wait(m.job_id, ("done",), timeout=60) == "done"
