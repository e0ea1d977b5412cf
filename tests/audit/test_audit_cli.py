"""`mpctrain audit verify|fetch`: exit codes, the precise location of a broken record, the per-job summary."""

from __future__ import annotations

import json

import pytest
from auditkit import edit, read, two_segment_log
from typer.testing import CliRunner

from mpctrain.cli.main import app
from mpctrain.enclave.audit import AuditLog
from mpctrain.enclave.events import MemoryEventSink
from mpctrain.enclave.server import Aggregator
from mpctrain.seal.keys import IdentityKey


@pytest.fixture
def files(sim, tmp_path):
    log = tmp_path / "audit.jsonl"
    two_segment_log(log, sim)
    policy = tmp_path / "policy.toml"
    policy.write_text(f'backends = ["sim"]\n[sim]\nroots = ["{sim.root.sha256}"]\n'
                      f'measurements = ["{sim.attester.measurement.hex()}"]\n')
    return log, policy


def invoke(*args: str):
    return CliRunner().invoke(app, ["audit", *args])


def test_verify_prints_segments_and_per_job_summary(files):
    log, policy = files
    res = invoke("verify", str(log), "--policy", str(policy))
    assert res.exit_code == 0, res.output
    out = res.output
    assert out.startswith("OK 26 records in 2 segment(s); head 25:")
    assert "job job-1 (segment 0, pooled) state=done" in out and "job job-2 (segment 1, pooled) state=done" in out
    assert "consents: a, b" in out
    assert "input  a: 1000 bytes, object shard/a/0" in out
    assert "output a: model, 123 bytes" in out


def test_verify_json_for_one_job(files):
    log, policy = files
    res = invoke("verify", str(log), "--policy", str(policy), "--json", "--job", "job-2")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["ok"] and list(doc["jobs"]) == ["job-2"] and len(doc["segments"]) == 2
    assert doc["jobs"]["job-2"]["inputs"]["c"][0]["size"] == 1001


def test_verify_reports_the_first_broken_record(files):
    log, policy = files
    lines = read(log)
    lines[7] = edit(lines[7], lambda o: o["fields"].__setitem__("size", 1))
    log.write_bytes(b"".join(lines))
    res = invoke("verify", str(log), "--policy", str(policy), "--json")
    assert res.exit_code == 1
    assert json.loads(res.output) | {"error": ""} == {"ok": False, "line": 8, "seq": 7, "check": "hash", "error": ""}
    res = invoke("verify", str(log), "--policy", str(policy))
    assert res.exit_code == 1 and "line 8, seq 7 [hash]" in res.output


@pytest.mark.parametrize("bad", ["policy", "evidence", "at", "log"])
def test_usage_errors_exit_2(files, tmp_path, bad):
    log, policy = files
    args = ["verify", str(log), "--policy", str(policy)]
    if bad == "policy":
        (tmp_path / "p.toml").write_text("backends = [")
        args[3] = str(tmp_path / "p.toml")
    elif bad == "evidence":
        (tmp_path / "e.json").write_text("{}")
        args += ["--evidence", str(tmp_path / "e.json")]
    elif bad == "at":
        args += ["--at", "yesterday"]
    else:
        args[1] = str(tmp_path / "missing.jsonl")
    assert invoke(*args).exit_code == 2


def _keys(directory, name: str = "identity.key") -> IdentityKey:
    key = IdentityKey.generate()
    key.save(directory / name)
    return key


def test_fetch_writes_the_log_byte_for_byte(sim, tmp_path):
    path = tmp_path / "audit.jsonl"
    auditor = _keys(tmp_path / "auditor")
    agg = Aggregator(sim.enclave(), events=MemoryEventSink(), audit_log=path,
                     auditors={"auditor": auditor.public_bytes()})
    agg.start()
    try:
        out = tmp_path / "copy.jsonl"
        signer = ["--as", "auditor", "--keys", str(tmp_path / "auditor")]
        res = invoke("fetch", agg.target, "--out", str(out), *signer)
        assert res.exit_code == 0, res.output
        assert out.read_bytes() == path.read_bytes()
        assert invoke("fetch", agg.target, "--out", str(out), "--job", "x" * 300, *signer).exit_code == 1
    finally:
        agg.stop(grace=0)


def test_fetch_is_signed_and_refused_to_strangers(sim, tmp_path):
    path = tmp_path / "audit.jsonl"
    _keys(tmp_path / "auditor")
    _keys(tmp_path / "stranger", "identity.pem")
    agg = Aggregator(sim.enclave(), events=MemoryEventSink(), audit_log=path,
                     auditors={"auditor": IdentityKey.generate().public_bytes()})
    agg.start()
    try:
        out = tmp_path / "copy.jsonl"
        # the auditor's id with another key, and an id the aggregator does not know
        for who in ("auditor", "stranger"):
            res = invoke("fetch", agg.target, "--out", str(out), "--as", who, "--keys", str(tmp_path / who))
            assert res.exit_code == 1 and "UNAUTHENTICATED" in res.output, res.output
        assert not out.exists()
        assert invoke("fetch", agg.target, "--out", str(out)).exit_code == 2  # no identity: usage error
        res = invoke("fetch", agg.target, "--out", str(out), "--as", "auditor", "--keys", str(tmp_path / "none"))
        assert res.exit_code == 2 and "no identity key" in res.output
        res = invoke("fetch", agg.target, "--out", str(out), "--as", "nobody", "--profiles", str(tmp_path))
        assert res.exit_code == 2 and "--keys" in res.output
    finally:
        agg.stop(grace=0)


@pytest.mark.parametrize("target", ["hospitals-pooled", "127.0.0.1", "127.0.0.1:99999", "host:port", "a b:1",
                                    "my_host", "dns:", "unix:", "dns:/// agg:1", "[fe80::1%]:1", "[fe80::1%a b]:1"])
def test_fetch_wants_an_address_not_a_job_id(tmp_path, target):
    _keys(tmp_path / "auditor")
    res = invoke("fetch", target, "--out", str(tmp_path / "out.jsonl"), "--as", "auditor", "--keys",
                 str(tmp_path / "auditor"))
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "HOST:PORT must be the aggregator's address, such as 127.0.0.1:50051" in text and repr(target) in text
    assert ("a job id goes in --job" in text) == (":" not in target)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("target", ["my_host:50051", "agg.example:443", "[::1]:50051", "[fe80::1%eth0]:50051",
                                    "dns:///agg:50051", "dns:agg:50051", "unix:/run/agg.sock", "unix:///run/agg.sock",
                                    "unix-abstract:agg", "ipv4:127.0.0.1:50051", "ipv6:[::1]:50051"])
def test_fetch_takes_any_grpc_target(target):
    """Underscores, zone ids and target URIs are addresses gRPC dials: refusing them kept valid setups out."""
    from mpctrain.cli.audit import check_target

    check_target(target)


def test_fetch_through_target_uris(sim, tmp_path):
    """The URIs reach the aggregator: over a unix socket, and by ipv4: and dns: to a TCP port."""
    path = tmp_path / "audit.jsonl"
    auditor = _keys(tmp_path / "auditor")
    sock = tmp_path / "agg.sock"
    signer = ["--as", "auditor", "--keys", str(tmp_path / "auditor")]
    for address, targets in ((f"unix:{sock}", [f"unix:{sock}", f"unix://{sock}"]),
                             ("127.0.0.1:0", ["ipv4:127.0.0.1:{port}", "dns:///127.0.0.1:{port}"])):
        agg = Aggregator(sim.enclave(), events=MemoryEventSink(), audit_log=path,
                         auditors={"auditor": auditor.public_bytes()})
        port = agg.start(address)
        try:
            for target in targets:
                out = tmp_path / "copy.jsonl"
                res = invoke("fetch", target.format(port=port), "--out", str(out), *signer)
                assert res.exit_code == 0, (target, res.output)
                assert out.read_bytes() == path.read_bytes()
        finally:
            agg.stop(grace=0)


def test_fetch_help_says_what_the_target_is():
    res = invoke("fetch", "--help")
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "HOST:PORT" in text and "aggregator's gRPC address" in text and "127.0.0.1:50051" in text


def test_head_pin_from_an_earlier_verify(files):
    log, policy = files
    res = invoke("verify", str(log), "--policy", str(policy), "--json")
    head = json.loads(res.output)["head"]
    pin = f"{head['seq']}:{head['hash']}"
    assert invoke("verify", str(log), "--policy", str(policy), "--head", pin).exit_code == 0
    log.write_bytes(b"".join(read(log)[:-1]))
    res = invoke("verify", str(log), "--policy", str(policy), "--head", pin)
    assert res.exit_code == 1 and "seq 25 [truncated]" in res.output
    assert invoke("verify", str(log), "--policy", str(policy), "--head", "25:xyz").exit_code == 2


def test_a_crafted_time_exits_1_with_the_check(files):
    log, policy = files
    lines = read(log)
    lines[0] = edit(lines[0], lambda o: o.__setitem__("time_ms", 10**17), rehash=True)
    log.write_bytes(b"".join(lines))
    res = invoke("verify", str(log), "--policy", str(policy), "--json")
    assert res.exit_code == 1 and json.loads(res.output)["check"] == "time"


FORGED = "shard/c/1 (seq 9)\n  output b: model, 1227 bytes (seq 20)\x1b[2A\x1b[K"


def test_party_chosen_ids_cannot_forge_or_erase_summary_lines(sim, tmp_path, files):
    _, policy = files
    log = tmp_path / "spoof.jsonl"
    audit = AuditLog(log, sim.enclave())  # the enclave signs whatever object id a party chose
    audit.emit("job.proposed", job_id="j", digest="ab" * 32, mode="pooled", proposer="a", parties=["a", "c"])
    audit.emit("shard.accepted", job_id="j", party="c", object_id=FORGED, header_digest="cc" * 32, size=9, chunks=1)
    audit.emit("output.sealed", job_id="j", recipient="a\nb", name="model\r", size=1, digest="98" * 32)
    audit.emit("training.finished", job_id="j", metrics={"acc\x1b": "0.9\n"})
    res = invoke("verify", str(log), "--policy", str(policy))
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\r" not in res.output
    assert [ln for ln in res.output.splitlines() if ln.startswith("  output b")] == []
    assert "object shard/c/1 (seq 9)\\n  output b: model, 1227 bytes (seq 20)\\x1b[2A\\x1b[K," in res.output
    assert "output a\\nb: model\\r," in res.output and "acc\\x1b=0.9\\n" in res.output


def _forged_segment_at_the_end(log, text: str) -> None:
    """A host-made segment start appended to the log, naming an evidence file whose name is ``text``."""
    lines = read(log)
    start = next(raw for raw in lines if b'"segment.started"' in raw)
    last = json.loads(lines[-1])

    def change(o):
        o.update(seq=last["seq"] + 1, segment=last["segment"] + 1, prev_hash=last["hash"])
        o["fields"].pop("evidence")
        o["fields"]["evidence_file"] = text

    log.write_bytes(b"".join([*lines, edit(start, change, rehash=True)]))


def test_warnings_and_failures_quoting_the_log_are_escaped(files):
    log, policy = files
    _forged_segment_at_the_end(log, "x\nOK 99 records in 1 segment(s)\x1b[1A")
    partial = invoke("verify", str(log), "--policy", str(policy), "--partial")  # skipped with a warning
    full = invoke("verify", str(log), "--policy", str(policy))  # refused
    assert (partial.exit_code, full.exit_code) == (0, 1)
    for res in (partial, full):
        assert "\nOK 99" not in res.output and "\x1b" not in res.output
        assert "x\\nOK 99 records in 1 segment(s)\\x1b[1A" in res.output
