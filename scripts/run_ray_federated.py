"""Run the four-bank federated example on Flower's Ray backend and check it against the in-process runtime.

Needs Ray (``mpctrain[ray]``), which stays out of the project's venv and CI: run it with an interpreter
that has Ray and sees the project, e.g. a venv with ``ray==2.55.1`` and a ``.pth`` file naming the
project's site-packages and the repository root::

    /tmp/rayvenv/bin/python scripts/run_ray_federated.py [--rounds 5]

What runs: a simulated TEE and enclave keys in this (driver) process, the aggregator's Attestation service
on a loopback port, one party profile per bank on disk (fresh keys, policy pinning the simulated root and
measurement, the approved job), the ServerApp (``Confidential(FedAvg)``) in the driver and one Ray virtual
SuperNode per bank, each attesting the aggregator over gRPC before answering. The same job then runs on the
in-process runtime; both sealed models are opened as the researcher and must agree within float tolerance
(FedAvg may sum the banks' updates in another order). Exit status 1 when they do not.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import numpy as np

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")  # Ray forks while the Attestation server runs
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs asked for, none touched
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOLERANCE = 1e-6


class TimedSink:
    """Keeps every enclave event with the time it was emitted, to time rounds from the strategy's own events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[float, str, dict[str, object]]] = []

    def emit(self, kind: str, /, **fields: object) -> None:
        with self._lock:
            self.events.append((time.perf_counter(), kind, dict(fields)))

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(1 for _, k, _ in self.events if k == kind)

    def accepted(self, category: str) -> dict[int, set[str]]:
        """The parties whose reply of ``category`` the enclave accepted, per round."""
        out: dict[int, set[str]] = {}
        with self._lock:
            for _, kind, f in self.events:
                if kind == "fl.update_accepted" and f.get("category") == category and isinstance(f.get("round"), int):
                    out.setdefault(f["round"], set()).add(str(f.get("party")))
        return out

    def round_seconds(self) -> dict[int, float]:
        """From a round's first sealed train instruction to the last accepted reply of that round."""
        with self._lock:
            start: dict[int, float] = {}
            end: dict[int, float] = {}
            for t, kind, f in self.events:
                rnd = f.get("round")
                if not isinstance(rnd, int):
                    continue
                if kind == "fl.instruction_sealed" and f.get("category") == "train":
                    start.setdefault(rnd, t)
                elif kind == "fl.update_accepted":
                    end[rnd] = t
        return {r: end[r] - start[r] for r in sorted(start) if r in end}


def _write_profiles(base: Path, fed, app_dir: Path, aggregator: str) -> list[str]:
    """Each bank's profile as ``mpctrain party`` leaves it after approving the job: keys, policy, consent."""
    from mpctrain.party.flower.profile import approve_federated_job

    dirs = []
    for p in fed.parties:
        prof = fed.write_profile(p, base / "parties" / p.id, aggregator, app_dir)
        approve_federated_job(prof, fed.manifest)
        dirs.append(str(prof))
    return dirs


def _problems(label: str, result, sink: TimedSink, rounds: int, banks: int) -> list[str]:
    """Why a run does not count as a full run: missing rounds, rejected or missing replies."""
    out = [f"{label}: rejected reply: {r}" for r in result.rejected]
    if result.rounds_completed != rounds:
        out.append(f"{label}: {result.rounds_completed} of {rounds} rounds ({result.stop_reason})")
    for category in ("train", "evaluate"):
        accepted = sink.accepted(category)
        for rnd in range(1, rounds + 1):
            if len(accepted.get(rnd, ())) != banks:
                out.append(f"{label}: round {rnd}: {len(accepted.get(rnd, ()))} of {banks} {category} replies accepted")
    return out


def _print_rounds(label: str, result, seconds: dict[int, float]) -> None:
    for rnd, metrics in sorted(result.evaluate_metrics_clientapp.items()):
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        print(f"  [{label}] round {rnd}: {shown}, {seconds.get(rnd, float('nan')):.3f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs Ray may use (one per virtual SuperNode actor)")
    args = parser.parse_args(argv)

    import grpc

    from examples.banks_federated.app import client_app, data, task
    from mpctrain.enclave.attestation_service import AttestationService
    from mpctrain.enclave.federated.ray_sim import DEFAULT_BACKEND_CONFIG, run_on_ray
    from mpctrain.enclave.federated.server_app import FederatedJob, run_federated_job
    from mpctrain.enclave.federated.simulation import build_federation
    from mpctrain.party.flower import app_code_digest, open_output
    from mpctrain.wire import attestation_pb2_grpc

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    app_dir = Path(client_app.__file__).resolve().parent
    fed = build_federation(data.BANKS, job_id="banks-federated-ray", code_digest=app_code_digest(app_dir),
                           training={"rounds": args.rounds, "strategy": "FedAvg"})
    print(f"enclave: simulated TEE, measurement {fed.attester.measurement.hex()[:16]}…, job {fed.manifest.job_id} "
          f"digest {fed.manifest.digest().hex()[:16]}…, consents from {len(fed.consents)} banks")

    def open_model(result) -> dict[str, np.ndarray]:
        arrays, _ = open_output(result.sealed_output, manifest=fed.manifest, recipient_id="researcher",
                                kem=fed.researcher.kem, enclave_sig_public=fed.enclave.sig.public_bytes())
        return {k: arrays[k].numpy() for k in arrays}

    def job(sink: TimedSink) -> FederatedJob:
        return FederatedJob(manifest=fed.manifest, consents=fed.consents, enclave=fed.enclave,
                            initial_arrays=task.initial_arrays(), events=sink)

    # In-process runtime: the reference (and the per-round baseline). No run config on either runtime
    # (Flower's run_simulation takes none), so both train with the app's defaults: same data and seeds.
    local_sink = TimedSink()
    t0 = time.perf_counter()
    local = run_federated_job(job(local_sink), fed.grid(client_app.make_client_app))
    local_wall = time.perf_counter() - t0
    print(f"in-process runtime: {local.rounds_completed} rounds in {local_wall:.2f} s, "
          f"{sum(rt.attestations for rt in fed.runtimes.values())} attestations (in process)")
    _print_rounds("in-process", local, local_sink.round_seconds())

    # Ray runtime: the aggregator's Attestation service on loopback, profiles on disk, ServerApp in the driver.
    ray_sink = TimedSink()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    attestation_pb2_grpc.add_AttestationServicer_to_server(AttestationService(fed.enclave, ray_sink), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    backend = {**DEFAULT_BACKEND_CONFIG,
               "init_args": {**DEFAULT_BACKEND_CONFIG["init_args"], "num_cpus": args.num_cpus}}
    try:
        with tempfile.TemporaryDirectory(prefix="mpctrain-ray-") as tmp:
            profiles = _write_profiles(Path(tmp), fed, app_dir, f"127.0.0.1:{port}")
            t0 = time.perf_counter()
            result = run_on_ray(job(ray_sink), client_app.make_client_app, profiles, backend_config=backend)
            ray_wall = time.perf_counter() - t0
    finally:
        server.stop(0)
    print(f"Ray runtime ({len(profiles)} virtual SuperNodes, num_cpus={args.num_cpus}): {result.rounds_completed} "
          f"rounds in {ray_wall:.2f} s including Ray start-up; {ray_sink.count('evidence.served')} attestations "
          f"over gRPC; rejected replies: {len(result.rejected)}; stop: {result.stop_reason}")
    ray_rounds = ray_sink.round_seconds()
    _print_rounds("ray", result, ray_rounds)

    problems = (_problems("in-process", local, local_sink, args.rounds, len(fed.parties))
                + _problems("ray", result, ray_sink, args.rounds, len(fed.parties)))
    if ray_sink.count("evidence.served") < len(fed.parties):
        problems.append(f"ray: only {ray_sink.count('evidence.served')} attestations over gRPC for "
                        f"{len(fed.parties)} banks")
    for problem in problems:
        print(f"FAILED {problem}")
    if problems:
        return 1
    local_model, ray_model = open_model(local), open_model(result)
    diff = max(float(np.abs(ray_model[k] - local_model[k]).max()) for k in local_model)
    acc_ray = result.evaluate_metrics_clientapp[args.rounds]["accuracy"]
    acc_local = local.evaluate_metrics_clientapp[args.rounds]["accuracy"]
    local_rounds = local_sink.round_seconds()
    later = [r for r in ray_rounds if r > 1 and r in local_rounds] or sorted(ray_rounds)
    ray_med = float(np.median([ray_rounds[r] for r in later]))
    local_med = float(np.median([local_rounds[r] for r in later]))
    print(f"final accuracy: Ray {acc_ray:.4f}, in-process {acc_local:.4f}")
    print(f"per-round time (median of rounds {later[0]}-{later[-1]}): Ray {ray_med:.3f} s, "
          f"in-process {local_med:.3f} s ({ray_med / local_med:.1f}x); Ray round 1 (actors start, profiles load, "
          f"attestations) {ray_rounds.get(1, float('nan')):.2f} s")
    same = diff <= TOLERANCE
    print(f"max |Ray - in-process| over the final model = {diff:.2e} (tolerance {TOLERANCE:.0e}): "
          f"{'EQUAL' if same else 'DIFFERENT'}")
    return 0 if same else 1

if __name__ == "__main__":
    sys.exit(main())
