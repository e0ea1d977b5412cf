#!/usr/bin/env python3
"""Sealed shard upload vs the same bytes unencrypted, over the same loopback gRPC server, same run.

The aggregator runs in a child process (so its memory is its own): the product's Data service plus a
benchmark-only servicer that takes raw bytes in the same chunking with the same per-chunk
acknowledgements and the same in-memory placement. The party seals on the fly (AES-256-GCM STREAM,
header HPKE-wrapped to the attested enclave key) and the enclave opens every chunk into the shard buffer.

    python scripts/bench_ingest.py                 # 256 MiB, 1 MiB chunks, best of 3
    python scripts/bench_ingest.py --mib 64 --rounds 1

Goals (issue 3): sealed throughput >= 0.8 x plain; aggregator peak RSS growth <= payload + 64 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAIN_METHOD = "/bench.PlainIngest/Upload"
MiB = 1 << 20


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def server_main(conn, workdir: str, payload: int) -> None:  # runs in the child process
    from concurrent import futures

    import grpc

    from mpctrain.attest.sim import ROOT_PEM, SimAttester, create_sim_root, root_pin
    from mpctrain.enclave.events import MemoryEventSink
    from mpctrain.enclave.identity import EnclaveIdentity
    from mpctrain.enclave.limits import Limits
    from mpctrain.enclave.server import Aggregator, build_info
    from mpctrain.wire import data_pb2

    root = Path(workdir) / "sim-root"
    if not (root / ROOT_PEM).exists():
        create_sim_root(root)
    cfg_digest = hashlib.sha256(b"bench").digest()
    attester = SimAttester(root, config_digest=cfg_digest)
    identity = EnclaveIdentity.generate(attester, build_info(cfg_digest))
    limits = Limits(max_shard_bytes=payload + MiB, max_chunks=payload // MiB + 16)
    agg = Aggregator(identity, limits=limits, events=MemoryEventSink(), device="cpu")

    def plain_upload(request_iterator, context):
        """Same messages and acks as the Data service, minus authentication, sealing and opening."""
        first = next(request_iterator)
        total = int.from_bytes(first.open.header[:8], "big")
        buf = bytearray(total)
        yield data_pb2.UploadAck(next_index=0)
        received = 0
        for msg in request_iterator:
            c = msg.chunk
            frame = c.frame
            off = c.index * MiB
            buf[off:off + len(frame)] = frame
            received += len(frame)
            yield data_pb2.UploadAck(next_index=c.index + 1, received_bytes=received, complete=c.last)
        del buf

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=agg.server_options())
    agg.add_services(server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.PlainIngest", {"Upload": grpc.stream_stream_rpc_method_handler(
            plain_upload, request_deserializer=data_pb2.UploadRequest.FromString,
            response_serializer=data_pb2.UploadAck.SerializeToString)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    agg.server, agg.port = server, port
    conn.send({"port": port, "policy": {"backends": ["sim"], "sim": {
        "roots": [root_pin(root / ROOT_PEM)], "measurements": [attester.measurement.hex()]}}})
    while True:
        cmd = conn.recv()
        if cmd == "stop":
            break
        if cmd == "reset_peak":
            Path("/proc/self/clear_refs").write_text("5")
            conn.send(_rss_kib("VmRSS"))
        elif cmd == "peak":
            conn.send(_rss_kib("VmHWM"))
        elif cmd == "drop_shards":
            for job in agg.store.list():
                for up in job.shards.values():
                    up.buf = bytearray()
            for key in list(agg.uploads.by_object):
                agg.uploads.by_object[key].buf = bytearray()
            conn.send(_rss_kib("VmRSS"))
    server.stop(1).wait()


def plain_send(channel, data: memoryview, window: int = 8) -> float:
    """The same bytes in the same UploadRequest/UploadAck messages, unencrypted."""
    from mpctrain.wire import data_pb2

    call = channel.stream_stream(PLAIN_METHOD, request_serializer=data_pb2.UploadRequest.SerializeToString,
                                 response_deserializer=data_pb2.UploadAck.FromString)
    n = -(-len(data) // MiB)
    acked = [0]
    cond = threading.Condition()

    def requests():
        yield data_pb2.UploadRequest(open=data_pb2.UploadOpen(job_id="plain", header=len(data).to_bytes(8, "big")))
        for i in range(n):
            with cond:
                while i - acked[0] >= window:
                    cond.wait(1.0)
            req = data_pb2.UploadRequest()  # built like the party uploader builds its requests
            req.chunk.index = i
            req.chunk.frame = bytes(data[i * MiB:(i + 1) * MiB])
            req.chunk.last = i == n - 1
            yield req

    t = time.perf_counter()
    for ack in call(requests()):
        with cond:
            acked[0] = ack.next_index
            cond.notify_all()
        if ack.complete:
            break
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256, help="payload size in MiB")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is reported")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args(argv)
    payload = args.mib * MiB

    import grpc

    from mpctrain.attest import Policy
    from mpctrain.jobs import JobManifest, sign_consent
    from mpctrain.party.attestation import attest_aggregator
    from mpctrain.party.client import AggregatorClient
    from mpctrain.party.uploader import ShardUpload
    from mpctrain.seal.keys import IdentityKey, KemKey

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as work:
        proc = ctx.Process(target=server_main, args=(child, work, payload), daemon=True)
        proc.start()
        info = parent.recv()
        target = f"127.0.0.1:{info['port']}"
        parties = {p: (IdentityKey.generate(), KemKey.generate()) for p in ("party-a", "party-b")}
        manifest_base = {
            "format": "mpctrain.job/v1", "mode": "pooled", "proposer": "party-a", "quorum": 2,
            "parties": [{"id": p, "role": "data", "identity_public": i.public_bytes().hex(), "kem_alg": k.alg,
                         "kem_public": k.public_bytes().hex()} for p, (i, k) in parties.items()],
            "schema": {"label": "y", "features": ["x"]}, "model": {"name": "logreg"},
            "training": {"epochs": 1, "batch_size": 32, "lr": 0.1, "seed": 0}, "privacy": {},
            "recipients": ["party-a"], "public_metrics": [], "enclave_policy": info["policy"],
            "expires": int(time.time()) + 3600,
        }
        ident_a = parties["party-a"][0]
        client = AggregatorClient(target, "party-a", ident_a, timeout=600)
        enclave = attest_aggregator(client, Policy.from_dict(info["policy"]))
        options = [("grpc.max_receive_message_length", 4 * MiB), ("grpc.max_send_message_length", 4 * MiB)]
        channel = grpc.insecure_channel(target, options=options)
        data = memoryview(os.urandom(payload))
        client_b = AggregatorClient(target, "party-b", parties["party-b"][0])
        plain_times: list[float] = []
        sealed_times: list[float] = []
        growth: list[int] = []
        for r in range(args.rounds):
            plain_times.append(plain_send(channel, data))
            parent.send("drop_shards")
            parent.recv()
            manifest = JobManifest.from_obj({**manifest_base, "job_id": f"bench-{r}"})
            client.propose(manifest)
            client.approve(sign_consent(manifest, "party-a", ident_a))
            client_b.approve(sign_consent(manifest, "party-b", parties["party-b"][0]))
            parent.send("reset_peak")
            before = parent.recv()
            up = ShardUpload(client, manifest.job_id, enclave, ident_a, "party-a", data, chunk_size=MiB)
            t = time.perf_counter()
            res = up.send()
            sealed_times.append(time.perf_counter() - t)
            assert res.complete, "sealed upload did not complete"
            parent.send("peak")
            growth.append(parent.recv() - before)
            parent.send("drop_shards")
            parent.recv()
        parent.send("stop")
        proc.join(10)
        client.close()
        client_b.close()
        channel.close()
    plain_mibs = args.mib / min(plain_times)
    sealed_mibs = args.mib / min(sealed_times)
    result = {
        "payload_mib": args.mib,
        "plain_mib_s": round(plain_mibs, 1),
        "sealed_mib_s": round(sealed_mibs, 1),
        "ratio": round(sealed_mibs / plain_mibs, 3),
        "ratio_goal": 0.8,
        "aggregator_peak_growth_mib": round(max(growth) / 1024, 1),
        "memory_goal_mib": args.mib + 64,
        "rounds": args.rounds,
        "plain_s": [round(x, 3) for x in plain_times],
        "sealed_s": [round(x, 3) for x in sealed_times],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"payload {args.mib} MiB over loopback gRPC, 1 MiB chunks, per-chunk acks, best of {args.rounds}")
        print(f"  plain  {result['plain_mib_s']:>8} MiB/s")
        print(f"  sealed {result['sealed_mib_s']:>8} MiB/s   ratio {result['ratio']} (goal >= 0.8)")
        print(f"  aggregator peak RSS growth during the sealed upload: {result['aggregator_peak_growth_mib']} MiB "
              f"(goal <= {result['memory_goal_mib']} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
