"""Benchmark: confidential vs plain Flower FedAvg in the same in-process runtime (and SecAgg+ with --secagg).

For N in {10, 50} parties and a 1M-parameter model it reports, per round (medians of rounds 2..R):
  * wall time of a whole training round (configure_train until the aggregate is ready), confidential vs
    plain Flower (goal: <= 1.15x);
  * server-side aggregation, two measures, both stated in the output:
      - total: all the time Confidential spends opening, checking and adding every sealed update plus the
        final division (it folds each reply in as it is pulled), vs Flower's FedAvg.aggregate_train on
        plaintext replies (which only starts once every reply is there);
      - after the last reply (the round's critical path): what is left of Confidential's aggregation once
        the last reply has arrived, vs the same Flower aggregate_train (all of which comes after the last
        reply). The ">= 5x" goal is read on this measure;
  * with --secagg, the server time of Flower's SecAgg+ workflow vs Confidential's total server time
    (sealing the global model + total aggregation) (goal: >= 20x at N = 50).

Each party's "training" is a few least-squares SGD steps on the 1000x1000 weight matrix with numpy BLAS
(--local-steps; 0 = framework overhead only). One unrecorded federation of each mode runs first (a fresh
process faults in its heap on the first one). ``--workers`` and ``--fold-ahead`` try the concurrent
in-process grid and Confidential's fold thread. Run: ``python scripts/bench_federated.py [--secagg]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from mpctrain.enclave.federated.simulation import build_federation
from mpctrain.enclave.federated.strategy import Confidential
from mpctrain.memory import keep_freed_memory

DIM = 1000  # one 1000 x 1000 float32 weight matrix = 1M parameters


def make_app(local_steps: int, seed: int) -> Callable[[list], ClientApp]:
    def factory(mods: list) -> ClientApp:
        app = ClientApp(mods=mods)

        @app.train()
        def train(msg: Message, context: Context) -> Message:
            w = msg.content["arrays"]["w"].numpy().copy()
            rng = np.random.default_rng(seed + context.node_id)
            x = rng.standard_normal((64, DIM), dtype=np.float32)
            target = rng.standard_normal((64, DIM), dtype=np.float32)
            for _ in range(local_steps):
                w -= 1e-4 * (x.T @ (x @ w - target)) / 64.0
            reply = RecordDict({"arrays": ArrayRecord({"w": Array(w)}),
                                "metrics": MetricRecord({"num-examples": 64, "loss": 0.0})})
            return Message(reply, reply_to=msg)

        return app

    return factory


class Marks:
    """Wraps a strategy's configure_train / configure_evaluate / aggregate_train to time each round.

    A training round runs from configure_train's entry to configure_evaluate's entry (both strategies call
    it right after aggregating, even with evaluation off), so it covers sealing, every client, and
    aggregation. ``aggregate`` times Flower's aggregate_train (Confidential folds replies in start() and
    reports its own timings instead).
    """

    def __init__(self, strategy) -> None:
        self.train_start: list[tuple[float, float]] = []  # (wall, process CPU)
        self.train_end: list[tuple[float, float]] = []
        self.configure: list[float] = []
        self.aggregate: list[float] = []
        conf, conf_eval, agg = strategy.configure_train, strategy.configure_evaluate, strategy.aggregate_train

        def configure_train(*a, **k):
            t = time.perf_counter()
            self.train_start.append((t, time.process_time()))
            out = list(conf(*a, **k))
            self.configure.append(time.perf_counter() - t)
            return out

        def configure_evaluate(*a, **k):
            self.train_end.append((time.perf_counter(), time.process_time()))
            return conf_eval(*a, **k)

        def aggregate_train(rnd, replies):
            replies = list(replies)
            t = time.perf_counter()
            out = agg(rnd, replies)
            self.aggregate.append(time.perf_counter() - t)
            return out

        strategy.configure_train = configure_train
        strategy.configure_evaluate = configure_evaluate
        strategy.aggregate_train = aggregate_train


def _steady(values: list[float]) -> float:
    """Median over rounds 2..R of each repeat: round 1 includes each party's first attestation."""
    return statistics.median(values)


def run(n: int, rounds: int, local_steps: int, confidential: bool, workers: int = 1,
        fold_ahead: int = 0) -> dict[str, list[float]]:
    """One federation; per steady-state round (2..R): wall and CPU time, sealing, aggregation figures."""
    fed = build_federation([f"p{i:03d}" for i in range(n)], training={"rounds": rounds, "strategy": "FedAvg"})
    grid = fed.grid(make_app(local_steps, seed=1), confidential=confidential, node_config=lambda p: {},
                    workers=workers)
    inner = FedAvg(min_available_nodes=n, min_train_nodes=n, fraction_evaluate=0.0)
    strategy = (Confidential(inner, manifest=fed.manifest, consents=fed.consents, enclave=fed.enclave,
                             events=fed.events, fold_ahead=fold_ahead) if confidential else inner)
    marks = Marks(strategy)
    init = ArrayRecord({"w": Array(np.zeros((DIM, DIM), np.float32))})
    strategy.start(grid, init, num_rounds=rounds)
    pairs = list(zip(marks.train_start, marks.train_end, strict=True))[1:]
    out = {"round_s": [b[0] - a[0] for a, b in pairs], "round_cpu_s": [b[1] - a[1] for a, b in pairs],
           "configure_s": marks.configure[1:]}
    if confidential and not marks.aggregate:  # it folded replies in as it pulled them, and timed itself
        assert len(strategy.timings) == rounds
        out["aggregate_s"] = [t.busy_s for t in strategy.timings[1:]]
        out["after_last_reply_s"] = [t.after_last_reply_s for t in strategy.timings[1:]]
        out["folded_as_pulled"] = [1.0]
    else:  # Flower's FedAvg (or a Confidential that aggregates after the last reply): all on the critical path
        out["aggregate_s"] = out["after_last_reply_s"] = marks.aggregate[1:]
    return out


def measure(n: int, rounds: int, local_steps: int, repeats: int, *, workers: int = 1, fold_ahead: int = 0,
            warmup: bool = True) -> tuple[dict[str, float], dict[str, float]]:
    """Plain and confidential runs alternate, so load from other processes hits both alike; medians.

    One unrecorded run of each first: the first federation in a fresh process faults in its heap, which
    would otherwise be charged to whichever mode runs first.
    """
    samples: dict[bool, dict[str, list[float]]] = {False: {}, True: {}}
    if warmup:
        for confidential in (False, True):
            run(n, 2, local_steps, confidential, workers=workers, fold_ahead=fold_ahead)
    for _ in range(repeats):
        for confidential in (False, True):
            for key, values in run(n, rounds, local_steps, confidential, workers=workers,
                                   fold_ahead=fold_ahead).items():
                samples[confidential].setdefault(key, []).extend(values)
    plain, conf = ({k: _steady(v) for k, v in samples[c].items()} for c in (False, True))
    spread = sorted(c / p for c, p in zip(samples[True]["round_s"], samples[False]["round_s"], strict=False))
    conf["round_ratio_quartiles"] = (spread[len(spread) // 4], spread[(3 * len(spread)) // 4])  # type: ignore[assignment]
    # the fastest round of each mode: what is left when other tenants of the machine do not get in the way
    conf["round_ratio_fastest"] = min(samples[True]["round_s"]) / min(samples[False]["round_s"])
    return plain, conf


class Breakdown:
    """``--breakdown``: where a confidential round's per-party time goes, measured inside the round.

    Wraps the party mod (its own time, the ClientApp excluded), its open and seal, and the enclave's open,
    add and finish of each reply; medians in ms. The wrappers cost a few microseconds per call.
    """

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self._undo: list[tuple[object, str, object]] = []

    def _wrap(self, owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.samples.setdefault(label, []).append(time.perf_counter() - t)

        self._undo.append((owner, name, original))
        setattr(owner, name, timed)

    def __enter__(self) -> Breakdown:
        import mpctrain.party.flower.mod as mod
        from mpctrain.enclave.federated.fedavg import StreamingMean
        from mpctrain.enclave.federated.strategy import Confidential, StreamingRound

        self._wrap(mod, "open_content", "party: open the instruction")
        self._wrap(mod, "seal_content", "party: seal the reply")
        self._wrap(Confidential, "_open_reply", "enclave: open a reply")
        self._wrap(StreamingMean, "add", "enclave: add an update")
        self._wrap(StreamingRound, "finish", "enclave: finish the round")
        original, samples = mod.ConfidentialMod.__call__, self.samples

        def call(mod_self, msg, context, call_next):
            inner = [0.0]

            def timed_next(m, c):
                t = time.perf_counter()
                try:
                    return call_next(m, c)
                finally:
                    inner[0] += time.perf_counter() - t

            t = time.perf_counter()
            try:
                return original(mod_self, msg, context, timed_next)
            finally:
                samples.setdefault("party: mod, app excluded", []).append(time.perf_counter() - t - inner[0])

        self._undo.append((mod.ConfidentialMod, "__call__", original))
        mod.ConfidentialMod.__call__ = call
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)

    def report(self) -> list[str]:
        return [f"        {label}: median {statistics.median(v) * 1e3:.2f} ms over {len(v)} calls"
                for label, v in self.samples.items()]


def crypto_floor(model_bytes: int, repeats: int = 30) -> dict[str, float]:
    """The machine's own speed for the primitives a sealed round cannot avoid, timed here on a model-sized
    buffer (medians, warm caches: a lower bound for the same work inside a round).

    ``aes_pass_s``: one AES-256-GCM pass over the model (decrypt and encrypt alike). Any design that keeps
    every update sealed end to end makes three per party (the party opens the model and seals its update,
    the enclave opens the update). ``party_s`` adds what this protocol does on top, per party: the model's
    commitment GMAC (made by the enclave, checked by the party), two HPKE key wraps and two unwraps
    (X25519), one Ed25519 signature and two verifications. ``round_s``: sealing and signing the model once
    per round (its per-party wraps and GMACs are counted in ``party_s``).
    """
    from cryptography.hazmat.primitives import hpke
    from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    def median_s(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    data = os.urandom(model_bytes)
    out = bytearray(model_bytes)
    aead, nonce = AESGCM(AESGCM.generate_key(256)), os.urandom(12)
    sealed = aead.encrypt(nonce, data, b"")
    key = os.urandom(32)

    def gmac() -> None:
        mac = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
        mac.authenticate_additional_data(sealed)
        mac.finalize()

    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    kem = x25519.X25519PrivateKey.generate()
    wrapped = suite.encrypt(key, kem.public_key(), info=b"bench")
    sig = ed25519.Ed25519PrivateKey.generate()
    header = os.urandom(512)
    signature = sig.sign(header)
    encrypt = median_s(lambda: aead.encrypt(nonce, data, b""))
    decrypt = median_s(lambda: aead.decrypt_into(nonce, sealed, b"", out))
    # per party: the enclave wraps the model key to it and the party its reply key to the enclave (two HPKE
    # seals, two opens), the party signs its reply, each side verifies the other's header
    asym = (2 * median_s(lambda: suite.encrypt(key, kem.public_key(), info=b"bench"))
            + 2 * median_s(lambda: suite.decrypt(wrapped, kem, info=b"bench"))
            + median_s(lambda: sig.sign(header)) + 2 * median_s(lambda: sig.public_key().verify(signature, header)))
    aes_pass = (encrypt + decrypt) / 2
    # the model's commitment GMAC: computed by the enclave for each party, checked by that party
    return {"aes_pass_s": aes_pass, "aes_gbps": model_bytes / aes_pass / 1e9,
            "party_s": 3 * aes_pass + 2 * median_s(gmac) + asym,
            "round_s": encrypt + median_s(lambda: sig.sign(header))}


def run_secagg(n: int, local_steps: int) -> dict[str, float]:
    """Flower's SecAgg+ workflow (legacy strategy API) on the same runtime and model; server time per round."""
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg as LegacyFedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    from mpctrain.enclave.federated.runtime import InProcessGrid, Node

    class Client(NumPyClient):
        def __init__(self, node_id: int) -> None:
            self.node_id = node_id

        def fit(self, parameters, config):
            w = parameters[0].copy()
            rng = np.random.default_rng(1 + self.node_id)
            x = rng.standard_normal((64, DIM), dtype=np.float32)
            target = rng.standard_normal((64, DIM), dtype=np.float32)
            for _ in range(local_steps):
                w -= 1e-4 * (x.T @ (x @ w - target)) / 64.0
            return [w], 64, {}

    def client_fn(context: Context):
        return Client(context.node_id).to_client()

    nodes = [Node(node_id=1000 + i, app=ClientApp(client_fn=client_fn, mods=[secaggplus_mod])) for i in range(n)]
    grid = InProcessGrid(nodes)
    client_time = [0.0]
    orig = grid._deliver

    def deliver(msg_id):
        t = time.perf_counter()
        orig(msg_id)
        client_time[0] += time.perf_counter() - t

    grid._deliver = deliver
    from flwr.common import ndarrays_to_parameters

    strategy = LegacyFedAvg(min_fit_clients=n, min_available_clients=n, fraction_evaluate=0.0,
                            initial_parameters=ndarrays_to_parameters([np.zeros((DIM, DIM), np.float32)]))
    from flwr.app import RecordDict as RD

    context = LegacyContext(context=Context(run_id=1, node_id=1, node_config={}, state=RD(), run_config={}),
                            config=ServerConfig(num_rounds=1), strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=max(3, n // 2),
                                                               reconstruction_threshold=max(2, n // 3)))
    t = time.perf_counter()
    workflow(grid, context)
    total = time.perf_counter() - t
    return {"round_s": total, "server_s": total - client_time[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parties", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="alternating plain/confidential runs per N")
    ap.add_argument("--workers", type=int, default=1,
                    help="in-process grid threads (1: parties take turns; more: they run as soon as pushed)")
    ap.add_argument("--fold-ahead", type=int, default=0,
                    help="replies queued for Confidential's fold thread (0: fold in the pulling thread)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the unrecorded first run of each mode")
    ap.add_argument("--secagg", action="store_true", help="also time Flower's SecAgg+ workflow")
    ap.add_argument("--default-allocator", action="store_true",
                    help="leave glibc's allocator as it is (the CLI roles apply mpctrain.memory.keep_freed_memory)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also report where the confidential per-party time goes, measured in the round")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.disable(logging.INFO)
    tuned = False if args.default_allocator else keep_freed_memory()  # one process: both modes share it
    rows = []
    for n in args.parties:
        breakdown = Breakdown() if args.breakdown else None
        with breakdown if breakdown is not None else contextlib.nullcontext():
            plain, conf = measure(n, args.rounds, args.local_steps, args.repeats, workers=args.workers,
                                  fold_ahead=args.fold_ahead, warmup=not args.no_warmup)
        row = {"parties": n, "plain": plain, "confidential": conf,
               "round_ratio": conf["round_s"] / plain["round_s"],
               "round_cpu_ratio": conf["round_cpu_s"] / plain["round_cpu_s"],
               "aggregation_speedup_total": plain["aggregate_s"] / conf["aggregate_s"],
               "aggregation_speedup_after_last_reply": plain["aggregate_s"] / conf["after_last_reply_s"]}
        if breakdown is not None:
            row["breakdown_ms"] = {k: statistics.median(v) * 1e3 for k, v in breakdown.samples.items()}
            row["breakdown_lines"] = breakdown.report()
        floor = crypto_floor(DIM * DIM * 4)
        row["floor"] = floor
        extra = conf["round_s"] - plain["round_s"]
        row["overhead_per_party_s"] = extra / n
        row["bare_aes_ratio"] = (plain["round_s"] + (3 * n + 1) * floor["aes_pass_s"]) / plain["round_s"]
        row["protocol_floor_ratio"] = (plain["round_s"] + n * floor["party_s"] + floor["round_s"]) / plain["round_s"]
        if args.secagg:
            sec = run_secagg(n, args.local_steps)
            row["secagg"] = sec
            row["secagg_server_ratio"] = sec["server_s"] / (conf["aggregate_s"] + conf["configure_s"])
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"model: {DIM * DIM:,} float32 parameters; local steps per round: {args.local_steps}; medians over "
          f"rounds 2..{args.rounds} of {args.repeats} alternating runs each; grid workers: {args.workers}; "
          f"fold-ahead: {args.fold_ahead}; cores: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}; "
          f"allocator: {'freed pages kept (mpctrain.memory)' if tuned else 'glibc default'}, the same for both modes")
    for r in rows:
        p, c = r["plain"], r["confidential"]
        print(f"N={r['parties']:3d}  round: plain {p['round_s']:.3f}s  confidential {c['round_s']:.3f}s  "
              f"ratio {r['round_ratio']:.2f}x (goal <= 1.15x; round-by-round quartiles "
              f"{c['round_ratio_quartiles'][0]:.2f}-{c['round_ratio_quartiles'][1]:.2f}; fastest round vs fastest "
              f"round {c['round_ratio_fastest']:.2f}x); process CPU per round: plain "
              f"{p['round_cpu_s']:.3f}s confidential {c['round_cpu_s']:.3f}s ratio {r['round_cpu_ratio']:.2f}x")
        print(f"        server aggregation, Flower FedAvg.aggregate_train (starts after the last reply): "
              f"{p['aggregate_s'] * 1e3:.1f} ms")
        how = "folded in as pulled" if c.get("folded_as_pulled") else "after the last reply"
        print(f"        confidential, total (open + check + add every sealed update, {how}): "
              f"{c['aggregate_s'] * 1e3:.1f} ms  -> {r['aggregation_speedup_total']:.2f}x")
        print(f"        confidential, left after the last reply arrived (critical path): "
              f"{c['after_last_reply_s'] * 1e3:.1f} ms  -> {r['aggregation_speedup_after_last_reply']:.1f}x "
              f"(goal >= 5x, read on this measure)")
        print(f"        sealing the global model (once per round): {c['configure_s'] * 1e3:.1f} ms")
        f = r["floor"]
        print(f"        floor, this machine's primitives timed here: one AES-256-GCM pass over the model "
              f"{f['aes_pass_s'] * 1e3:.2f} ms ({f['aes_gbps']:.1f} GB/s); the protocol's primitives per party "
              f"{f['party_s'] * 1e3:.2f} ms; measured overhead per party {r['overhead_per_party_s'] * 1e3:.2f} ms")
        print(f"        round ratio with nothing but those primitives added: bare AES (3 passes per party) "
              f"{r['bare_aes_ratio']:.2f}x, this protocol's primitives {r['protocol_floor_ratio']:.2f}x "
              f"(the best any sealed design / this protocol could measure here)")
        for line in r.get("breakdown_lines", []):
            print(line)
        if "secagg" in r:
            s = r["secagg"]
            print(f"        SecAgg+ server time {s['server_s']:.3f}s vs confidential server (sealing + total "
                  f"aggregation) {(c['aggregate_s'] + c['configure_s']):.3f}s: {r['secagg_server_ratio']:.1f}x "
                  f"(goal >= 20x)")


if __name__ == "__main__":
    main()
