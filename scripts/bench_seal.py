"""Sealed-stream throughput against raw AES-256-GCM, and memory use independent of payload size.

Each payload is streamed from a generator of 1 MiB pieces (never one big buffer). "raw" is
AESGCM.encrypt_into/decrypt_into on one reused buffer: the ceiling for any chunked AES-GCM format.
"sealed" is seal_stream/open_stream (header, STREAM nonces, header-digest AD, re-chunking, checks).

    .venv/bin/python scripts/bench_seal.py [--sizes-mib 1 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from mpctrain.seal import IdentityKey, KemKey, open_stream, seal_stream

MIB = 1 << 20


def pieces(total: int, piece: bytes) -> Iterator[bytes]:
    """``total`` bytes as a stream of ``piece``-sized bytes objects (the last one shorter)."""
    left = total
    while left > 0:
        yield piece if left >= len(piece) else piece[:left]
        left -= len(piece)


def raw_encrypt(total: int, piece: bytes) -> int:
    aead, out, ad = AESGCM(os.urandom(32)), bytearray(len(piece) + 16), os.urandom(32)
    n = 0
    for i, p in enumerate(pieces(total, piece)):
        view = memoryview(out)[: len(p) + 16]
        aead.encrypt_into(os.urandom(7) + i.to_bytes(4, "big") + b"\x00", p, ad, view)
        n += len(view)
    return n


def raw_decrypt(frames: list[tuple[bytes, bytes]], ad: bytes, key: bytes, piece_len: int) -> int:
    aead, out = AESGCM(key), bytearray(piece_len)
    n = 0
    for nonce, frame in frames:
        view = memoryview(out)[: len(frame) - 16]
        aead.decrypt_into(nonce, frame, ad, view)
        n += len(view)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--chunk-kib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    sender, enclave = IdentityKey.generate(), KemKey.generate()
    chunk = args.chunk_kib * 1024
    piece = os.urandom(MIB)
    seal_kw = dict(sender=sender, sender_id="bench", recipients=[("enclave", "x25519", enclave.public_bytes())],
                   purpose="bench", job_id="job", object_id="obj", chunk_size=chunk)
    open_kw = dict(recipient_id="enclave", recipient_key=enclave, expected_sender_public=sender.public_bytes())

    def sealed_encrypt(total: int, reuse: bool = False) -> int:
        return sum(len(f) for f in seal_stream(pieces(total, piece), reuse_buffer=reuse, **seal_kw))

    def sealed_round_trip(total: int, reuse: bool = False) -> int:
        frames = seal_stream(pieces(total, piece), reuse_buffer=reuse, **seal_kw)
        return sum(len(p) for p in open_stream(frames, reuse_buffer=reuse, **open_kw))

    def raw_round_trip(total: int) -> int:
        key, ad = os.urandom(32), os.urandom(32)
        aead, enc, dec = AESGCM(key), bytearray(len(piece) + 16), bytearray(len(piece))
        n = 0
        for i, p in enumerate(pieces(total, piece)):
            nonce = b"\x00" * 7 + i.to_bytes(4, "big") + b"\x00"
            view = memoryview(enc)[: len(p) + 16]
            aead.encrypt_into(nonce, p, ad, view)
            out = memoryview(dec)[: len(p)]
            aead.decrypt_into(nonce, view, ad, out)
            n += len(out)
        return n

    def timed(fn: Callable[[int], int], total: int) -> tuple[float, float]:
        gc.collect()
        w, c = time.perf_counter(), time.process_time()
        fn(total)
        return time.perf_counter() - w, time.process_time() - c

    def peak_tracemalloc(fn: Callable[[int], int], total: int) -> int:
        gc.collect()
        tracemalloc.start()
        try:
            fn(total)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def fixed_costs() -> tuple[float, float]:
        from mpctrain.seal import StreamOpener, StreamSealer

        t0 = time.perf_counter()
        sealers = [StreamSealer(**seal_kw) for _ in range(50)]
        t1 = time.perf_counter()
        for s in sealers:
            StreamOpener(s.header_bytes, **open_kw)
        t2 = time.perf_counter()
        return (t1 - t0) / 50, (t2 - t1) / 50

    seal_ms, open_ms = fixed_costs()
    print(f"chunk {chunk // 1024} KiB, 1 MiB generator pieces, best of {args.repeat} interleaved rounds, "
          f"MB = 10^6 bytes, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"fixed per stream: header (HPKE wrap + Ed25519 sign) {seal_ms * 1e3:.2f} ms, "
          f"opener (verify + unwrap) {open_ms * 1e3:.2f} ms")
    print("raw = AESGCM encrypt_into/decrypt_into on reused buffers; sealed = seal_stream/open_stream yielding")
    print("new bytes per frame; reuse = the same with reuse_buffer=True (views into one buffer).")
    print("cpu = MB per CPU-second of this process (robust on a shared machine); wall = MB per elapsed second.")
    print(f"{'payload':>9} {'op':>10} {'clock':>5} {'raw':>7} {'sealed':>7} {'ratio':>6} {'reuse':>7} {'ratio':>6} "
          f"{'traced peak':>12} {'RSS growth':>11}")
    for size in args.sizes_mib:
        total = size * MIB
        for op, raw_fn, sealed_fn in (("seal", raw_encrypt_fn(piece), sealed_encrypt),
                                      ("seal+open", raw_round_trip, sealed_round_trip)):
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            runs: dict[str, list[tuple[float, float]]] = {"raw": [], "sealed": [], "reuse": []}
            for _ in range(args.repeat):
                runs["raw"].append(timed(raw_fn, total))
                runs["sealed"].append(timed(sealed_fn, total))
                runs["reuse"].append(timed(lambda t, fn=sealed_fn: fn(t, True), total))
            rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = peak_tracemalloc(sealed_fn, total)
            for clock, k in (("cpu", 1), ("wall", 0)):
                raw, sealed, reused = (total / 1e6 / max(min(r[k] for r in runs[n]), 1e-9)
                                       for n in ("raw", "sealed", "reuse"))
                mem = f"{peak / MIB:>8.1f} MiB {(rss1 - rss0) / 1024:>7.1f} MiB" if k else ""
                print(f"{size:>5} MiB {op:>10} {clock:>5} {raw:>7.0f} {sealed:>7.0f} {sealed / raw:>6.2f} "
                      f"{reused:>7.0f} {reused / raw:>6.2f} {mem}")


def raw_encrypt_fn(piece: bytes) -> Callable[[int], int]:
    return lambda total: raw_encrypt(total, piece)


if __name__ == "__main__":
    main()
