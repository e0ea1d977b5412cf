"""The allocator setting the long-running roles apply: freed multi-megabyte buffers are reused, not re-faulted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mpctrain.memory import keep_freed_memory

PROBE = """
import resource, sys
if sys.argv[1] == "tuned":
    from mpctrain.memory import keep_freed_memory
    assert keep_freed_memory()
def churn():
    for _ in range(20):  # a message's life: several such buffers alive at once, then all freed
        held = [b"x" * (6 << 20) for _ in range(3)]  # written: every page touched
        del held
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=60)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_buffers_are_reused_instead_of_faulted_back_in():
    default, tuned = _faults("default"), _faults("tuned")
    assert default > 20 * 1500  # the freed heap was trimmed, and faulted back in: ~1500 faults per 6 MB
    assert tuned < 1000


def test_applied_once_with_both_thresholds_and_reported_off_glibc(monkeypatch):
    import mpctrain.memory as memory

    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def __init__(self, ok: bool) -> None:
            self.ok = ok

            def mallopt(option: int, value: int) -> int:
                calls.append((option, value))
                return int(self.ok)

            self.mallopt = mallopt

    monkeypatch.setattr(memory.sys, "platform", "linux")
    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: FakeLibc(True))
    assert keep_freed_memory() and keep_freed_memory()
    assert calls == [(memory.M_MMAP_THRESHOLD, memory.MMAP_THRESHOLD), (memory.M_TRIM_THRESHOLD, memory.TRIM_THRESHOLD)]
    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: FakeLibc(False))  # mallopt refuses
    assert keep_freed_memory() is False
    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: object())  # a C library without mallopt
    assert keep_freed_memory() is False
    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert keep_freed_memory() is False
