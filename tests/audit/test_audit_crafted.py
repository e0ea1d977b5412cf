"""Crafted lines (absurd times, deep nesting, a planted last line) fail typed, never crash a verifier or the log."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from auditkit import edit, numbered, read, two_segment_log

from mpctrain.enclave.audit import AuditBroken, AuditLog, AuditRecord, AuditWriteError, RecordFormatError, verify_log
from mpctrain.enclave.audit import record as record_module
from mpctrain.enclave.audit.record import MAX_DEPTH, MAX_TIME_MS, sanitize


@pytest.fixture(scope="module")
def lines(sim, tmp_path_factory):
    path = tmp_path_factory.mktemp("crafted") / "audit.jsonl"
    two_segment_log(path, sim)
    return read(path)


def _nested(depth: int) -> bytes:
    """A record line whose ``fields`` hold ``depth`` nested lists (hash and signature are garbage)."""
    body = AuditRecord(seq=0, segment=0, time_ms=0, kind="segment.started", prev_hash="", hash="00" * 32,
                       sig="00" * 64).to_line()[:-1]
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    return body.replace(b'"fields":{}', b'"fields":{"a":' + inner + b"}")


@pytest.mark.parametrize("time_ms", [MAX_TIME_MS + 1, 10**17, 10**400], ids=["year-10000", "1e17", "1e400"])
@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("index", [0, 5])
def test_a_time_after_the_year_9999_is_a_time_failure(lines, sim, time_ms, partial, index):
    forged = list(lines)
    forged[index] = edit(lines[index], lambda o: o.__setitem__("time_ms", time_ms), rehash=True)
    with pytest.raises(AuditBroken) as info:
        verify_log(numbered(forged), sim.policy(), partial=partial)
    assert (info.value.check, info.value.line) == ("time", index + 1)


def test_the_latest_allowed_time_is_still_a_datetime():
    line = AuditRecord(seq=0, segment=0, time_ms=MAX_TIME_MS, kind="k", prev_hash="", hash="00" * 32,
                       sig="00" * 64).to_line()[:-1]
    assert AuditRecord.from_line(line).time_ms == MAX_TIME_MS
    assert datetime.fromtimestamp(MAX_TIME_MS / 1000, UTC).year == 9999


@pytest.mark.parametrize("name", ["seq", "segment", "job_seq"])
def test_counters_beyond_2_to_the_53_do_not_parse(lines, name):
    obj = json.loads(lines[2])
    assert obj["job_id"] is not None
    obj[name] = 1 << 64
    with pytest.raises(RecordFormatError) as info:
        AuditRecord.from_line(record_module.canonical_json(obj))
    assert info.value.check == "parse"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 900, 989, 990, 991, 995])
def test_fields_nested_too_deep_are_a_parse_failure(sim, depth):
    with pytest.raises(AuditBroken) as info:
        verify_log([(1, _nested(depth) + b"\n")], sim.policy())
    assert info.value.check == "parse"


def test_nesting_too_deep_to_reencode_is_typed(monkeypatch):
    monkeypatch.setattr(record_module, "MAX_DEPTH", 10**6)  # without the cap the re-encoding must still not crash
    failures = []
    for depth in range(600, 1300):  # json.loads accepts a little deeper than json.dumps re-encodes
        try:
            AuditRecord.from_line(_nested(depth))
        except RecordFormatError as exc:
            failures.append((exc.check, str(exc)))
    assert any(check == "encoding" and "recursion" in msg for check, msg in failures)


def test_the_deepest_fields_the_log_writes_still_parse(sim, tmp_path):
    deep: list = []
    for _ in range(20):
        deep = [deep, {"k": deep}]
    log = AuditLog(tmp_path / "a.jsonl", sim.enclave())
    log.emit("fl.round_aggregated", job_id="j", nested={"x": deep}, other=sanitize(deep))
    verify_log(numbered(read(tmp_path / "a.jsonl")), sim.policy())


def _plant(path, **change) -> bytes:
    """A last line the host wrote itself (a valid hash unless ``hash`` is given)."""
    rec = AuditRecord(seq=0, segment=0, time_ms=int(time.time() * 1000), kind="aggregator.stopped", prev_hash="",
                      sig="00" * 64)
    rec = AuditRecord(**{**rec.__dict__, **change})
    if "hash" not in change:
        rec = AuditRecord(**{**rec.__dict__, "hash": rec.compute_hash()})
    path.write_bytes(rec.to_line())
    return path.read_bytes()


@pytest.mark.parametrize(("change", "message"), [
    ({"hash": "00" * 32}, "does not match its hash"),
    ({"time_ms": 10**17}, "year 9999"),
    ({"time_ms": int(time.time() * 1000) + 10 * 365 * 86_400_000}, "after this machine's clock"),
])
def test_log_refuses_to_extend_a_planted_last_record(sim, tmp_path, change, message):
    path = tmp_path / "audit.jsonl"
    planted = _plant(path, **change)
    with pytest.raises(AuditWriteError, match=message) as info:
        AuditLog(path, sim.enclave())
    assert "move it aside" in str(info.value)
    assert path.read_bytes() == planted  # nothing signed after it


def test_a_last_record_slightly_ahead_of_the_clock_is_extended(sim, tmp_path):
    path = tmp_path / "audit.jsonl"
    ahead = int(time.time() * 1000) + 3_600_000  # an hour: clocks of two machines differ
    _plant(path, time_ms=ahead)
    AuditLog(path, sim.enclave()).emit("aggregator.stopped")
    assert all(json.loads(raw)["time_ms"] >= ahead for raw in read(path)[1:])


def test_fetch_stops_buffering_past_its_byte_limit(monkeypatch):
    from mpctrain.party import audit_check
    from mpctrain.seal.keys import IdentityKey
    from mpctrain.wire import audit_pb2

    sent = []

    class Stub:  # a relaying host streaming records of 1 MiB each, far fewer than MAX_FETCH_RECORDS
        def __init__(self, channel):
            pass

        def GetLog(self, request, metadata=None, timeout=None):
            for i in range(100):
                sent.append(i)
                yield audit_pb2.AuditRecord(line=i + 1, data=b"x" * (1 << 20))

    monkeypatch.setattr(audit_check.audit_pb2_grpc, "AuditStub", Stub)
    monkeypatch.setattr(audit_check, "MAX_FETCH_BYTES", 8 << 20)
    with pytest.raises(audit_check.AuditCheckFailed, match="more than 8 MiB") as info:
        audit_check.fetch_audit_log(None, "job-1", party_id="a", identity=IdentityKey.generate())
    assert info.value.check == "fetch" and len(sent) == 9
