"""A bank's audit check of a federated job, end to end over loopback gRPC.

The aggregator (real gRPC server, audit log on disk, federated runner on its job store) runs the job once
every consent is in; each bank attests it over ``GetEvidence`` (so the evidence it verified is recorded),
its mod notes every sealed reply, and afterwards it fetches its job's view of the log and holds it against
that note.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from concurrent import futures

import grpc
import pytest

from mpctrain.enclave.state import JobState
from mpctrain.party.audit_check import AuditCheckFailed, fetch_job_view
from mpctrain.party.flower.attestation import attest_enclave
from mpctrain.party.flower.audit import check_federated_audit
from mpctrain.party.flower.sent import SentLogError, SentUpdate, append_sent, read_sent
from mpctrain.wire import audit_pb2, audit_pb2_grpc


def _check(job, port, party, sent=None):
    rt = job.runtime(party)
    enclave = attest_enclave(rt.evidence, rt.policy)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        view = fetch_job_view(channel, job.manifest.job_id, party_id=rt.party_id, identity=rt.identity,
                              evidence=[enclave.evidence_digest])
    return check_federated_audit(view, runtime=rt, enclave=enclave, sent=rt.sent if sent is None else sent)


Edit = Callable[[list[audit_pb2.AuditRecord]], list[audit_pb2.AuditRecord]]


class Relay(audit_pb2_grpc.AuditServicer):
    """The host between bank and enclave: passes the signed request on and edits the stream coming back."""

    def __init__(self, target: str, edit: Edit) -> None:
        self.target, self.edit = target, edit

    def GetLog(self, request, context):
        md = [(k, v) for k, v in context.invocation_metadata() if k.startswith("x-mpctrain-")]
        with grpc.insecure_channel(self.target) as ch:
            got = list(audit_pb2_grpc.AuditStub(ch).GetLog(request, metadata=md, timeout=30))
        yield from self.edit(got)


def _relayed(port: int, edit: Edit):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    audit_pb2_grpc.add_AuditServicer_to_server(Relay(f"127.0.0.1:{port}", edit), server)
    relay_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, relay_port


def _cut_after_first(kind: str) -> Edit:
    """Drop the job's records after its first ``kind`` record; keep the job-less ones (the evidence served
    for this very check among them) and the head, which the host cannot forge."""
    def edit(msgs):
        cut = next(i for i, m in enumerate(msgs) if f'"kind":"{kind}"'.encode() in m.data) + 1
        return [m for i, m in enumerate(msgs) if i < cut or m.HasField("head") or json.loads(m.data)["job_id"] is None]
    return edit


def test_a_view_the_host_cut_short_fails_the_head_check(served):
    """Federated jobs never reach done: without the signed head, a view cut right after the run started
    passes (the bank's updates read as merely "not on record"), hiding whatever came later."""
    job, agg, port, start = served
    start(job.consents)
    agg.store.join(timeout=120)
    bank = job.parties[0]
    headless: Edit = lambda msgs: [m for m in msgs if not m.HasField("head")]  # noqa: E731
    for name, edit, needle in (("untouched", lambda msgs: msgs, None),
                               ("cut", _cut_after_first("fl.training_started"), "stops before its head"),
                               ("cut", _cut_after_first("fl.update_accepted"), "stops before its head"),
                               ("headless", headless, "no signed head")):
        server, relay_port = _relayed(port, edit)
        try:
            if needle is None:
                report = _check(job, relay_port, bank)
                assert len(report.accepted) == 4 and report.not_accepted == []
                continue
            with pytest.raises(AuditCheckFailed, match=needle) as err:
                _check(job, relay_port, bank)
            assert err.value.check == "head", name
        finally:
            server.stop(0)


def test_each_bank_finds_exactly_its_updates_on_record(served):
    job, agg, port, start = served
    stored = start(job.consents)
    agg.store.join(timeout=120)
    assert stored.state == JobState.DONE
    for party in job.parties:
        rt = job.runtime(party)
        assert len(rt.sent) == 4  # 2 rounds x (train + evaluate)
        report = _check(job, port, party)
        assert sorted(u.object_id for u in report.accepted) == sorted(u.object_id for u in rt.sent)
        assert report.not_accepted == [] and report.summary.rounds == 2
        assert report.summary.trained_manifests == [job.manifest.digest().hex()]


def test_an_update_on_record_that_the_bank_never_sent_fails_the_check(served):
    job, agg, port, start = served
    start(job.consents)
    agg.store.join(timeout=120)
    bank = job.parties[0]
    sent = list(job.runtime(bank).sent)
    with pytest.raises(AuditCheckFailed, match="never sent") as err:
        _check(job, port, bank, sent=sent[1:])
    assert err.value.check == "inputs"
    other = dataclasses.replace(sent[0], ciphertext_digest="00" * 32)
    with pytest.raises(AuditCheckFailed, match="another sealed update"):
        _check(job, port, bank, sent=[other, *sent[1:]])
    bigger = dataclasses.replace(sent[0], size=sent[0].size + 1)
    with pytest.raises(AuditCheckFailed, match="another sealed update"):
        _check(job, port, bank, sent=[bigger, *sent[1:]])
    # a reply that never reached the enclave (or came too late) is reported, not failed
    lost = dataclasses.replace(sent[0], object_id="res:feedface:" + bank.id)
    report = _check(job, port, bank, sent=[*sent, lost])
    assert report.not_accepted == [lost] and len(report.accepted) == len(sent)
    # a note written twice under one id (an older version answered replays): the record must match one of them
    report = _check(job, port, bank, sent=[*sent, other])
    assert len(report.accepted) == len(sent) and report.not_accepted == []


def test_the_head_still_comes_while_a_record_is_being_appended(served):
    """A last line without its newline is held back from the view; the head, taken before it, still ends it."""
    job, agg, port, start = served
    start(job.consents)
    agg.store.join(timeout=120)
    rt = job.runtime(job.parties[0])
    enclave = attest_enclave(rt.evidence, rt.policy)
    with agg.audit.path.open("ab") as f:
        f.write(b'{"fields":{},"hash":"')  # a writer caught half-way
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        view = fetch_job_view(channel, job.manifest.job_id, party_id=rt.party_id, identity=rt.identity,
                              evidence=[enclave.evidence_digest])
    assert view.head is not None and all(raw.endswith(b"\n") for _, raw in view.lines)
    assert len(check_federated_audit(view, runtime=rt, enclave=enclave, sent=rt.sent).accepted) == 4


def test_a_job_that_never_ran_fails_the_rounds_check(served):
    job, _agg, port, start = served
    start(job.consents[:1])  # one consent of three: the rounds never start
    with pytest.raises(AuditCheckFailed) as err:
        _check(job, port, job.parties[0])
    assert err.value.check == "rounds"


def test_the_sent_note_is_private_and_strict(tmp_path):
    path = tmp_path / "jobs" / "j" / "sent.jsonl"
    a = SentUpdate("j", 1, "res:aa:bank-a", 100, "ab" * 32)
    b = SentUpdate("other", 1, "res:bb:bank-a", 100, "cd" * 32)
    append_sent(path, a)
    append_sent(path, b)
    assert os.stat(path).st_mode & 0o077 == 0
    assert read_sent(path, "j") == [a] and read_sent(path, "other") == [b]
    assert read_sent(tmp_path / "missing.jsonl", "j") == []
    with path.open("a") as f:
        f.write(json.dumps({"job_id": "j", "object_id": "x"}) + "\n")
    with pytest.raises(SentLogError, match="line 3"):
        read_sent(path, "j")
    path.write_bytes(b"\xff\xfe not json\n")
    with pytest.raises(SentLogError, match="line 1"):
        read_sent(path, "j")


def test_an_oversized_sent_note_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import mpctrain.party.flower.sent as sent_mod

    path = tmp_path / "sent.jsonl"
    append_sent(path, SentUpdate("j", 1, "res:aa:bank-a", 100, "ab" * 32))
    monkeypatch.setattr(sent_mod, "MAX_SENT_FILE_BYTES", 16)
    with pytest.raises(SentLogError, match="over 16 bytes"):
        read_sent(path, "j")


def test_a_profile_runtime_notes_each_reply_in_its_job_dir(served, tmp_path):
    job, agg, port, start = served
    bank = job.parties[1]
    rt = job.runtime(bank)
    rt.sent_log = tmp_path / "bank" / "jobs" / job.manifest.job_id / "sent.jsonl"
    start(job.consents)
    agg.store.join(timeout=120)
    noted = read_sent(rt.sent_log, job.manifest.job_id)
    assert noted == rt.sent and len(noted) == 4
    assert _check(job, port, bank, sent=noted).not_accepted == []


def test_a_replayed_instruction_is_not_answered_twice(sim_root, sim_attester, tmp_path):
    """The host forwards a bank's reply, then relays the same instruction again: the bank refuses the replay
    (it would otherwise seal a second reply under the same object id, and the host could let the enclave's log
    be held against the copy it dropped). The audit then passes on the one reply sent."""
    from contextlib import nullcontext

    from fedkit import build_job, initial_arrays, toy_app
    from flwr.app import Message

    from mpctrain.enclave.federated.runner import FederatedRunner
    from mpctrain.enclave.server import Aggregator
    from mpctrain.party.flower import ConfidentialMod
    from mpctrain.party.flower.attestation import GrpcEvidenceSource

    job = build_job(sim_root, sim_attester, n=2, rounds=1)
    victim = job.parties[0]
    replays: list[Message] = []

    class HostReplays(ConfidentialMod):
        def __call__(self, msg, context, call_next):
            first = super().__call__(msg, context, call_next)
            replays.append(super().__call__(msg, context, call_next))
            return first

    agg = Aggregator(job.enclave, audit_log=tmp_path / "audit.jsonl")
    port = agg.start()
    try:
        grid = job.grid(lambda p, i: toy_app(0.1 * (i + 1), 10 + i, mod=(HostReplays if p is victim else
                                                                         ConfidentialMod)(job.runtime(p))))
        agg.store.runners["federated"] = FederatedRunner(job.enclave, agg.events, grid_for=lambda j: nullcontext(grid),
                                                         initial_arrays=lambda j, g: initial_arrays())
        for p in job.parties:
            job.runtime(p).evidence = GrpcEvidenceSource(f"127.0.0.1:{port}")
        stored = agg.store.add(job.manifest, job.manifest.to_bytes())
        for c in job.consents:
            agg.store.add_consent(stored, c)
        agg.store.join(timeout=120)
        assert stored.state == JobState.DONE
        assert len(replays) == 2  # train and evaluate, each relayed twice
        assert all(r.has_error() and "already answered" in r.error.reason for r in replays)
        ids = [u.object_id for u in job.runtime(victim).sent]
        assert len(ids) == 2 == len(set(ids))
        report = _check(job, port, victim)
        assert len(report.accepted) == 2 and report.not_accepted == []
    finally:
        agg.stop()


def test_a_reply_noted_by_an_earlier_process_is_not_sealed_again(served, tmp_path):
    """A stock SuperNode runs each message in a fresh process: the sent note on disk is what remembers."""
    job, *_ = served
    rt = job.runtime(job.parties[0])
    rt.sent_log = tmp_path / "sent.jsonl"
    append_sent(rt.sent_log, SentUpdate(job.manifest.job_id, 1, "res:abc:bank-a", 10, "00" * 32))
    assert rt.claim_reply("res:abc:bank-a") is False
    assert rt.claim_reply("res:def:bank-a") is True
    assert rt.claim_reply("res:def:bank-a") is False  # claimed in this process, before its note is written
