"""Every way a host can alter the stored log is detected and located (line, seq, check)."""

from __future__ import annotations

import json
import os

import pytest
from auditkit import Sim, edit, numbered, read, two_segment_log

from mpctrain.attest.sim import SimAttester, SimRoot
from mpctrain.enclave.audit import AuditBroken, AuditLog, AuditWriteError, summarize, verify_log
from mpctrain.enclave.audit.reader import lines_from_bytes, read_lines
from mpctrain.seal.keys import IdentityKey

N = 26  # records of two_segment_log: 14 in segment 0, 12 in segment 1
SEG1 = 14  # index of segment 1's start record


@pytest.fixture(scope="module")
def built(sim: Sim, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    first, second = two_segment_log(path, sim)
    return path, read(path), first, second


def broken(lines: list[bytes], sim: Sim, **kw) -> AuditBroken:
    with pytest.raises(AuditBroken) as info:
        verify_log(numbered(lines), sim.policy(), **kw)
    return info.value


def test_clean_log_verifies_with_both_segments_and_a_summary(built, sim):
    path, lines, first, second = built
    assert len(lines) == N
    report = verify_log(read_lines(path), sim.policy())
    assert [r.seq for _, r in report.records] == list(range(N))
    assert [(s.number, s.line) for s in report.segments] == [(0, 1), (1, SEG1 + 1)]
    assert report.segments[0].sig_public == first.sig.public_bytes()
    assert report.segments[1].sig_public == second.sig.public_bytes()
    assert report.segments[0].measurement == sim.attester.measurement
    assert report.warnings == []
    jobs = summarize(report.records)
    assert set(jobs) == {"job-1", "job-2"}
    j1 = jobs["job-1"]
    assert sorted(j1.consents) == ["a", "b"]
    assert {p: [(e.object_id, e.size) for e in es] for p, es in j1.inputs.items()} == {
        "a": [("shard/a/0", 1000)], "b": [("shard/b/1", 1001)]}
    assert [(e.name, e.size) for e in j1.outputs["a"]] == [("model", 123)]
    assert j1.state == "done" and j1.metrics == {"accuracy": 0.9}


def test_segment_link_and_nonce_follow_the_previous_segment(built):
    _, lines, _, _ = built
    seg1 = json.loads(lines[SEG1])
    stop = json.loads(lines[SEG1 - 1])
    assert seg1["kind"] == "segment.started" and seg1["segment"] == 1
    assert seg1["prev_hash"] == stop["hash"]
    assert json.loads(seg1["fields"]["evidence"])["sig_public"] == seg1["fields"]["sig_public"]


@pytest.mark.parametrize("i", range(N - 1))
def test_deleting_any_record_is_located(built, sim, i):
    _, lines, _, _ = built
    exc = broken(lines[:i] + lines[i + 1:], sim)
    assert (exc.line, exc.seq, exc.check) == (i + 1, i + 1, "sequence")


def test_deleting_the_last_record_is_flagged(built, sim):
    _, lines, _, _ = built
    report = verify_log(numbered(lines[:-1]), sim.policy())
    assert report.warnings and "without aggregator.stopped" in report.warnings[0]


@pytest.mark.parametrize("i", range(N - 1))
def test_swapping_neighbours_is_located(built, sim, i):
    _, lines, _, _ = built
    swapped = list(lines)
    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    exc = broken(swapped, sim)
    assert (exc.line, exc.seq, exc.check) == (i + 1, i + 1, "sequence")


@pytest.mark.parametrize(("i", "field", "value"), [
    (7, "size", 1), (8, "party", "a"), (10, "recipient", "mallory"), (4, "party", "z"), (12, "reason", "fine"),
])
def test_editing_a_field_is_located(built, sim, i, field, value):
    _, lines, _, _ = built
    changed = list(lines)
    changed[i] = edit(lines[i], lambda o: o["fields"].__setitem__(field, value))
    exc = broken(changed, sim)
    assert (exc.line, exc.seq, exc.check) == (i + 1, i, "hash")


def test_edit_with_recomputed_hash_fails_the_signature(built, sim):
    _, lines, _, _ = built
    changed = list(lines)
    changed[7] = edit(lines[7], lambda o: o["fields"].__setitem__("size", 5), rehash=True)
    exc = broken(changed, sim)
    assert (exc.line, exc.seq, exc.check) == (8, 7, "signature")


def test_a_key_that_was_never_attested_cannot_sign_records(built, sim):
    _, lines, _, _ = built
    forger = IdentityKey.generate()
    changed = list(lines)
    changed[10] = edit(lines[10], lambda o: o["fields"].__setitem__("recipient", "mallory"), resign=forger)
    exc = broken(changed, sim)
    assert (exc.line, exc.seq, exc.check) == (11, 10, "signature")
    assert "attested key of segment 0" in str(exc)


def test_whole_forged_segment_under_an_unattested_root_is_refused(built, sim, tmp_path):
    _, lines, _, _ = built
    path = tmp_path / "forged.jsonl"
    path.write_bytes(b"".join(lines[:SEG1]))
    rogue = SimRoot.generate()  # the host's own "vendor": keys it controls, evidence the policy does not pin
    log = AuditLog(path, Sim(rogue, SimAttester(rogue, config_digest=b"\x07" * 32)).enclave())
    log.emit("output.sealed", job_id="job-1", recipient="mallory", name="model", size=1)
    exc = broken(read(path), sim)
    assert (exc.line, exc.seq, exc.check) == (SEG1 + 1, SEG1, "evidence")


def test_segment_naming_other_keys_than_its_evidence_is_refused(built, sim):
    _, lines, _, _second = built
    forger = IdentityKey.generate()
    changed = list(lines)
    changed[SEG1] = edit(lines[SEG1], lambda o: o["fields"].__setitem__("sig_public", forger.public_bytes().hex()),
                         resign=forger)
    exc = broken(changed, sim)
    assert (exc.line, exc.check) == (SEG1 + 1, "evidence")
    assert "other keys" in exc.detail


def test_replacing_a_segment_breaks_the_link(built, sim, tmp_path):
    _, lines, _, _ = built
    other = tmp_path / "other.jsonl"
    two_segment_log(other, sim)
    spliced = lines[:SEG1] + read(other)[SEG1:]
    exc = broken(spliced, sim)
    assert (exc.line, exc.seq, exc.check) == (SEG1 + 1, SEG1, "chain")
    assert "segment link" in exc.detail


def test_relinked_segment_evidence_no_longer_matches_its_nonce(built, sim, tmp_path):
    """A host that relinks a foreign segment (and could re-sign it) still fails: the nonce came from elsewhere."""
    _, lines, _, _ = built
    other = tmp_path / "other.jsonl"
    _, other_second = two_segment_log(other, sim)
    foreign = read(other)[SEG1]
    relinked = edit(foreign, lambda o: o.__setitem__("prev_hash", json.loads(lines[SEG1 - 1])["hash"]),
                    resign=other_second.sig)
    exc = broken([*lines[:SEG1], relinked], sim)
    assert (exc.line, exc.check) == (SEG1 + 1, "evidence")
    assert "nonce" in exc.detail


def test_cut_last_record_is_truncated(built, sim):
    _, lines, _, _ = built
    exc = broken([*lines[:-1], lines[-1][:len(lines[-1]) // 2]], sim)
    assert (exc.line, exc.seq, exc.check) == (N, None, "truncated")


def test_cut_record_in_the_middle_does_not_parse(built, sim):
    _, lines, _, _ = built
    changed = list(lines)
    changed[9] = lines[9][:40] + b"\n"
    exc = broken(changed, sim)
    assert (exc.line, exc.seq, exc.check) == (10, None, "parse")


def test_truncating_the_file_anywhere_is_detected(built, sim):
    path, _, _, _ = built
    blob = path.read_bytes()
    for cut in range(1, len(blob), max(1, len(blob) // 97)):
        part = blob[:cut]
        try:
            report = verify_log(lines_from_bytes(part), sim.policy())
        except AuditBroken as exc:
            assert exc.check in ("truncated", "empty")
            continue
        assert part.endswith(b"\n") and report.warnings, cut  # a cut at a record boundary: the tail is flagged


def test_time_running_backwards_is_located(built, sim):
    _, lines, first, _ = built
    changed = list(lines)
    earlier = json.loads(lines[4])["time_ms"] - 60_000
    changed[5] = edit(lines[5], lambda o: o.__setitem__("time_ms", earlier), resign=first.sig)
    exc = broken(changed, sim)
    assert (exc.line, exc.seq, exc.check) == (6, 5, "time")


def test_job_chain_skip_is_located(built, sim):
    _, lines, first, _ = built
    changed = list(lines)
    changed[6] = edit(lines[6], lambda o: o.__setitem__("job_seq", 7), resign=first.sig)
    exc = broken(changed, sim)
    assert (exc.line, exc.seq, exc.check) == (7, 6, "job-chain")


def test_non_canonical_spacing_is_an_encoding_error(built, sim):
    _, lines, _, _ = built
    changed = list(lines)
    changed[3] = json.dumps(json.loads(lines[3]), sort_keys=True).encode() + b"\n"  # ", " and ": " separators
    exc = broken(changed, sim)
    assert (exc.line, exc.check) == (4, "encoding")


@pytest.mark.parametrize("garbage", [b"", b"not json", b"[1,2]", b'{"seq": 1}', b"\xff\xfe", b"{" * 100000,
                                     b'{"v":1}' + b" " * 10])
def test_garbage_lines_are_parse_errors(built, sim, garbage):
    _, lines, _, _ = built
    changed = list(lines)
    changed[2] = garbage + b"\n"
    exc = broken(changed, sim)
    assert (exc.line, exc.check) == (3, "parse")


def test_oversized_line_is_refused_without_reading_it_whole(built, sim, tmp_path):
    _, lines, _, _ = built
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"".join(lines[:3]) + b'{"x":"' + b"a" * 5_000_000 + b'"}\n' + b"".join(lines[4:]))
    exc = broken([raw for _, raw in read_lines(path)], sim)
    assert (exc.line, exc.check) == (4, "parse")


def test_empty_log(sim):
    exc = broken([], sim)
    assert exc.check == "empty"


def test_evidence_failing_the_policy_is_located(built, sim):
    _, lines, _, _ = built
    with pytest.raises(AuditBroken) as info:
        verify_log(numbered(lines), sim.policy(measurement=b"\x00" * 48))
    exc = info.value
    assert (exc.line, exc.seq, exc.check) == (1, 0, "evidence")
    assert "measurement" in exc.detail


def test_debug_enclave_segment_is_refused(sim, tmp_path):
    path = tmp_path / "debug.jsonl"
    debug = SimAttester(sim.root, config_digest=b"\x07" * 32, debug=True)
    AuditLog(path, sim.enclave(debug)).emit("aggregator.stopped")
    exc = broken(read(path), sim)
    assert (exc.line, exc.check) == (1, "evidence")
    assert "debug" in exc.detail


def test_sidecar_evidence_is_needed_and_then_verifies(sim, tmp_path):
    from mpctrain.cli.audit import load_evidence_files

    path = tmp_path / "audit.jsonl"
    two_segment_log(path, sim, embed_evidence=False)
    exc = broken(read(path), sim)
    assert (exc.line, exc.check) == (1, "evidence") and "--evidence" in exc.detail
    bundles = load_evidence_files([tmp_path / "audit.jsonl.evidence"])
    assert len(bundles) == 2
    report = verify_log(read_lines(path), sim.policy(), evidence=bundles)
    assert len(report.segments) == 2
    assert all("evidence" not in json.loads(raw)["fields"] for raw in read(path))  # digests only


def test_partial_view_verifies_and_detects_a_dropped_job_record(built, sim):
    from mpctrain.enclave.audit_service import job_view

    _, lines, _, _ = built
    view = [raw for raw in lines if job_view("job-1", json.loads(raw)["job_id"], json.loads(raw)["kind"])]
    report = verify_log(numbered(view), sim.policy(), partial=True)
    assert {r.job_id for _, r in report.records} == {None, "job-1"}
    dropped = [raw for raw in view if b'"kind":"shard.accepted"' not in raw or b"shard/b/1" not in raw]
    assert len(dropped) == len(view) - 1
    with pytest.raises(AuditBroken) as info:
        verify_log(numbered(dropped), sim.policy(), partial=True)
    assert info.value.check == "job-chain"


def test_log_refuses_to_extend_a_damaged_file(sim, tmp_path):
    path = tmp_path / "audit.jsonl"
    two_segment_log(path, sim)
    good = path.read_bytes()
    path.write_bytes(good[:-10])
    with pytest.raises(AuditWriteError, match="cut short"):
        AuditLog(path, sim.enclave())
    path.write_bytes(good + b"garbage\n")
    with pytest.raises(AuditWriteError, match="line 27"):
        AuditLog(path, sim.enclave())
    assert path.read_bytes() == good + b"garbage\n"  # never repaired in place


def test_restart_continues_the_sequence_and_starts_job_chains_afresh(sim, tmp_path):
    path = tmp_path / "audit.jsonl"
    first = AuditLog(path, sim.enclave())
    first.emit("job.proposed", job_id="j", digest="ab" * 32)
    first.close()
    second = AuditLog(path, sim.enclave())
    second.emit("job.state", job_id="j", state="failed")
    recs = [json.loads(raw) for raw in read(path)]
    assert [r["seq"] for r in recs] == [0, 1, 2, 3]
    assert [r["segment"] for r in recs] == [0, 0, 1, 1]
    assert (recs[3]["job_seq"], recs[3]["job_prev"]) == (0, "")  # a restarted enclave holds no jobs
    assert second.head == (4, recs[3]["hash"])
    verify_log(read_lines(path), sim.policy())


def test_records_cannot_be_written_as_segment_starts(sim, tmp_path):
    log = AuditLog(tmp_path / "a.jsonl", sim.enclave())
    with pytest.raises(ValueError, match="written by the audit log itself"):
        log.emit("segment.started", sig_public="00")


def test_unwritable_log_is_a_typed_error(sim, tmp_path):
    d = tmp_path / "dir.jsonl"
    d.mkdir()
    with pytest.raises(AuditWriteError):
        AuditLog(d, sim.enclave())



def test_failed_append_stops_the_log_instead_of_leaving_a_gap(sim, tmp_path):
    """The writer appends through its locked descriptor: a failed write there (the disk filled up, here
    /dev/full in its place) stops the log, and records after space came back would leave a gap."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, sim.enclave())
    log.emit("job.proposed", job_id="j", digest="ab" * 32)
    saved = os.dup(log._fd)
    full = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.dup2(full, log._fd)
        with pytest.raises(AuditWriteError, match="cannot append"):
            log.emit("job.state", job_id="j", state="open")
        os.dup2(saved, log._fd)  # space again
    finally:
        os.close(full)
        os.close(saved)
    with pytest.raises(AuditWriteError, match="stopped after a failed write"):
        log.emit("job.state", job_id="j", state="open")
    log.close()
    assert len(verify_log(read_lines(path), sim.policy()).records) == 2


def test_pinned_head_catches_a_cut_tail_and_a_rewrite(built, sim):
    _, lines, _, _ = built
    full = verify_log(numbered(lines), sim.policy())
    head = full.head
    assert head == (N - 1, json.loads(lines[-1])["hash"])
    verify_log(numbered(lines), sim.policy(), expect_head=head)
    exc = broken(lines[:-3], sim, expect_head=head)
    assert (exc.line, exc.seq, exc.check) == (N - 2, N - 1, "truncated")
    exc = broken(lines, sim, expect_head=(5, "00" * 32))
    assert (exc.line, exc.seq, exc.check) == (6, 5, "chain")


def test_job_view_skips_an_older_build_and_trusts_nothing_it_signed(sim, tmp_path):
    from mpctrain.enclave.audit import summarize
    from mpctrain.enclave.audit_service import job_view

    old_build = SimAttester(sim.root, config_digest=b"\x08" * 32)  # another measurement, no longer allowed
    path = tmp_path / "audit.jsonl"
    old = AuditLog(path, sim.enclave(old_build))
    old.emit("evidence.served", backend="sim", gpus=0, evidence_digest="cd" * 32, nonce_digest="ef" * 32)
    old.emit("job.proposed", job_id="job", digest="aa" * 32)
    old.emit("aggregator.stopped")
    old.close()
    new = AuditLog(path, sim.enclave())
    new.emit("job.proposed", job_id="job", digest="bb" * 32)  # the same id after a restart: another job
    lines = read(path)
    view = [raw for raw in lines if job_view("job", json.loads(raw)["job_id"], json.loads(raw)["kind"])]

    exc = broken(lines, sim)  # the auditor's full check: every build that ran must be in the policy
    assert (exc.line, exc.check) == (1, "evidence")
    report = verify_log(numbered(view), sim.policy(), partial=True)
    assert [s.number for s in report.segments] == [1]
    assert [r.kind for _, r in report.records] == ["segment.started", "job.proposed"]
    assert "segment 0 (line 1) is skipped" in report.warnings[0]
    assert summarize(report.records)["job"].manifest_digest == "bb" * 32
    exc = broken(view[:4], sim, partial=True)  # only the old build's records: nothing verifies
    assert (exc.line, exc.seq, exc.check) == (1, 0, "evidence")
    both = type(sim.policy()).from_dict({"backends": ["sim"], "sim": {"roots": [sim.root.sha256], "measurements": [
        sim.attester.measurement.hex(), old_build.measurement.hex()]}})
    jobs = summarize(verify_log(numbered(lines), both).records)
    assert {k: v.manifest_digest[:2] for k, v in jobs.items()} == {"job": "aa", "job@1": "bb"}


def test_evidence_is_checked_at_the_segment_time_unless_told(built, sim):
    from datetime import UTC, datetime, timedelta

    from mpctrain.enclave.events import EventSink

    _, lines, _, _ = built
    assert isinstance(AuditLog.__new__(AuditLog), EventSink)
    verify_log(numbered(lines), sim.policy())  # years from now this still holds: certificates at segment time
    exc = broken(lines, sim, at=datetime.now(UTC) + timedelta(days=3650))
    assert (exc.line, exc.check) == (1, "evidence")
