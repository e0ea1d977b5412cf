"""configfs-tsm attester against a fake kernel that reacts to writes like the real configfs-tsm does."""

from __future__ import annotations

import errno
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpctrain.attest import Collateral, Evidence, Policy, verify_evidence
from mpctrain.attest.configfs import DEFAULT_ROOT, CollectionError, ConfigfsTsmAttester, OsTsmFs
from mpctrain.attest.snp import parse_report

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROOT = "/fake/tsm/report"
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")


def cert_table(entries: list[tuple[uuid.UUID, bytes]]) -> bytes:
    """A GHCB certificate table as the host hands it to the guest (with trailing padding)."""
    header = bytearray()
    body = bytearray()
    offset = 24 * (len(entries) + 1)
    for guid, blob in entries:
        header += guid.bytes + struct.pack("<II", offset + len(body), len(blob))
        body += blob
    return bytes(header + bytes(24) + body + bytes(100))


@dataclass
class Entry:
    generation: int = 0
    inblob: bytes | None = None
    privlevel: int | None = None


@dataclass
class FakeKernel:
    """configfs-tsm semantics: entries under ``root``; every write bumps ``generation``."""

    provider: str | None
    outblob: bytes
    auxblob: bytes = b""
    root: str = ROOT
    entries: dict[str, Entry] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    inblobs: list[bytes] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    on_read: Callable[[FakeKernel, str, str], None] | None = None  # hook: simulate another writer
    present: bool = True

    def mkdir(self, path: str) -> None:
        self.calls.append(("mkdir", path))
        parent = path.rpartition("/")[0]
        if not self.present or parent != self.root:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if path in self.entries:
            raise FileExistsError(errno.EEXIST, "exists", path)
        self.entries[path] = Entry()

    def rmdir(self, path: str) -> None:
        self.calls.append(("rmdir", path))
        self.entries.pop(path)
        self.removed.append(path)

    def _split(self, path: str) -> tuple[Entry, str]:
        entry, _, name = path.rpartition("/")
        if entry not in self.entries:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return self.entries[entry], name

    def write(self, path: str, data: bytes) -> None:
        self.calls.append(("write", path))
        entry, name = self._split(path)
        if name == "inblob":
            assert len(data) == 64, "the kernel only takes 64-byte inblobs"
            entry.inblob = data
            self.inblobs.append(data)
        elif name == "privlevel":
            assert self.provider == "sev_guest"
            entry.privlevel = int(data)
        else:
            raise PermissionError(errno.EACCES, "read-only", path)
        entry.generation += 1

    def read(self, path: str, limit: int) -> bytes:
        self.calls.append(("read", path))
        entry, name = self._split(path)
        if self.on_read is not None:
            self.on_read(self, path.rpartition("/")[0], name)
        if name == "provider":
            if self.provider is None:
                raise FileNotFoundError(errno.ENOENT, "no provider", path)
            return (self.provider + "\n").encode()[: limit + 1]
        if name == "generation":
            return f"{entry.generation}\n".encode()
        if name == "outblob":
            if entry.inblob is None:
                raise OSError(errno.EINVAL, "Invalid argument", path)
            return self.outblob[: limit + 1]
        if name == "auxblob":
            return self.auxblob[: limit + 1]
        raise FileNotFoundError(errno.ENOENT, "No such file", path)


@pytest.fixture(scope="module")
def snp_report(vectors: Path) -> bytes:
    return (vectors / "snp" / "milan_v2_report.bin").read_bytes()


@pytest.fixture(scope="module")
def snp_auxblob(vectors: Path) -> bytes:
    vcek = (vectors / "snp" / "milan_v2_vcek.der").read_bytes()
    ask, ark = x509.load_pem_x509_certificates((vectors / "snp" / "ask_ark_milan.pem").read_bytes())
    der = serialization.Encoding.DER
    return cert_table([(VCEK_GUID, vcek), (ASK_GUID, ask.public_bytes(der)), (ARK_GUID, ark.public_bytes(der))])


@pytest.fixture(scope="module")
def tdx_quote(vectors: Path) -> bytes:
    return (vectors / "tdx" / "spr_v4_quote.dat").read_bytes()


def data(i: int = 7) -> bytes:
    return bytes([i]) * 64


# ------------------------------------------------------------------ the flow


def test_snp_flow_collects_verifiable_evidence(snp_report, snp_auxblob, vector_time) -> None:
    kernel = FakeKernel("sev_guest", snp_report, snp_auxblob)
    attester = ConfigfsTsmAttester(ROOT, fs=kernel)
    assert attester.kind == "snp"
    ev = attester.attest(data())
    assert kernel.inblobs == [data()]
    assert ev.kind == "snp" and ev.data == snp_report
    assert sorted(ev.certs) == ["ark", "ask", "vcek"]
    # The cert table's certificates are enough: no cache needed, the report verifies end to end.
    claims = verify_evidence(ev, parse_report(snp_report).report_data, Policy.default(), vector_time, Collateral())
    assert claims.backend == "snp" and claims.product == "Milan"
    # Probe entry + collection entry, each created once and removed once, nothing left behind.
    assert kernel.entries == {}
    made = [p for op, p in kernel.calls if op == "mkdir"]
    assert sorted(made) == sorted(kernel.removed) and len(set(made)) == 2
    assert all(p.startswith(ROOT + "/mpctrain-") for p in made)


def test_call_order_generation_around_reads(snp_report, snp_auxblob) -> None:
    kernel = FakeKernel("sev_guest", snp_report, snp_auxblob)
    attester = ConfigfsTsmAttester(ROOT, fs=kernel)
    kernel.calls.clear()
    attester.attest(data())
    ops = [(op, p.rpartition("/")[2]) for op, p in kernel.calls]
    entry_name = kernel.calls[0][1].rpartition("/")[2]
    assert ops == [("mkdir", entry_name), ("read", "provider"), ("write", "inblob"), ("read", "generation"),
                   ("read", "outblob"), ("read", "auxblob"), ("read", "generation"), ("rmdir", entry_name)]


def test_privlevel_written_and_counted(snp_report, snp_auxblob) -> None:
    seen: list[int | None] = []

    def spy(k: FakeKernel, entry: str, name: str) -> None:
        if name == "outblob":
            seen.append(k.entries[entry].privlevel)

    kernel = FakeKernel("sev_guest", snp_report, snp_auxblob, on_read=spy)
    ConfigfsTsmAttester(ROOT, privlevel=2, fs=kernel).attest(data())
    assert seen == [2]


def test_snp_without_cert_table_ships_no_certs(snp_report) -> None:
    ev = ConfigfsTsmAttester(ROOT, fs=FakeKernel("sev_guest", snp_report, b"")).attest(data())
    assert ev.certs == {}


def test_tdx_flow(tdx_quote) -> None:
    kernel = FakeKernel("tdx_guest", tdx_quote, b"should not be read")
    attester = ConfigfsTsmAttester(ROOT, fs=kernel)
    assert attester.kind == "tdx"
    ev = attester.attest(data(3))
    assert ev == Evidence("tdx", tdx_quote, {})
    assert kernel.inblobs == [data(3)]
    assert not any(p.endswith("/auxblob") for _, p in kernel.calls)


# ------------------------------------------------------------------ failures


def test_generation_race_retried_then_succeeds(snp_report, snp_auxblob) -> None:
    raced = {"n": 0}

    def other_writer(k: FakeKernel, entry: str, name: str) -> None:
        if name == "outblob" and raced["n"] == 0:
            raced["n"] += 1
            k.entries[entry].generation += 1  # someone rewrote inblob between our reads

    kernel = FakeKernel("sev_guest", snp_report, snp_auxblob, on_read=other_writer)
    ev = ConfigfsTsmAttester(ROOT, fs=kernel).attest(data())
    assert ev.data == snp_report and raced["n"] == 1
    assert len(kernel.inblobs) == 2 and kernel.entries == {}


def test_generation_race_every_time_is_typed_error(snp_report, snp_auxblob) -> None:
    def other_writer(k: FakeKernel, entry: str, name: str) -> None:
        if name == "auxblob":
            k.entries[entry].generation += 1

    kernel = FakeKernel("sev_guest", snp_report, snp_auxblob, on_read=other_writer)
    attester = ConfigfsTsmAttester(ROOT, fs=kernel, attempts=3)
    with pytest.raises(CollectionError) as err:
        attester.attest(data())
    assert err.value.field == "generation" and "3 attempts" in str(err.value)
    assert len(kernel.inblobs) == 3
    assert kernel.entries == {}  # every attempt's entry removed


def test_foreign_write_before_our_read_detected(snp_report, snp_auxblob) -> None:
    def early(k: FakeKernel, entry: str, name: str) -> None:
        if name == "generation" and k.entries[entry].generation == 1:
            k.entries[entry].generation = 5

    kernel = FakeKernel("sev_guest", snp_report, snp_auxblob, on_read=early)
    with pytest.raises(CollectionError) as err:
        ConfigfsTsmAttester(ROOT, fs=kernel, attempts=2).attest(data())
    assert err.value.expected == 1 and err.value.actual == 5
    assert not any(p.endswith("/outblob") for _, p in kernel.calls)


@pytest.mark.parametrize("cut", [0, 1, 100, 1183])
def test_short_outblob_is_typed_error(snp_report, cut) -> None:
    kernel = FakeKernel("sev_guest", snp_report[:cut])
    with pytest.raises(CollectionError) as err:
        ConfigfsTsmAttester(ROOT, fs=kernel).attest(data())
    assert err.value.field == "outblob"
    assert kernel.entries == {}


def test_short_tdx_quote_is_typed_error(tdx_quote) -> None:
    with pytest.raises(CollectionError, match="tdx"):
        ConfigfsTsmAttester(ROOT, fs=FakeKernel("tdx_guest", tdx_quote[:600])).attest(data())


def test_oversized_outblob_refused(snp_report) -> None:
    with pytest.raises(CollectionError, match="larger"):
        ConfigfsTsmAttester(ROOT, fs=FakeKernel("sev_guest", bytes(200_000))).attest(data())


@pytest.mark.parametrize("size", [0, 32, 63, 65, 128])
def test_inblob_wrong_size_refused_before_any_write(snp_report, size) -> None:
    kernel = FakeKernel("sev_guest", snp_report)
    attester = ConfigfsTsmAttester(ROOT, fs=kernel)
    kernel.calls.clear()
    with pytest.raises(CollectionError) as err:
        attester.attest(bytes(size))
    assert err.value.field == "inblob" and err.value.actual == size
    assert kernel.calls == []


def test_inblob_not_bytes_refused(snp_report) -> None:
    with pytest.raises(CollectionError):
        ConfigfsTsmAttester(ROOT, fs=FakeKernel("sev_guest", snp_report)).attest("x" * 64)  # type: ignore[arg-type]


def test_missing_provider_is_typed_error_and_entry_removed(snp_report) -> None:
    kernel = FakeKernel(None, snp_report)
    with pytest.raises(CollectionError, match="sev-guest or tdx-guest"):
        ConfigfsTsmAttester(ROOT, fs=kernel)
    assert kernel.entries == {} and len(kernel.removed) == 1


@pytest.mark.parametrize("provider", ["arm_cca_guest", "", "garbage\x00\xff"])
def test_unknown_provider(snp_report, provider) -> None:
    kernel = FakeKernel(provider, snp_report)
    with pytest.raises(CollectionError) as err:
        ConfigfsTsmAttester(ROOT, fs=kernel)
    assert err.value.field == "provider"
    assert kernel.entries == {}


def test_missing_configfs_is_actionable() -> None:
    with pytest.raises(CollectionError, match=r'attester = "sim" in aggregator\.toml'):
        ConfigfsTsmAttester(ROOT, fs=FakeKernel("sev_guest", b"", present=False))


def test_real_fs_missing_root(tmp_path: Path) -> None:
    with pytest.raises(CollectionError, match="not available"):
        ConfigfsTsmAttester(tmp_path / "no" / "tsm")


def test_default_root_absent_here() -> None:
    if Path(DEFAULT_ROOT).exists():  # a real confidential VM: the probe must then succeed
        assert ConfigfsTsmAttester().kind in ("snp", "tdx")
    else:
        with pytest.raises(CollectionError):
            ConfigfsTsmAttester()


def test_rmdir_called_when_read_fails(snp_report) -> None:
    def broken(k: FakeKernel, entry: str, name: str) -> None:
        if name == "outblob":
            raise OSError(errno.EIO, "Input/output error")

    kernel = FakeKernel("sev_guest", snp_report, on_read=broken)
    with pytest.raises(CollectionError, match="Input/output error"):
        ConfigfsTsmAttester(ROOT, fs=kernel).attest(data())
    assert kernel.entries == {} and len(kernel.removed) == 2


def test_rmdir_failure_does_not_mask_result(snp_report) -> None:
    class Sticky(FakeKernel):
        def rmdir(self, path: str) -> None:
            self.calls.append(("rmdir", path))
            raise OSError(errno.EBUSY, "busy", path)

    ev = ConfigfsTsmAttester(ROOT, fs=Sticky("sev_guest", snp_report)).attest(data())
    assert ev.data == snp_report


def test_kernel_refuses_write(snp_report) -> None:
    class Refusing(FakeKernel):
        def write(self, path: str, data: bytes) -> None:
            raise OSError(errno.EINVAL, "Invalid argument", path)

    kernel = Refusing("sev_guest", snp_report)
    with pytest.raises(CollectionError, match="privlevel_floor"):
        ConfigfsTsmAttester(ROOT, privlevel=0, fs=kernel).attest(data())
    assert kernel.entries == {}


def test_garbage_cert_table_is_typed_error(snp_report) -> None:
    bad = uuid.UUID(int=1).bytes + struct.pack("<II", 24, 10_000) + bytes(24)
    with pytest.raises(CollectionError) as err:
        ConfigfsTsmAttester(ROOT, fs=FakeKernel("sev_guest", snp_report, bad)).attest(data())
    assert err.value.field == "auxblob"


def test_garbage_generation(snp_report) -> None:
    class Weird(FakeKernel):
        def read(self, path: str, limit: int) -> bytes:
            if path.endswith("/generation"):
                return b"not-a-number"
            return super().read(path, limit)

    with pytest.raises(CollectionError, match="generation"):
        ConfigfsTsmAttester(ROOT, fs=Weird("sev_guest", snp_report)).attest(data())


@pytest.mark.parametrize("level", [-1, 4, True, "1"])
def test_bad_privlevel(snp_report, level) -> None:
    with pytest.raises(CollectionError):
        ConfigfsTsmAttester(ROOT, privlevel=level, fs=FakeKernel("sev_guest", snp_report))  # type: ignore[arg-type]


def test_privlevel_refused_on_tdx(tdx_quote) -> None:
    with pytest.raises(CollectionError, match="TDX"):
        ConfigfsTsmAttester(ROOT, privlevel=0, fs=FakeKernel("tdx_guest", tdx_quote))


def test_os_fs_roundtrip(tmp_path: Path) -> None:
    fs = OsTsmFs()
    d = str(tmp_path / "entry")
    fs.mkdir(d)
    Path(d, "inblob").touch()  # configfs attributes exist as soon as the entry does
    fs.write(d + "/inblob", b"x" * 64)
    assert fs.read(d + "/inblob", 10) == b"x" * 11  # limit + 1: lets the caller see "too large"
    Path(d, "inblob").unlink()
    fs.rmdir(d)
    assert not Path(d).exists()


@settings(max_examples=80, deadline=None)
@given(provider=st.sampled_from(["sev_guest", "tdx_guest"]), outblob=st.binary(max_size=1300),
       auxblob=st.binary(max_size=200))
def test_fuzz_kernel_output_gives_evidence_or_collection_error(provider, outblob, auxblob) -> None:
    """Whatever bytes the kernel (or a hostile host behind it) returns: evidence or CollectionError."""
    kernel = FakeKernel(provider, outblob, auxblob)
    try:
        ev = ConfigfsTsmAttester(ROOT, fs=kernel).attest(data())
    except CollectionError:
        pass
    else:
        assert ev.data == outblob
    assert kernel.entries == {}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=400), flip=st.integers(min_value=0, max_value=399))
def test_fuzz_truncated_or_flipped_cert_table(snp_report, snp_auxblob, cut, flip) -> None:
    table = bytearray(snp_auxblob[: max(cut, 0)] if cut < 400 else snp_auxblob)
    if table and flip < len(table):
        table[flip] ^= 0xFF
    try:
        ev = ConfigfsTsmAttester(ROOT, fs=FakeKernel("sev_guest", snp_report, bytes(table))).attest(data())
    except CollectionError as exc:
        assert exc.field == "auxblob"
    else:
        assert set(ev.certs) <= {"vcek", "vlek", "ask", "ark"}
