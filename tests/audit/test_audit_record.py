"""Record model: metadata-only fields, canonical bytes, strict parsing; any changed byte fails verification."""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pytest
from auditkit import numbered, read, two_segment_log
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpctrain.enclave.audit import AuditBroken, AuditLog, AuditRecord, RecordFormatError, verify_log
from mpctrain.enclave.audit.record import MAX_STR, canonical_json, sanitize


def test_sanitize_keeps_metadata_and_reduces_payloads_to_digests():
    blob = b"\x01" * 1000
    assert sanitize(blob) == {"sha256": hashlib.sha256(blob).hexdigest(), "size": 1000}
    assert sanitize(b"\xab" * 32) == "ab" * 32  # a digest stays a digest
    assert sanitize("x" * 5000) == "x" * MAX_STR
    assert sanitize(float("nan")) == "nan" and sanitize(float("inf")) == "inf"
    assert sanitize({"a": [1, 2.5, None, True], "b": {"c": b"\x00"}}) == {"a": [1, 2.5, None, True], "b": {"c": "00"}}
    assert sanitize({3, 1, 2}) == [1, 2, 3]
    assert sanitize(object()) == "object"
    deep: list = []
    for _ in range(10):
        deep = [deep]
    assert "list" in json.dumps(sanitize(deep))
    assert sanitize(np.float32(0.5)) == 0.5 and sanitize(np.zeros(3)) == "ndarray"


def test_emit_stores_no_payload_bytes(sim, tmp_path):
    secret = b"patient 42: diagnosis malignant " * 10
    log = AuditLog(tmp_path / "a.jsonl", sim.enclave())
    log.emit("shard.accepted", job_id="j", party="a", plaintext=secret, rows=[secret], size=len(secret))
    blob = (tmp_path / "a.jsonl").read_bytes()
    assert b"patient" not in blob and secret.hex().encode() not in blob
    assert hashlib.sha256(secret).hexdigest().encode() in blob


def test_canonical_json_is_compact_sorted_ascii():
    assert canonical_json({"b": 1, "a": "é"}) == b'{"a":"\\u00e9","b":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_record_roundtrip_and_signature(sim):
    key = sim.enclave().sig
    rec = AuditRecord(seq=3, segment=1, time_ms=5, kind="job.state", prev_hash="aa" * 32, fields={"state": "done"},
                      job_id="j", job_seq=0).signed(key)
    again = AuditRecord.from_line(rec.to_line()[:-1])
    assert again == rec and again.compute_hash() == rec.hash
    again.verify_signature(key.public_bytes())


@pytest.mark.parametrize(("change", "check"), [
    (lambda o: o.__setitem__("v", 2), "parse"),
    (lambda o: o.__setitem__("seq", -1), "parse"),
    (lambda o: o.__setitem__("seq", True), "parse"),
    (lambda o: o.__setitem__("kind", ""), "parse"),
    (lambda o: o.__setitem__("fields", []), "parse"),
    (lambda o: o.__setitem__("job_seq", 0), "parse"),  # job chain on a record without a job
    (lambda o: o.__setitem__("prev_hash", "zz" * 32), "parse"),
    (lambda o: o.__setitem__("sig", "ab"), "parse"),
    (lambda o: o.__setitem__("extra", 1), "parse"),
    (lambda o: o.pop("hash"), "parse"),
])
def test_from_line_rejects_malformed_records(sim, change, check):
    rec = AuditRecord(seq=0, segment=0, time_ms=1, kind="k", prev_hash="").signed(sim.enclave().sig)
    obj = json.loads(rec.to_line())
    change(obj)
    with pytest.raises(RecordFormatError) as info:
        AuditRecord.from_line(canonical_json(obj))
    assert info.value.check == check


def test_non_finite_numbers_are_not_canonical():
    line = b'{"fields":{"x":1e999},"hash":"' + b"0" * 64 + b'","job_id":null,"job_prev":"","job_seq":null,' \
           b'"kind":"k","prev_hash":"","segment":0,"seq":0,"sig":"' + b"0" * 128 + b'","time_ms":1,"v":1}'
    with pytest.raises(RecordFormatError) as info:
        AuditRecord.from_line(line)
    assert info.value.check == "encoding"


@pytest.fixture(scope="module")
def small_log(sim, tmp_path_factory):
    path = tmp_path_factory.mktemp("prop") / "audit.jsonl"
    two_segment_log(path, sim)
    return read(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_changed_byte_fails_verification(small_log, sim, data):
    i = data.draw(st.integers(0, len(small_log) - 1), label="line")
    line = bytearray(small_log[i])
    pos = data.draw(st.integers(0, len(line) - 2), label="byte")  # keep the newline: a cut is tested elsewhere
    new = data.draw(st.integers(0, 255).filter(lambda b: b != line[pos] and b != 0x0A), label="value")
    line[pos] = new
    lines = list(small_log)
    lines[i] = bytes(line)
    with pytest.raises(AuditBroken) as info:
        verify_log(numbered(lines), sim.policy())
    assert info.value.line == i + 1


def test_concurrent_emitters_keep_one_contiguous_chain(sim, tmp_path):
    log = AuditLog(tmp_path / "a.jsonl", sim.enclave())

    def work(t: int) -> None:
        for k in range(40):
            log.emit("shard.chunk_rejected", job_id=f"job-{t % 3}", party=f"p{t}", index=k, reason="TamperedChunk")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = verify_log(numbered(read(tmp_path / "a.jsonl")), sim.policy())
    assert len(report.records) == 1 + 6 * 40


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                     | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4), max_leaves=12)
_KEYS = ("v", "seq", "segment", "time_ms", "kind", "job_id", "job_seq", "job_prev", "prev_hash", "fields", "hash",
         "sig")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obj=st.fixed_dictionaries({k: _json for k in _KEYS}) | _json)
def test_arbitrary_json_is_a_typed_failure(small_log, sim, obj):
    lines = [*small_log[:2], canonical_json(obj) + b"\n", *small_log[3:]]
    with pytest.raises(AuditBroken) as info:
        verify_log(numbered(lines), sim.policy())
    assert info.value.line == 3 and info.value.check in ("parse", "encoding", "hash")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["job.proposed", "job.consent", "shard.accepted", "output.sealed", "fl.output_sealed",
                             "training.finished", "fl.round_aggregated", "job.state", "receipt.signed"]),
       fields=st.dictionaries(st.sampled_from(["party", "parties", "recipients", "recipient", "size", "round",
                                               "metrics", "state", "digest", "object_id"]), _json, max_size=6))
def test_summary_of_odd_but_signed_fields_never_crashes(sim, kind, fields):
    from mpctrain.enclave.audit import render, summarize

    rec = AuditRecord(seq=0, segment=0, time_ms=1, kind=kind, prev_hash="", fields=sanitize(fields), job_id="j",
                      job_seq=0)
    for summary in summarize([(1, rec)]).values():
        assert render(summary)[0].startswith("job j")
        json.dumps(summary.to_json_obj())



def test_job_head_is_the_jobs_last_record_in_this_segment_signed_for_the_nonce(sim, tmp_path):
    """A restarted enclave holds none of the old segments' jobs: its head says so instead of pointing back."""
    from mpctrain.enclave.audit import HEAD_DOMAIN
    from mpctrain.seal.errors import BadSignature
    from mpctrain.seal.sign import verify_fields

    path = tmp_path / "audit.jsonl"
    first, second = two_segment_log(path, sim)  # job-1 in segment 0, job-2 in segment 1
    restarted = sim.enclave()
    log = AuditLog(path, restarted)  # segment 2
    nonce = b"\x05" * 32
    for job in ("job-1", "job-2"):
        head = log.job_head(job, nonce)
        assert (head.segment, head.job_seq, head.hash, head.nonce) == (2, None, "", nonce)
        head.verify(restarted.sig.public_bytes())
    log.emit("job.proposed", job_id="job-2", digest="ab" * 32, mode="pooled", proposer="b", parties=["b"])
    log.emit("job.state", job_id="job-2", state="open")
    last = AuditRecord.from_line(read(path)[-1][:-1])
    head = log.job_head("job-2", nonce)
    assert (head.segment, head.job_seq, head.hash) == (2, 1, last.hash)
    verify_fields(restarted.sig.public_bytes(), head.signature, HEAD_DOMAIN, "job-2", 2, 1, last.hash, nonce)
    for key in (first, second):
        with pytest.raises(BadSignature):
            head.verify(key.sig.public_bytes())
