"""How big the audit log of a demo run is: bytes per segment start, per shard (pooled), per round (federated).

Runs the pooled hospitals job (3 parties, simulated TEE, loopback gRPC) and a federated FedAvg job (3 banks,
in-process Flower grid), each writing through ``AuditLog``, verifies both logs, and prints the sizes.

    python scripts/audit_size.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mpctrain.enclave.audit import AuditLog, read_lines, verify_log
from mpctrain.enclave.events import MemoryEventSink

TRAINING = {"epochs": 3, "batch_size": 32, "lr": 0.01, "seed": 7, "val_fraction": 0.2}


def _records(path: Path) -> list[tuple[int, dict]]:
    return [(len(raw), json.loads(raw)) for _, raw in read_lines(path)]


def pooled(work: Path) -> dict[str, object]:
    from mpctrain.sim.cluster import HOSPITALS, SimCluster

    cluster = SimCluster(work / "pooled", events=MemoryEventSink())
    with cluster:
        m = cluster.manifest("size-pooled", training=TRAINING)
        agents = {p: cluster.agent(p) for p in HOSPITALS}
        agents[HOSPITALS[0]].client.propose(m)
        for ag in agents.values():
            ag.attest()
            ag.approve(m)
        shard_bytes = sum(ag.upload(m).total_size for ag in agents.values())
        assert agents[HOSPITALS[0]].wait(m.job_id, ("done",), timeout=300) == "done"
    path = cluster.workdir / "audit.jsonl"
    verify_log(read_lines(path), cluster.policy())
    recs = _records(path)
    by_kind: dict[str, int] = defaultdict(int)
    for size, r in recs:
        by_kind[r["kind"]] += size
    shard_kinds = ("shard.started", "shard.accepted", "shard.resumed")
    per_shard = sum(by_kind[k] for k in shard_kinds) / len(HOSPITALS)
    job = sum(size for size, r in recs if r["job_id"] == m.job_id)
    return {"total_bytes": path.stat().st_size, "records": len(recs), "segment_start_bytes": by_kind["segment.started"],
            "per_shard_bytes": round(per_shard), "job_bytes": job, "job_bytes_per_shard": round(job / len(HOSPITALS)),
            "evidence_served_bytes_each": round(by_kind["evidence.served"] / max(1, sum(
                1 for _, r in recs if r["kind"] == "evidence.served"))), "shard_plaintext_bytes": shard_bytes}


def federated(work: Path, rounds: int) -> dict[str, object]:
    import numpy as np
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp.strategy import FedAvg

    from mpctrain.enclave.federated.simulation import build_federation
    from mpctrain.enclave.federated.strategy import Confidential

    logging.getLogger("flwr").setLevel(logging.WARNING)
    fed = build_federation(["bank-a", "bank-b", "bank-c"], training={"rounds": rounds, "strategy": "FedAvg"})
    path = work / "federated.jsonl"
    audit = AuditLog(path, fed.enclave)

    def make_app(mods: list) -> ClientApp:
        app = ClientApp(mods=mods)

        @app.train()
        def train(msg: Message, context: Context) -> Message:
            w = ArrayRecord({k: Array(v.numpy() + 0.1) for k, v in msg.content["arrays"].items()})
            return Message(RecordDict({"arrays": w, "metrics": MetricRecord({"num-examples": 10, "loss": 0.5})}),
                           reply_to=msg)

        @app.evaluate()
        def evaluate(msg: Message, context: Context) -> Message:
            return Message(RecordDict({"metrics": MetricRecord({"num-examples": 10, "accuracy": 0.5})}),
                           reply_to=msg)

        return app

    strategy = Confidential(FedAvg(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3),
                            manifest=fed.manifest, consents=fed.consents, enclave=fed.enclave, events=audit)
    strategy.start(fed.grid(make_app), ArrayRecord({"w": Array(np.zeros(1000, dtype=np.float32))}), num_rounds=rounds)
    audit.emit("aggregator.stopped")
    verify_log(read_lines(path), fed.policy)
    recs = _records(path)
    per_round: dict[int, int] = defaultdict(int)
    for size, r in recs:
        rnd = r["fields"].get("round")
        if isinstance(rnd, int):
            per_round[rnd] += size
    return {"total_bytes": path.stat().st_size, "records": len(recs), "rounds": rounds,
            "per_round_bytes": round(sum(per_round.values()) / max(1, len(per_round)))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="mpctrain-audit-size-") as tmp:
        work = Path(tmp)
        result = {"pooled": pooled(work), "federated": federated(work, args.rounds)}
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
