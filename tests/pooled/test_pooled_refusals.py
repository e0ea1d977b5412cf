"""Each refusal fails the way a user would want: typed error, clear status, nothing leaked or started."""

from __future__ import annotations

import time

import pytest

from mpctrain.attest.measure import sim_measurement
from mpctrain.enclave.auth import auth_metadata
from mpctrain.jobs import Consent, sign_consent
from mpctrain.party.client import AggregatorClient
from mpctrain.party.errors import (
    AlreadyExists,
    AttestationRefused,
    FailedPrecondition,
    InvalidArgument,
    ManifestRejected,
    OutputError,
    PartyError,
    PermissionDenied,
    Unauthenticated,
)
from mpctrain.party.outputs import open_output
from mpctrain.party.rules import PartyRules
from mpctrain.party.uploader import ShardUpload
from mpctrain.seal.keys import IdentityKey, KemKey
from mpctrain.wire import jobs_pb2
from pooled_kit import FAST_TRAINING, run_job

UPLOAD = "/mpctrain.v1.Data/UploadShard"


def _propose(cluster, job_id, **kw):
    kw.setdefault("training", FAST_TRAINING)
    kw.setdefault("parties", ["hospital-a", "hospital-b", "hospital-c"])
    m = cluster.manifest(job_id, **kw)
    cluster.agent(m.proposer).client.propose(m)
    return m


def _open_job(cluster, job_id, **kw):
    """A job every data party approved; returns the manifest and attested agents."""
    m = _propose(cluster, job_id, **kw)
    agents = {p.id: cluster.agent(p.id) for p in m.data_parties()}
    for ag in agents.values():
        ag.attest()
        ag.approve(m)
    return m, agents


def test_wrong_measurement_gets_no_data_at_all(cluster, counter):
    m = _propose(cluster, "wrong-measurement")
    other = sim_measurement(b"another aggregator config")
    agent = cluster.agent("hospital-b", policy=cluster.policy(measurement=other))
    uploads_before = counter.counts[UPLOAD]
    approvals_before = counter.counts["/mpctrain.v1.Jobs/ApproveJob"]
    with pytest.raises(AttestationRefused) as err:
        agent.attest()
    assert err.value.check == "measurement-not-allowed"
    assert "measurement" in str(err.value)
    with pytest.raises(PartyError, match="attest the aggregator first"):
        agent.upload(m)
    with pytest.raises(PartyError, match="attest the aggregator first"):
        agent.approve(m)
    assert counter.counts[UPLOAD] == uploads_before  # the server never saw an upload call
    assert counter.counts["/mpctrain.v1.Jobs/ApproveJob"] == approvals_before


def test_job_pinning_another_measurement_is_not_approved(cluster):
    other = sim_measurement(b"another aggregator config")
    m = _propose(cluster, "job-pins-other", enclave_policy=cluster.enclave_policy(measurement=other))
    agent = cluster.agent("hospital-a")
    agent.attest()
    with pytest.raises(ManifestRejected, match="measurement"):
        agent.approve(m)
    assert agent.client.get_job(m.job_id).consented == []


def test_local_rules_refuse_unwanted_recipient(cluster):
    m = _propose(cluster, "rules-recipient", parties=["hospital-a", "hospital-b", "hospital-c", "researcher"],
                 recipients=["researcher"])
    agent = cluster.agent("hospital-c", rules=PartyRules(allowed_recipients=("hospital-a", "hospital-b",
                                                                             "hospital-c")))
    agent.attest()
    with pytest.raises(ManifestRejected, match="researcher"):
        agent.approve(m)


def test_party_outside_the_manifest_is_rejected(cluster):
    m = _propose(cluster, "two-party", parties=["hospital-a", "hospital-b"])
    # hospital-c is known to the aggregator (other jobs name it) but not in this job
    c = cluster.agent("hospital-c")
    if "c-known" not in {j.job_id for j in cluster.aggregator.store.list()}:
        c.client.propose(cluster.manifest("c-known", parties=["hospital-c"]))  # a job names it: it is known
    c.attest()
    with pytest.raises(PermissionDenied, match="not named by job 'two-party'"):
        c.client.approve(Consent(m.job_id, "hospital-c", m.digest(), b"\0" * 64))
    with pytest.raises(PermissionDenied):
        c.client.upload_status(m.job_id, "shard/x")
    # a stranger nobody ever named is unauthenticated
    stranger = AggregatorClient(cluster.target, "mallory", IdentityKey.generate())
    with pytest.raises(Unauthenticated, match="unknown party"):
        stranger.upload_status(m.job_id, "shard/x")
    # a stranger claiming a known id but signing with its own key is unauthenticated too
    impostor = AggregatorClient(cluster.target, "hospital-a", IdentityKey.generate())
    with pytest.raises(Unauthenticated, match="does not verify"):
        impostor.upload_status(m.job_id, "shard/x")
    # a researcher may not give data consent
    r = cluster.manifest("with-researcher", parties=["hospital-a", "researcher"])
    cluster.agent("hospital-a").client.propose(r)
    res = cluster.agent("researcher")
    with pytest.raises(PermissionDenied, match="role"):
        res.client.approve(Consent(r.job_id, "researcher", r.digest(), b"\0" * 64))


def test_job_missing_one_consent_never_starts(cluster):
    m = _propose(cluster, "missing-consent")
    agents = {p: cluster.agent(p) for p in ("hospital-a", "hospital-b", "hospital-c")}
    for p in ("hospital-a", "hospital-b"):
        agents[p].attest()
        agents[p].approve(m)
    status = agents["hospital-a"].client.get_job(m.job_id)
    assert status.state == "proposed"
    assert list(status.missing_consents) == ["hospital-c"]
    with pytest.raises(FailedPrecondition, match="missing: hospital-c"):
        agents["hospital-a"].upload(m)
    # a consent over another digest does not count either
    bad = sign_consent(m, "hospital-c", cluster.parties["hospital-c"].identity)
    forged = Consent(bad.job_id, bad.party_id, bytes(32), bad.signature)
    with pytest.raises(InvalidArgument, match="consent refused"):
        agents["hospital-c"].client.approve(forged)
    status = agents["hospital-a"].client.get_job(m.job_id)
    assert status.state == "proposed" and not status.uploaded
    kinds = [k for k, f in cluster.events.events if f.get("job_id") == m.job_id]
    assert "training.started" not in kinds


def test_tampered_chunk_rejected_and_acknowledged_chunks_kept(cluster):
    m, agents = _open_job(cluster, "tamper")
    a = agents["hospital-a"]
    from mpctrain.party.agent import load_shard

    shard = load_shard(a.data_path, m)
    up = ShardUpload(a.client, m.job_id, a.enclave, a.identity, "hospital-a", shard, chunk_size=4096)
    res = up.send(stop_after=3)
    assert not res.complete and up.status().next_index == 3

    def tampered(start):
        from mpctrain.wire import data_pb2

        frame = bytearray(up.frame(start))
        frame[10] ^= 1
        yield data_pb2.UploadChunk(index=start, frame=bytes(frame), last=False)

    with pytest.raises(InvalidArgument, match="TamperedChunk"):
        list(a.client.upload(m.job_id, up.header, tampered))
    st = up.status()
    assert st.known and st.next_index == 3 and not st.complete  # earlier acknowledgements stay
    res = up.send()
    assert res.complete
    assert up.status().complete


def test_replayed_upload_header_is_rejected(cluster):
    m, agents = _open_job(cluster, "replay", quorum=3)
    a = agents["hospital-a"]
    from mpctrain.party.agent import load_shard

    shard = load_shard(a.data_path, m)
    up = ShardUpload(a.client, m.job_id, a.enclave, a.identity, "hospital-a", shard)
    assert up.send().complete
    with pytest.raises(AlreadyExists, match="replayed header"):
        list(a.client.upload(m.job_id, up.header, lambda s: iter(())))
    # a fresh stream for the same party and job is a duplicate shard
    again = ShardUpload(a.client, m.job_id, a.enclave, a.identity, "hospital-a", shard)
    with pytest.raises(AlreadyExists, match="already uploaded"):
        again.send()
    # a replayed request (same signed metadata) is refused before anything else
    req = jobs_pb2.ApproveJobRequest(job_id=m.job_id, party_id="hospital-b")
    md = auth_metadata(agents["hospital-b"].identity, "hospital-b", "/mpctrain.v1.Jobs/ApproveJob", req)
    stub = agents["hospital-b"].client.jobs
    import grpc

    from mpctrain.party.errors import from_rpc_error

    with pytest.raises(grpc.RpcError) as first:
        stub.ApproveJob(req, metadata=md, timeout=5)
    assert first.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # authenticated, consent invalid
    with pytest.raises(grpc.RpcError) as second:
        stub.ApproveJob(req, metadata=md, timeout=5)
    assert isinstance(from_rpc_error(second.value), Unauthenticated)
    assert "replayed" in second.value.details()


def test_stale_header_is_rejected(cluster):
    m, agents = _open_job(cluster, "stale")
    b = agents["hospital-b"]
    from mpctrain.enclave.identity import ENCLAVE_ID
    from mpctrain.seal.stream import StreamSealer

    sealer = StreamSealer(sender=b.identity, sender_id="hospital-b",
                          recipients=[(ENCLAVE_ID, b.enclave.kem_alg, b.enclave.kem_public)], purpose="shard",
                          job_id=m.job_id, object_id="shard/old", total_size=10, created=int(time.time()) - 7200)
    with pytest.raises(FailedPrecondition, match="StaleStream"):
        list(b.client.upload(m.job_id, sealer.header_bytes, lambda s: iter(())))


def test_shard_sealed_to_another_key_is_refused(cluster):
    m, agents = _open_job(cluster, "wrong-key")
    b = agents["hospital-b"]
    from mpctrain.enclave.identity import ENCLAVE_ID
    from mpctrain.seal.stream import StreamSealer

    rogue = KemKey.generate()
    sealer = StreamSealer(sender=b.identity, sender_id="hospital-b",
                          recipients=[(ENCLAVE_ID, rogue.alg, rogue.public_bytes())], purpose="shard",
                          job_id=m.job_id, object_id="shard/rogue", total_size=10)
    with pytest.raises(InvalidArgument, match="WrongRecipient"):
        list(b.client.upload(m.job_id, sealer.header_bytes, lambda s: iter(())))
    # a header signed by another party's key than the caller's
    c = cluster.parties["hospital-c"]
    sealer = StreamSealer(sender=c.identity, sender_id="hospital-b",
                          recipients=[(ENCLAVE_ID, b.enclave.kem_alg, b.enclave.kem_public)], purpose="shard",
                          job_id=m.job_id, object_id="shard/spoof", total_size=10)
    with pytest.raises(PermissionDenied, match="UnexpectedSender"):
        list(b.client.upload(m.job_id, sealer.header_bytes, lambda s: iter(())))
    with pytest.raises(InvalidArgument, match="MalformedStream"):
        list(b.client.upload(m.job_id, b"garbage" * 10, lambda s: iter(())))


def test_outputs_open_for_recipients_only(cluster, monkeypatch):
    m, agents = run_job(cluster, "recipients-only", recipients=["hospital-a"])
    a, b = agents["hospital-a"], agents["hospital-b"]
    assert set(a.fetch(m)) == {"model", "metrics"}
    with pytest.raises(PermissionDenied, match="not a recipient"):
        b.fetch(m)
    with pytest.raises(PermissionDenied, match="not a recipient"):
        b.client.fetch_output(m.job_id, "hospital-a", "model")  # asking for another's copy
    header, frames = a.client.fetch_output(m.job_id, "hospital-a", "model")
    with pytest.raises(OutputError, match="WrongRecipient"):  # even with the bytes, b's key opens nothing
        open_output(header, frames, recipient_id="hospital-a", kem=b.kem, enclave_sig_public=a.enclave.sig_public,
                    job_id=m.job_id, name="model")
    frames[0] = (frames[0][0], frames[0][1][:-1] + bytes([frames[0][1][-1] ^ 1]), frames[0][2])
    with pytest.raises(OutputError, match="TamperedChunk"):
        open_output(header, frames, recipient_id="hospital-a", kem=a.kem, enclave_sig_public=a.enclave.sig_public,
                    job_id=m.job_id, name="model")
    with pytest.raises(OutputError, match="ContextMismatch"):  # the metrics stream offered as the model
        h2, f2 = a.client.fetch_output(m.job_id, "hospital-a", "metrics")
        open_output(h2, f2, recipient_id="hospital-a", kem=a.kem, enclave_sig_public=a.enclave.sig_public,
                    job_id=m.job_id, name="model")
    with pytest.raises(OutputError, match="UnexpectedSender"):  # signed by another key than the attested one
        open_output(header, frames, recipient_id="hospital-a", kem=a.kem,
                    enclave_sig_public=IdentityKey.generate().public_bytes(), job_id=m.job_id, name="model")
    monkeypatch.setattr("mpctrain.party.client.MAX_OUTPUT_BYTES", 100)
    with pytest.raises(OutputError, match="larger than the client's limit"):
        a.client.fetch_output(m.job_id, "hospital-a", "model")


def test_new_header_replaces_an_unfinished_upload(cluster):
    m, agents = _open_job(cluster, "restart")
    a = agents["hospital-a"]
    from mpctrain.party.agent import load_shard

    shard = load_shard(a.data_path, m)
    lost = ShardUpload(a.client, m.job_id, a.enclave, a.identity, "hospital-a", shard, chunk_size=4096)
    assert not lost.send(stop_after=2).complete  # the party restarts and loses its sealer
    fresh = ShardUpload(a.client, m.job_id, a.enclave, a.identity, "hospital-a", shard, chunk_size=4096)
    assert fresh.send().complete
    assert not lost.status().known  # the abandoned partial shard was wiped, not kept beside the new one
    kinds = [k for k, f in cluster.events.events if f.get("job_id") == m.job_id]
    assert "shard.replaced" in kinds


def test_duplicate_object_id_is_rejected(cluster):
    m, agents = _open_job(cluster, "dup-object")
    a, b = agents["hospital-a"], agents["hospital-b"]
    from mpctrain.party.agent import load_shard

    first = ShardUpload(a.client, m.job_id, a.enclave, a.identity, "hospital-a", load_shard(a.data_path, m),
                        chunk_size=4096, object_id="shard/shared-name")
    assert not first.send(stop_after=1).complete
    again = ShardUpload(a.client, m.job_id, a.enclave, a.identity, "hospital-a", load_shard(a.data_path, m),
                        chunk_size=4096, object_id="shard/shared-name")
    with pytest.raises(AlreadyExists, match="already holds another upload"):
        again.send()
    other = ShardUpload(b.client, m.job_id, b.enclave, b.identity, "hospital-b", load_shard(b.data_path, m),
                        chunk_size=4096, object_id="shard/shared-name")
    with pytest.raises(AlreadyExists, match="already holds another upload"):
        other.send()
    assert first.send().complete  # the original stream is unaffected and completes


def test_shard_with_declared_parts_is_refused(cluster):
    m, agents = _open_job(cluster, "parts-shard")
    b = agents["hospital-b"]
    from mpctrain.enclave.identity import ENCLAVE_ID
    from mpctrain.seal.stream import StreamSealer

    sealer = StreamSealer(sender=b.identity, sender_id="hospital-b",
                          recipients=[(ENCLAVE_ID, b.enclave.kem_alg, b.enclave.kem_public)], purpose="shard",
                          job_id=m.job_id, object_id="shard/parts", parts=[4, 6])
    with pytest.raises(InvalidArgument, match="equal chunks"):
        list(b.client.upload(m.job_id, sealer.header_bytes, lambda s: iter(())))


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0), (2, 1, 0)])
def test_output_frames_in_any_order_open_to_the_sealed_bytes(order):
    """A relay may deliver an output's chunks out of order (each keeps its authenticated index): they are
    placed by index, never concatenated as they come."""
    from mpctrain.enclave.outputs import seal_for
    from mpctrain.seal.keys import IdentityKey, KemKey

    class Enclave:
        sig = IdentityKey.generate()

    kem = KemKey.generate()
    data = b"A" * 8 + b"B" * 8 + b"C" * 3
    sealed = seal_for(Enclave, "job1", "hospital-a", kem.alg, kem.public_bytes(), "model", data, chunk_size=8)
    frames = [(i, f, i == len(sealed.frames) - 1) for i, f in enumerate(sealed.frames)]
    out = open_output(sealed.header, [frames[i] for i in order], recipient_id="hospital-a", kem=kem,
                      enclave_sig_public=Enclave.sig.public_bytes(), job_id="job1", name="model")
    assert out == data
    with pytest.raises(OutputError, match="does not open"):  # one missing: cut, not silently shorter
        open_output(sealed.header, [frames[i] for i in order if i != 1], recipient_id="hospital-a", kem=kem,
                    enclave_sig_public=Enclave.sig.public_bytes(), job_id="job1", name="model")


def test_approve_and_upload_reveal_no_job_ids(cluster):
    """An unknown job id and a job that does not name the caller get the same answer on every call."""
    cluster.agent("hospital-a").client.propose(cluster.manifest("secret-merger", parties=["hospital-a"]))
    c = cluster.agent("hospital-c")
    c.client.propose(cluster.manifest("c-own-job", parties=["hospital-c"]))  # a job names it: it is known
    answers = {}
    for job_id in ("secret-merger", "no-such-job"):
        with pytest.raises(PermissionDenied) as approve:
            c.client.approve(Consent(job_id, "hospital-c", b"\0" * 32, b"\0" * 64))
        with pytest.raises(PermissionDenied) as status:
            c.client.upload_status(job_id, "shard/x")
        answers[job_id] = (str(approve.value).replace(job_id, "J"), str(status.value).replace(job_id, "J"))
    assert answers["secret-merger"] == answers["no-such-job"]
