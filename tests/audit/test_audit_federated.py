"""Federated mode: Confidential(strategy) writing through AuditLog yields a verifiable log without model values."""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path

from flwr.serverapp.strategy import FedAvg

from mpctrain.attest.sim import SimAttester, SimRoot
from mpctrain.enclave.audit import AuditLog, read_lines, summarize, verify_log
from mpctrain.party.flower import ConfidentialMod

CANARY = 4242.4375  # planted in every party's update; exactly representable in float32


def _fedkit():
    """The federated test kit, loaded from its file (tests/federated is not on sys.path here)."""
    name = "audit_fedkit"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "federated" / "fedkit.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_federated_rounds_are_audited_and_verify(tmp_path):
    kit = _fedkit()
    root = SimRoot.generate()
    attester = SimAttester(root, config_digest=b"\x07" * 32)
    job = kit.build_job(root, attester, rounds=2)
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, job.enclave)
    grid = job.grid(lambda p, i: kit.toy_app(CANARY, 10 + i, mod=ConfidentialMod(job.runtime(p))))
    strategy = job.confidential(FedAvg(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3))
    strategy.events = audit
    result = strategy.start(grid, kit.initial_arrays(), num_rounds=2)
    assert result.rounds_completed == 2
    audit.emit("aggregator.stopped")

    report = verify_log(read_lines(path), job.policy)
    assert report.warnings == []
    summary = summarize(report.records)["fed-test"]
    assert summary.rounds == 2
    assert sorted(summary.outputs) == sorted(job.manifest.recipients)
    kinds = [r.kind for _, r in report.records if r.job_id == "fed-test"]
    assert kinds.count("fl.round_aggregated") == 2 and kinds[-1] == "fl.training_ended"
    # every accepted sealed update is on record: per party, one per train and evaluate round
    data_parties = sorted(p.id for p in job.manifest.data_parties())
    assert sorted(summary.inputs) == data_parties
    for party in data_parties:
        entries = summary.inputs[party]
        assert len(entries) == kinds.count("fl.update_accepted") // len(data_parties) >= 2
        assert all(len(e.digest) == 64 and e.size > 0 for e in entries)
    blob = path.read_bytes()
    for pattern in (struct.pack("<f", CANARY), struct.pack("<d", CANARY), str(CANARY).encode(),
                    struct.pack("<f", CANARY).hex().encode()):
        assert pattern not in blob
