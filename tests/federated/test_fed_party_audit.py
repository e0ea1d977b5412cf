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

import grpc
import pytest

from mpctrain.enclave.state import JobState
from mpctrain.party.audit_check import AuditCheckFailed, fetch_audit_log
from mpctrain.party.flower.attestation import attest_enclave
from mpctrain.party.flower.audit import check_federated_audit
from mpctrain.party.flower.sent import SentLogError, SentUpdate, append_sent, read_sent


def _check(job, port, party, sent=None):
    rt = job.runtime(party)
    enclave = attest_enclave(rt.evidence, rt.policy)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        lines = fetch_audit_log(channel, job.manifest.job_id, party_id=rt.party_id, identity=rt.identity)
    return check_federated_audit(lines, runtime=rt, enclave=enclave, sent=rt.sent if sent is None else sent)


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
