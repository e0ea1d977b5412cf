"""Builders shared by the pooled tests (imported by name: tests/pooled is on sys.path)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from mpctrain.jobs import JobManifest
from mpctrain.party.agent import PartyAgent
from mpctrain.sim.cluster import SimCluster

FAST_TRAINING = {"epochs": 3, "batch_size": 32, "lr": 0.01, "seed": 7, "val_fraction": 0.2}


def open_job(cluster: SimCluster, job_id: str) -> tuple[JobManifest, dict[str, PartyAgent]]:
    """Propose ``job_id`` to every party of ``cluster``; each attests and approves: the job takes data."""
    m = cluster.manifest(job_id, training=FAST_TRAINING)
    agents = {p: cluster.agent(p) for p in cluster.parties}
    agents["hospital-a"].client.propose(m)
    for ag in agents.values():
        ag.attest()
        ag.approve(m)
    return m, agents


def run_job(cluster: SimCluster, job_id: str, *, data: dict[str, Path] | None = None,
            **overrides: object) -> tuple[JobManifest, dict[str, PartyAgent]]:
    """Propose, attest, approve and upload for every data party; wait until done."""
    overrides.setdefault("training", FAST_TRAINING)
    m = cluster.manifest(job_id, parties=["hospital-a", "hospital-b", "hospital-c"], **overrides)
    agents = {p: cluster.agent(p, data=(data or {}).get(p)) for p in ("hospital-a", "hospital-b", "hospital-c")}
    agents["hospital-a"].client.propose(m)
    for ag in agents.values():
        ag.attest()
        ag.approve(m)
    for ag in agents.values():
        ag.upload(m)
    state = agents["hospital-a"].wait(m.job_id, ("done",), timeout=120)
    assert state == "done", agents["hospital-a"].client.get_job(m.job_id).error
    return m, agents


class Relay:
    """A loopback TCP relay that records every byte the aggregator sends back (what a host would see)."""

    def __init__(self, target_port: int, cut_after: int | None = None) -> None:
        self.target_port = target_port
        self.cut_after = cut_after  # close the first connection after this many client bytes (a network drop)
        self.cuts = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.from_server = bytearray()
        self.to_server = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, self.to_server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.from_server), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    record += data
                    cut = (record is self.to_server and self.cut_after is not None and self.cuts == 0
                           and len(record) > self.cut_after)
                    if cut:
                        self.cuts += 1
                if cut:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
