"""Canary values planted in a hospital's data never appear in anything the aggregator logs, writes or sends.

The numbers travel as CSV text at the party and float32 inside the shard, so the search covers the
decimal text and the float32/float64 encodings in both byte orders.
"""

from __future__ import annotations

import logging
import shutil
import struct
import sys
import threading
from pathlib import Path

import pandas as pd

from mpctrain.party.client import AggregatorClient
from mpctrain.sim.cluster import EXAMPLE
from pooled_kit import FAST_TRAINING, Relay

CANARIES = (31337.0625, 27182.8125, 16180.3398)  # exactly representable in float32 except the last


def patterns(value: float) -> list[bytes]:
    out = [f"{value}".encode(), f"{value:.4f}".encode()]
    for fmt in ("<f", ">f", "<d", ">d"):
        out.append(struct.pack(fmt, value))
    f32 = struct.unpack("<f", struct.pack("<f", value))[0]
    out += [struct.pack("<d", f32), struct.pack(">d", f32), f"{f32}".encode()]
    return out


ALL = [p for v in CANARIES for p in patterns(v)]


def found_in(blob: bytes) -> list[bytes]:
    return [p for p in ALL if p in blob]


_WRITES: list[str] = []
_RECORDING = threading.Event()


def _audit(event: str, args: tuple) -> None:
    if _RECORDING.is_set() and event == "open" and len(args) >= 2:
        path, mode = args[0], args[1]
        flags = args[2] if len(args) > 2 else 0
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & 0o3):
            _WRITES.append(str(path))


sys.addaudithook(_audit)


def _plant(tmp: Path) -> dict[str, Path]:
    data = {}
    tmp.mkdir()
    for pid in ("hospital-a", "hospital-b", "hospital-c"):
        dst = tmp / f"{pid}.csv"
        shutil.copy(EXAMPLE / "data" / f"{pid}.csv", dst)
        data[pid] = dst
    df = pd.read_csv(data["hospital-b"])
    for row, col in ((0, "mean_radius"), (1, "worst_area"), (2, "mean_texture")):
        df.loc[row, col] = CANARIES[row]
    df.to_csv(data["hospital-b"], index=False)
    parquet = tmp / "hospital-c.parquet"  # the adapter reads Parquet as well as CSV
    pd.read_csv(data["hospital-c"]).to_parquet(parquet, engine="pyarrow")
    data["hospital-c"] = parquet
    assert found_in(data["hospital-b"].read_bytes()), "the canaries must be findable in the party's own file"
    return data


def test_canaries_never_leave_the_enclave(cluster, tmp_path, caplog, monkeypatch):
    data = _plant(tmp_path / "party-data")
    scratch = tmp_path / "aggregator-tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    caplog.set_level(logging.DEBUG)
    proxy = Relay(cluster.aggregator.port)
    target = f"127.0.0.1:{proxy.port}"
    m = cluster.manifest("canary", parties=["hospital-a", "hospital-b", "hospital-c"], training=FAST_TRAINING,
                         recipients=["hospital-a"], public_metrics=["accuracy", "auc", "loss", "f1"])
    agents = {}
    for pid in ("hospital-a", "hospital-b", "hospital-c"):
        client = AggregatorClient(target, pid, cluster.parties[pid].identity)
        agents[pid] = cluster.agent(pid, data=data[pid], client=client)
    agents["hospital-a"].client.propose(m)
    _WRITES.clear()
    _RECORDING.set()
    try:
        for ag in agents.values():
            ag.attest()
            ag.approve(m)
        for ag in agents.values():
            ag.upload(m)
        assert agents["hospital-a"].wait(m.job_id, ("done",), timeout=120) == "done"
        list(agents["hospital-c"].client.watch(m.job_id, timeout=10))
        agents["hospital-c"].client.get_job(m.job_id)
        agents["hospital-c"].client.list_jobs()
        agents["hospital-a"].client.get_receipt(m.job_id)
        header, frames = agents["hospital-a"].client.fetch_output(m.job_id, "hospital-a", "metrics")
    finally:
        _RECORDING.clear()
        for ag in agents.values():
            ag.client.close()
        proxy.close()

    # the party really sent its data (sealed): the relay saw megabytes of ciphertext, not the values
    assert len(proxy.to_server) > 30_000
    assert found_in(bytes(proxy.to_server)) == []
    assert found_in(bytes(proxy.from_server)) == []  # everything the aggregator sent, to anyone
    assert found_in(caplog.text.encode()) == []
    for kind, fields in cluster.events.events:
        assert found_in(repr(fields).encode()) == [], kind
    written = [Path(p) for p in _WRITES]
    for p in written:
        if p.is_file():
            assert found_in(p.read_bytes()) == [], p
    for p in scratch.rglob("*"):
        if p.is_file():
            assert found_in(p.read_bytes()) == [], p
    for p in (cluster.workdir / "sim-root").rglob("*"):
        assert found_in(p.read_bytes()) == []
    # the recipient's opened metrics hold no data values either (aggregate numbers only)
    from mpctrain.party.outputs import open_output

    a = agents["hospital-a"]
    metrics = open_output(header, frames, recipient_id="hospital-a", kem=a.kem, enclave_sig_public=a.enclave.sig_public,
                          job_id=m.job_id, name="metrics")
    assert found_in(metrics) == []
