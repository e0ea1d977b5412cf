"""A real pooled run over loopback gRPC: the log verifies, parties check their job, canaries never appear."""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
from pathlib import Path

import grpc
import pandas as pd
import pytest
from auditkit import edit, numbered

from mpctrain.enclave.audit import AuditRecord, lines_from_bytes, read_lines, summarize, verify_log
from mpctrain.enclave.auth import auth_metadata
from mpctrain.enclave.events import MemoryEventSink
from mpctrain.enclave.server import Aggregator
from mpctrain.party.audit_check import (
    AuditCheckFailed,
    JobView,
    SentInput,
    check_job_audit,
    confirm_job,
    fetch_audit_log,
    fetch_job_view,
)
from mpctrain.party.errors import PermissionDenied
from mpctrain.seal.keys import IdentityKey
from mpctrain.sim.cluster import EXAMPLE, SimCluster

PARTIES = ("hospital-a", "hospital-b", "hospital-c")
TRAINING = {"epochs": 2, "batch_size": 64, "lr": 0.01, "seed": 7, "val_fraction": 0.2}
CANARIES = (31337.0625, 27182.8125, 16180.3398)


def _patterns(value: float) -> list[bytes]:
    out = [f"{value}".encode(), f"{value:.4f}".encode()]
    for fmt in ("<f", ">f", "<d", ">d"):
        out.append(struct.pack(fmt, value))
    f32 = struct.unpack("<f", struct.pack("<f", value))[0]
    return [*out, struct.pack("<d", f32), f"{f32}".encode(), struct.pack("<f", value).hex().encode()]


CANARY_BYTES = [p for v in CANARIES for p in _patterns(v)]


@dataclasses.dataclass
class Run:
    cluster: SimCluster
    manifest: object
    agents: dict
    log_path: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("audit-cluster")
    data = {}
    for pid in PARTIES:
        data[pid] = work / f"{pid}.csv"
        shutil.copy(EXAMPLE / "data" / f"{pid}.csv", data[pid])
    df = pd.read_csv(data["hospital-b"])
    for row, col in ((0, "mean_radius"), (1, "worst_area"), (2, "mean_texture")):
        df.loc[row, col] = CANARIES[row]
    df.to_csv(data["hospital-b"], index=False)
    c = SimCluster(work / "cluster", researchers=("researcher",), events=MemoryEventSink())
    with c:
        m = c.manifest("audit-job", parties=[*PARTIES, "researcher"], training=TRAINING,
                       recipients=["hospital-a", "researcher"])
        agents = {p: c.agent(p, data=data[p]) for p in PARTIES}
        agents["hospital-a"].client.propose(m)
        for ag in agents.values():
            ag.attest()
            ag.approve(m)
        for ag in agents.values():
            ag.upload(m)
        # wait() reports "done" only after the party's own audit check passed
        assert agents["hospital-b"].wait(m.job_id, ("done",), timeout=120) == "done"
        with pytest.raises(PermissionDenied):  # an unknown job: the same answer as a job of others
            agents["hospital-c"].client.upload_status("no-such-job", "x")  # a signed call refused: recorded
        yield Run(c, m, agents, c.workdir / "audit.jsonl")


def test_log_fetched_over_grpc_is_the_stored_log_and_verifies(run):
    lines = _fetch(run)
    stored = run.log_path.read_bytes()
    assert b"".join(raw for _, raw in lines) == stored
    assert [n for n, _ in lines] == list(range(1, len(lines) + 1))
    report = verify_log(lines, run.cluster.policy())
    assert report.segments[0].sig_public == run.agents["hospital-a"].enclave.sig_public
    assert report.segments[0].measurement == run.cluster.attester.measurement


def test_summary_shows_consents_inputs_and_outputs(run):
    report = verify_log(read_lines(run.log_path), run.cluster.policy())
    job = summarize(report.records)["audit-job"]
    assert job.manifest_digest == run.manifest.digest().hex()
    assert sorted(job.consents) == sorted(PARTIES)
    for pid, ag in run.agents.items():
        (sent,) = ag.sent["audit-job"]
        (entry,) = job.inputs[pid]
        assert (entry.object_id, entry.size) == (sent.object_id, sent.size)
        assert len(sent.header_digest) == 64 and entry.digest == sent.header_digest  # the exact ciphertext
    started = {r.fields["object_id"]: r.fields["header_digest"] for _, r in report.records if r.kind == "shard.started"}
    assert all(started[e.object_id] == e.digest for es in job.inputs.values() for e in es)
    assert sorted(job.outputs) == ["hospital-a", "researcher"]
    assert {e.name for e in job.outputs["researcher"]} == {"model", "metrics"}
    assert job.state == "done" and set(job.metrics) <= {"accuracy", "auc"}


def test_job_view_over_grpc_holds_only_that_job_and_its_context(run):
    view = _fetch(run, "audit-job")
    kinds = {(json.loads(raw)["job_id"], json.loads(raw)["kind"]) for _, raw in view}
    assert {k for j, k in kinds if j is None} <= {"segment.started", "evidence.served", "aggregator.started"}
    assert {j for j, _ in kinds} == {None, "audit-job"}
    verify_log(view, run.cluster.policy(), partial=True)


def test_rejection_is_recorded_with_caller_and_no_payload(run):
    recs = [AuditRecord.from_line(raw[:-1]) for _, raw in read_lines(run.log_path)]
    (rej,) = [r for r in recs if r.kind == "rejected" and "no-such-job" in r.fields.get("reason", "")]
    assert rej.fields["caller"] == "hospital-c" and rej.fields["code"] == "PERMISSION_DENIED"
    assert set(rej.fields) == {"method", "code", "reason", "caller"}


def test_canaries_planted_in_party_data_never_reach_the_log(run):
    blob = run.log_path.read_bytes()
    assert b'"kind":"shard.accepted"' in blob  # the shards went in ...
    assert [p for p in CANARY_BYTES if p in blob] == []  # ... none of their values did


def test_every_party_check_passes_on_the_real_log(run):
    for pid, ag in run.agents.items():
        job = confirm_job(ag.client.channel, manifest=run.manifest, party_id=pid, identity=ag.identity,
                          enclave=ag.enclave, policy=ag.policy, sent=ag.sent["audit-job"])
        assert pid in job.inputs


def _fetch(run: Run, job_id: str = "", pid: str = "hospital-a") -> list[tuple[int, bytes]]:
    ag = run.agents[pid]
    return fetch_audit_log(ag.client.channel, job_id, party_id=pid, identity=ag.identity)


def _view(run: Run, pid: str = "hospital-a") -> JobView:
    ag = run.agents[pid]
    return fetch_job_view(ag.client.channel, "audit-job", party_id=pid, identity=ag.identity,
                          evidence=[ag.enclave.evidence_digest])


def _check(run: Run, view, pid: str = "hospital-a", **kw):
    """Check ``view``; a plain list of lines (edited by the test) is held against the real, fresh head."""
    if not isinstance(view, JobView):
        view = dataclasses.replace(_view(run, pid), lines=view)
    ag = run.agents[pid]
    args = dict(manifest=run.manifest, party_id=pid, enclave=ag.enclave, policy=ag.policy, sent=ag.sent["audit-job"])
    args.update(kw)
    return check_job_audit(view, **args)


def _raws(run: Run) -> list[bytes]:
    return [raw for _, raw in _view(run).lines]


def _signed_head(view: JobView, key, **change) -> JobView:
    """``view`` with its head changed as given and signed again by ``key``."""
    assert view.head is not None
    return dataclasses.replace(view, head=dataclasses.replace(view.head, **change).signed(key))


def test_party_check_catches_a_dropped_shard_record(run):
    view = _raws(run)
    mine = run.agents["hospital-a"].sent["audit-job"][0].object_id
    dropped = [raw for raw in view if not (b'"shard.accepted"' in raw and mine.encode() in raw)]
    with pytest.raises(AuditCheckFailed) as info:
        _check(run, numbered(dropped))
    assert info.value.check == "log:job-chain"


def _deep(depth: int):
    return lambda raw: raw.replace(b'"fields":{', b'"fields":{"a":' + b"[" * depth + b"]" * depth + b",", 1)


@pytest.mark.parametrize(("forge", "check"), [
    (lambda raw: edit(raw, lambda o: o.__setitem__("time_ms", 10**17), rehash=True), "log:time"),
    (lambda raw: edit(raw, lambda o: o.__setitem__("time_ms", 10**400), rehash=True), "log:time"),
    (_deep(900), "log:parse"),
    (_deep(990), "log:parse"),
], ids=["time-1e17", "time-1e400", "depth-900", "depth-990"])
def test_party_check_turns_crafted_lines_into_a_failed_check(run, forge, check):
    view = _raws(run)
    view[0] = forge(view[0])
    with pytest.raises(AuditCheckFailed) as info:
        _check(run, numbered(view))
    assert info.value.check == check


@pytest.mark.parametrize("cut_at", ['"training.started"', '"output.sealed"', "last"])
def test_party_check_catches_a_view_cut_short(run, cut_at):
    """The host relays the stream and drops its end: every record it keeps verifies, the job chain has no
    gap, but the view no longer reaches the head the enclave signed for this request."""
    view = _raws(run)
    cut = len(view) - 1 if cut_at == "last" else next(i for i, raw in enumerate(view) if cut_at.encode() in raw)
    assert b'"job_id":"audit-job"' in view[-1]  # the dropped tail holds job records
    with pytest.raises(AuditCheckFailed, match="stops before its head") as info:
        _check(run, numbered(view[:cut]))
    assert info.value.check == "head"


def test_party_check_requires_done_even_at_an_honest_head(run):
    """A head the enclave signed before the job was done (all records there): the state check still fails."""
    full = _view(run)
    cut = next(i for i, (_, raw) in enumerate(full.lines) if b'"training.started"' in raw)
    last = AuditRecord.from_line(full.lines[cut - 1][1][:-1])
    early = _signed_head(dataclasses.replace(full, lines=full.lines[:cut]), run.cluster.aggregator.identity.sig,
                         job_seq=last.job_seq, hash=last.hash)
    with pytest.raises(AuditCheckFailed) as info:
        _check(run, early)
    assert info.value.check == "state"


def test_party_check_passes_on_the_untouched_view_and_its_head(run):
    view = _view(run)
    assert view.head is not None and len(view.nonce) == 32 and view.head.nonce == view.nonce
    assert view.head.job_seq == AuditRecord.from_line(view.lines[-1][1][:-1]).job_seq  # taken as the call came
    assert _check(run, view).state == "done"


def test_party_check_needs_a_head_from_the_attested_enclave_for_its_own_nonce(run):
    view = _view(run)
    key = run.cluster.aggregator.identity.sig
    cases = {
        "no signed head": dataclasses.replace(view, head=None),  # dropped by the host, or an old aggregator
        "not signed by the enclave key": _signed_head(view, IdentityKey.generate()),
        "another request": dataclasses.replace(_view(run), head=view.head),  # replayed from an earlier call
        "names job 'other-job'": _signed_head(view, key, job_id="other-job"),
        "in segment 1": _signed_head(view, key, segment=1),
        "restarted since": _signed_head(view, key, job_seq=None, hash=""),
        "stops before its head": _signed_head(view, key, hash="00" * 32),
        r"segment 9223372036854775808, outside 0\.\.2\*\*63-1": dataclasses.replace(
            view, head=dataclasses.replace(view.head, segment=2**63)),  # the wire's uint64 allows it
        r"job_seq 18446744073709551615, outside": dataclasses.replace(
            view, head=dataclasses.replace(view.head, job_seq=2**64 - 1)),
        r"job_seq -2, outside": dataclasses.replace(view, head=dataclasses.replace(view.head, job_seq=-2)),
    }
    for needle, bad in cases.items():
        with pytest.raises(AuditCheckFailed, match=needle) as info:
            _check(run, bad)
        assert info.value.check == "head"


@pytest.mark.parametrize(("sent", "needle"), [
    ([SentInput("shard/hospital-a/feedface", 10)], "not recorded"),
    ("size", "records"),
    ([], "never sent"),
    ("digest", "digest differs"),
])
def test_party_check_compares_inputs_with_what_it_sent(run, sent, needle):
    real = run.agents["hospital-a"].sent["audit-job"][0]
    if sent == "size":
        sent = [dataclasses.replace(real, size=real.size + 1)]
    elif sent == "digest":
        sent = [dataclasses.replace(real, header_digest="00" * 32)]
    with pytest.raises(AuditCheckFailed, match=needle) as info:
        _check(run, _view(run), sent=sent)
    assert info.value.check == "inputs"


def test_party_check_refuses_another_manifest(run):
    other = run.cluster.manifest("audit-job", parties=[*PARTIES, "researcher"], training={**TRAINING, "epochs": 9})
    with pytest.raises(AuditCheckFailed) as info:
        _check(run, _view(run), manifest=other)
    assert info.value.check == "manifest"


def test_party_check_refuses_keys_it_did_not_attest(run):
    ag = run.agents["hospital-a"]
    forged = dataclasses.replace(ag.enclave, sig_public=b"\x01" * 32)
    with pytest.raises(AuditCheckFailed) as info:
        _check(run, _view(run), enclave=forged)
    assert info.value.check == "keys"
    unserved = dataclasses.replace(ag.enclave, evidence_digest=b"\x02" * 32)
    with pytest.raises(AuditCheckFailed) as info:
        _check(run, _view(run), enclave=unserved)
    assert info.value.check == "evidence"


def test_party_check_applies_the_party_policy_to_the_log(run):
    with pytest.raises(AuditCheckFailed) as info:
        _check(run, _view(run), policy=run.cluster.policy(measurement=b"\x00" * 48))
    assert info.value.check == "log:evidence"


def test_party_check_catches_outputs_to_a_non_recipient(run):
    """An enclave (or a signed record) sealing to someone outside the manifest's recipients is refused."""
    view = _view(run).lines
    last = AuditRecord.from_line(view[-1][1][:-1])
    job_last = next(AuditRecord.from_line(raw[:-1]) for _, raw in reversed(view) if b'"job_id":"audit-job"' in raw)
    extra = AuditRecord(seq=last.seq + 1, segment=last.segment, time_ms=last.time_ms, kind="output.sealed",
                        prev_hash=last.hash, fields={"recipient": "hospital-b", "name": "model", "size": 1},
                        job_id="audit-job", job_seq=(job_last.job_seq or 0) + 1, job_prev=job_last.hash,
                        ).signed(run.cluster.aggregator.identity.sig)
    lines = [*view, (len(view) + 1, extra.to_line())]
    with pytest.raises(AuditCheckFailed, match="hospital-b") as info:
        _check(run, lines)
    assert info.value.check == "outputs"


def test_agent_does_not_report_done_when_the_log_disagrees(run):
    ag = run.agents["hospital-c"]
    ag.sent["audit-job"].append(SentInput("shard/hospital-c/never-accepted", 5))
    try:
        with pytest.raises(AuditCheckFailed):
            ag.wait("audit-job", ("done",), timeout=30)
    finally:
        ag.sent["audit-job"].pop()


def test_fetch_refusals_are_typed(run, sim, tmp_path):
    ag = run.agents["hospital-a"]
    with pytest.raises(AuditCheckFailed) as info:
        fetch_audit_log(ag.client.channel, "x" * 300, party_id="hospital-a", identity=ag.identity)
    assert info.value.check == "fetch" and "INVALID_ARGUMENT" in str(info.value)
    plain = Aggregator(sim.enclave(), events=MemoryEventSink())
    plain.start()
    try:
        with grpc.insecure_channel(plain.target) as ch, pytest.raises(AuditCheckFailed, match="UNIMPLEMENTED"):
            fetch_audit_log(ch, party_id="hospital-a", identity=ag.identity)
    finally:
        plain.stop(grace=0)


def test_restarted_aggregator_opens_a_linked_segment(sim, tmp_path):
    path = tmp_path / "audit.jsonl"
    auditor = IdentityKey.generate()
    for _ in range(2):
        agg = Aggregator(sim.enclave(), events=MemoryEventSink(), audit_log=path,
                         auditors={"auditor": auditor.public_bytes()})
        agg.start()
        with grpc.insecure_channel(agg.target) as ch:
            served = fetch_audit_log(ch, party_id="auditor", identity=auditor)
        agg.stop(grace=0)
    assert served[-1][1] in path.read_bytes()
    report = verify_log(read_lines(path), sim.policy())
    kinds = [r.kind for _, r in report.records]
    assert kinds == ["segment.started", "aggregator.started", "aggregator.stopped"] * 2
    assert len(report.segments) == 2 and report.warnings == []
    assert report.segments[1].sig_public != report.segments[0].sig_public
    assert len(lines_from_bytes(path.read_bytes())) == 6


def test_record_being_appended_is_held_back(sim, tmp_path):
    path = tmp_path / "audit.jsonl"
    auditor = IdentityKey.generate()
    agg = Aggregator(sim.enclave(), events=MemoryEventSink(), audit_log=path,
                     auditors={"auditor": auditor.public_bytes()})
    agg.start()
    try:
        with path.open("ab") as f:
            f.write(b'{"fields":{},"hash":"')  # a writer caught half-way
        with grpc.insecure_channel(agg.target) as ch:
            served = fetch_audit_log(ch, party_id="auditor", identity=auditor)
        assert [n for n, _ in served] == [1, 2]
        verify_log(served, sim.policy())
    finally:
        agg.stop(grace=0)


def test_log_of_a_run_stays_small(run):
    """Metadata only: a whole 3-party run (evidence included) is a few tens of KB, shard records ~1 KB each."""
    sizes = [(len(raw), json.loads(raw)["kind"]) for _, raw in read_lines(run.log_path)]
    assert sum(s for s, _ in sizes) < 40_000
    assert max(s for s, k in sizes if k != "segment.started") < 1_000
    shard = sum(s for s, k in sizes if k.startswith("shard."))
    assert shard / len(PARTIES) < 2_000


def test_incremental_fetch_from_a_sequence_number(run):
    from mpctrain.enclave.audit_service import GET_LOG
    from mpctrain.enclave.auth import auth_metadata
    from mpctrain.wire import audit_pb2, audit_pb2_grpc

    ag = run.agents["hospital-a"]
    stub = audit_pb2_grpc.AuditStub(ag.client.channel)

    def get(req):
        return list(stub.GetLog(req, metadata=auth_metadata(ag.identity, "hospital-a", GET_LOG, req), timeout=10))

    full = get(audit_pb2.GetLogRequest())
    tail = get(audit_pb2.GetLogRequest(from_seq=5))
    assert [r.line for r in tail] == [r.line for r in full][5:]
    assert json.loads(tail[0].data)["seq"] == 5


def test_cli_cross_checks_evidence_a_party_attested_itself(run, sim, tmp_path):
    import os

    from typer.testing import CliRunner

    from mpctrain.cli.main import app

    ag = run.agents["hospital-b"]
    served = ag.client.get_evidence(os.urandom(32))  # recorded as evidence.served
    unserved = run.cluster.aggregator.identity.evidence(os.urandom(32))  # same keys, never served
    foreign = sim.enclave().evidence(os.urandom(32))  # another enclave's keys
    pol = run.cluster.policy()
    policy = tmp_path / "policy.toml"
    policy.write_text(f'backends = ["sim"]\n[sim]\nroots = ["{pol.backend("sim").roots[0]}"]\n'
                      f'measurements = ["{run.cluster.attester.measurement.hex()}"]\n')
    files = {}
    for name, bundle in (("served", served), ("unserved", unserved), ("foreign", foreign)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_bytes(bundle.to_json())

    def verify(*names: str):
        args = ["audit", "verify", str(run.log_path), "--policy", str(policy)]
        for n in names:
            args += ["--evidence", str(files[n])]
        return CliRunner().invoke(app, args)

    ok = verify("served")
    assert ok.exit_code == 0, ok.output
    assert f"evidence {served.digest().hex()[:16]}…: keys of segment 0, served at seq" in ok.output
    res = verify("served", "unserved")
    assert res.exit_code == 1 and "not recorded as served" in res.output
    res = verify("foreign")
    assert res.exit_code == 1 and "not those of any verified segment" in res.output


def test_a_partys_job_view_keeps_only_its_own_served_evidence(run):
    """Anyone may ask for evidence, and every answer is recorded; a party's job view is narrowed to the
    evidence it was served itself, so strangers' requests cannot grow it (or push it past the fetch cap)."""
    from mpctrain.wire import attestation_pb2, attestation_pb2_grpc, audit_pb2, audit_pb2_grpc

    stub = attestation_pb2_grpc.AttestationStub(run.agents["hospital-a"].client.channel)
    for i in range(4):
        stub.GetEvidence(attestation_pb2.GetEvidenceRequest(nonce=bytes([i]) * 32), timeout=10)
    ag = run.agents["hospital-a"]
    mine = ag.enclave.evidence_digest.hex()

    def served(view):
        return [json.loads(raw)["fields"]["evidence_digest"] for _, raw in view
                if json.loads(raw)["kind"] == "evidence.served"]

    everything = served(_fetch(run, "audit-job"))
    assert len(everything) >= 4 + len(PARTIES) and mine in everything
    narrowed = fetch_audit_log(ag.client.channel, "audit-job", party_id="hospital-a", identity=ag.identity,
                               evidence=[ag.enclave.evidence_digest])
    assert served(narrowed) == [mine]
    verify_log(narrowed, run.cluster.policy(), partial=True)
    job = confirm_job(ag.client.channel, manifest=run.manifest, party_id="hospital-a", identity=ag.identity,
                      enclave=ag.enclave, policy=ag.policy, sent=ag.sent["audit-job"])
    assert job.state == "done"

    audit = audit_pb2_grpc.AuditStub(ag.client.channel)
    for req, why in ((audit_pb2.GetLogRequest(job_id="audit-job", evidence_digests=["a" * 64] * 17), "at most 16"),
                     (audit_pb2.GetLogRequest(evidence_digests=[mine]), "set job_id")):
        md = auth_metadata(ag.identity, "hospital-a", "/mpctrain.v1.Audit/GetLog", req)
        with pytest.raises(grpc.RpcError) as err:
            list(audit.GetLog(req, metadata=md, timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and why in err.value.details()


@pytest.mark.parametrize(("field", "value"), [("segment", 2**63), ("job_seq", 2**63), ("job_seq", 2**64 - 1)])
def test_a_head_with_numbers_no_enclave_signs_is_a_failed_head_check(field, value):
    """A host answering GetLog itself sends a head whose uint64 does not fit the signed 8-byte encoding:
    fetching it fails the head check, typed, instead of raising a packing error."""
    from concurrent import futures

    from mpctrain.wire import audit_pb2, audit_pb2_grpc

    class ForgingHost(audit_pb2_grpc.AuditServicer):
        def GetLog(self, request, context):
            head = audit_pb2.JobHead(job_id=request.job_id, segment=0, job_seq=0, hash="00" * 32,
                                     nonce=request.head_nonce, signature=bytes(64))
            setattr(head, field, value)
            yield audit_pb2.AuditRecord(line=1, data=b"{}\n")
            yield audit_pb2.AuditRecord(head=head)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    audit_pb2_grpc.add_AuditServicer_to_server(ForgingHost(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(AuditCheckFailed) as info:
            fetch_job_view(channel, "audit-job", party_id="hospital-a", identity=IdentityKey.generate(), timeout=10)
        assert info.value.check == "head" and f"{field} {value}, outside 0..2**63-1" in str(info.value)
    finally:
        server.stop(0)


def test_a_head_is_asked_for_one_job_with_a_32_byte_nonce(run):
    from mpctrain.wire import audit_pb2, audit_pb2_grpc

    ag = run.agents["hospital-a"]
    audit = audit_pb2_grpc.AuditStub(ag.client.channel)
    for req in (audit_pb2.GetLogRequest(job_id="audit-job", head_nonce=b"\x01" * 31),
                audit_pb2.GetLogRequest(head_nonce=b"\x01" * 32)):
        md = auth_metadata(ag.identity, "hospital-a", "/mpctrain.v1.Audit/GetLog", req)
        with pytest.raises(grpc.RpcError) as err:
            list(audit.GetLog(req, metadata=md, timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "head_nonce" in err.value.details()
    with pytest.raises(ValueError, match="job_id"):
        fetch_job_view(ag.client.channel, "", party_id="hospital-a", identity=ag.identity)
