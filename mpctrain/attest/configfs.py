"""CPU evidence from Linux configfs-tsm (6.7+), the one kernel interface for SEV-SNP and TDX guests.

Flow per report: mkdir a fresh, uniquely named entry under ``/sys/kernel/config/tsm/report``; read
``provider`` (``sev_guest`` → snp, ``tdx_guest`` → tdx); (SNP, optional) write ``privlevel``; write exactly
64 bytes to ``inblob``; read ``generation``, then ``outblob`` and ``auxblob``, then ``generation`` again.
The kernel bumps ``generation`` on every write to the entry, so a value other than our own write count,
or a change while we read, means another writer raced us: the entry is dropped and the flow retried a
bounded number of times. The entry is always removed (``finally``).

Filesystem access goes through the tiny ``TsmFs`` interface so tests can stand in a fake that behaves
like the kernel (configfs files react to writes, which a plain directory cannot imitate).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from pathlib import Path
from typing import Protocol

from mpctrain.attest.errors import AttestationError, Malformed
from mpctrain.attest.evidence import Evidence

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/sys/kernel/config/tsm/report"
INBLOB_BYTES = 64
PROVIDERS = {"sev_guest": "snp", "tdx_guest": "tdx"}
MAX_OUTBLOB_BYTES = 64 << 10  # TDX quotes are a few KiB; SNP reports 1184 bytes
MAX_AUXBLOB_BYTES = 256 << 10
MAX_SMALL_FILE = 64
DEFAULT_ATTEMPTS = 3
SNP_MAX_PRIVLEVEL = 3


class CollectionError(AttestationError):
    """Evidence could not be collected inside the TEE (no configfs-tsm, kernel error, race, short read)."""

    check = "collection"


class TsmFs(Protocol):
    """The four filesystem operations the attester needs; paths are absolute strings."""

    def mkdir(self, path: str) -> None: ...

    def rmdir(self, path: str) -> None: ...

    def write(self, path: str, data: bytes) -> None: ...

    def read(self, path: str, limit: int) -> bytes: ...


class OsTsmFs:
    """The real thing: plain ``os`` calls on configfs. Writes must land in one ``write(2)``."""

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o700)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def write(self, path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(errno.EIO, f"short write: {written} of {len(data)} bytes", path)

    def read(self, path: str, limit: int) -> bytes:
        with open(path, "rb") as fh:
            return fh.read(limit + 1)


class ConfigfsTsmAttester:
    """Implements ``mpctrain.attest.backend.Attester`` on configfs-tsm; ``kind`` comes from ``provider``.

    ``privlevel`` (SNP only, 0..3) asks for a report at that VMPL; ``attempts`` bounds the retries
    after a generation race. Construction probes the provider once, so a VM without configfs-tsm
    fails at start with an actionable ``CollectionError`` rather than at the first ``GetEvidence``.
    """

    def __init__(
        self,
        root: str | Path = DEFAULT_ROOT,
        privlevel: int | None = None,
        *,
        fs: TsmFs | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        if privlevel is not None and (
            not isinstance(privlevel, int) or isinstance(privlevel, bool) or not 0 <= privlevel <= SNP_MAX_PRIVLEVEL
        ):
            raise CollectionError("privlevel must be an integer 0..3 (the SNP VMPL to report at)",
                                  field="privlevel", expected="0..3", actual=privlevel)
        if attempts < 1:
            raise CollectionError("attempts must be at least 1", field="attempts", actual=attempts)
        self.root = str(root)
        self.privlevel = privlevel
        self.attempts = attempts
        self._fs: TsmFs = fs or OsTsmFs()
        self.kind = self._probe()
        if privlevel is not None and self.kind != "snp":
            raise CollectionError("privlevel applies only to SEV-SNP guests; remove it for TDX",
                                  field="privlevel", expected=None, actual=privlevel)

    # ------------------------------------------------------------------ public

    def attest(self, report_data: bytes) -> Evidence:
        """Collect one report/quote whose REPORT_DATA is ``report_data`` (exactly 64 bytes)."""
        if not isinstance(report_data, bytes | bytearray) or len(report_data) != INBLOB_BYTES:
            size = len(report_data) if isinstance(report_data, bytes | bytearray) else type(report_data).__name__
            raise CollectionError("report data must be exactly 64 bytes (the evidence binding)",
                                  field="inblob", expected=INBLOB_BYTES, actual=size)
        last: CollectionError | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                return self._once(bytes(report_data))
            except _Raced as exc:
                last = CollectionError(
                    "another process wrote to the configfs-tsm report entry while we read it "
                    f"({self.attempts} attempts); make sure only one agent collects evidence",
                    field="generation", expected=exc.expected, actual=exc.actual)
                log.warning("configfs-tsm generation race (attempt %d/%d)", attempt, self.attempts)
        assert last is not None
        raise last

    # ------------------------------------------------------------------ internals

    def _probe(self) -> str:
        entry = self._mkdir()
        try:
            return self._provider(entry)
        finally:
            self._rmdir(entry)

    def _once(self, report_data: bytes) -> Evidence:
        entry = self._mkdir()
        try:
            kind = self._provider(entry)
            if kind != self.kind:
                raise CollectionError("configfs-tsm provider changed since start", field="provider",
                                      expected=self.kind, actual=kind)
            writes = 0
            if self.privlevel is not None:
                self._write(entry, "privlevel", str(self.privlevel).encode())
                writes += 1
            self._write(entry, "inblob", report_data)
            writes += 1
            before = self._generation(entry)
            if before != writes:
                raise _Raced(writes, before)
            outblob = self._read(entry, "outblob", MAX_OUTBLOB_BYTES)
            auxblob = self._read(entry, "auxblob", MAX_AUXBLOB_BYTES, optional=True) if kind == "snp" else b""
            after = self._generation(entry)
            if after != before:
                raise _Raced(before, after)
        finally:
            self._rmdir(entry)
        return Evidence(kind=kind, data=_check_outblob(kind, outblob), certs=_certs(auxblob))

    def _path(self, entry: str, name: str) -> str:
        return f"{entry}/{name}"

    def _mkdir(self) -> str:
        entry = f"{self.root}/mpctrain-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            self._fs.mkdir(entry)
        except FileNotFoundError as exc:
            raise CollectionError(
                f"configfs-tsm is not available ({self.root} missing): run inside an SEV-SNP or TDX guest on "
                "Linux 6.7+ with configfs mounted (mount -t configfs none /sys/kernel/config), or set "
                'attester = "sim" in aggregator.toml for a simulation', field="root", actual=self.root) from exc
        except OSError as exc:
            raise CollectionError(f"cannot create a configfs-tsm report entry under {self.root}: "
                                  f"{exc.strerror or exc}; the agent needs write access (root or a tsm group)",
                                  field="root", actual=self.root) from exc
        return entry

    def _rmdir(self, entry: str) -> None:
        try:
            self._fs.rmdir(entry)
        except OSError as exc:  # never mask the real error; a leftover entry is only clutter
            log.warning("could not remove configfs-tsm entry %s: %s", entry, exc)

    def _provider(self, entry: str) -> str:
        raw = self._read(entry, "provider", MAX_SMALL_FILE, optional=True)
        name = raw.decode("ascii", "replace").strip()
        if not name:
            raise CollectionError("configfs-tsm entry has no provider: no TSM driver is loaded "
                                  "(load sev-guest or tdx-guest)", field="provider")
        kind = PROVIDERS.get(name)
        if kind is None:
            raise CollectionError("unknown configfs-tsm provider; this build supports SEV-SNP and TDX guests",
                                  field="provider", expected=sorted(PROVIDERS), actual=name)
        return kind

    def _generation(self, entry: str) -> int:
        raw = self._read(entry, "generation", MAX_SMALL_FILE).strip()
        try:
            return int(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CollectionError("configfs-tsm generation is not a number", field="generation",
                                  actual=raw[:MAX_SMALL_FILE]) from exc

    def _write(self, entry: str, name: str, data: bytes) -> None:
        try:
            self._fs.write(self._path(entry, name), data)
        except OSError as exc:
            hint = " (privlevel below privlevel_floor?)" if name == "privlevel" else ""
            raise CollectionError(f"kernel refused the write to {name}: {exc.strerror or exc}{hint}",
                                  field=name) from exc

    def _read(self, entry: str, name: str, limit: int, *, optional: bool = False) -> bytes:
        try:
            data = self._fs.read(self._path(entry, name), limit)
        except FileNotFoundError:
            if optional:
                return b""
            raise CollectionError(f"configfs-tsm entry lacks {name}; kernel too old for this flow?",
                                  field=name) from None
        except OSError as exc:
            raise CollectionError(f"reading {name} failed: {exc.strerror or exc} (the host's quote service or "
                                  "the PSP may be unavailable)", field=name) from exc
        if len(data) > limit:
            raise CollectionError(f"{name} is larger than expected", field=name, expected=f"<={limit}",
                                  actual=len(data))
        return data


class _Raced(Exception):
    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"generation {actual}, expected {expected}")
        self.expected = expected
        self.actual = actual


def _check_outblob(kind: str, outblob: bytes) -> bytes:
    """Refuse empty or short output now, where the operator can act, not at a remote verifier."""
    if not outblob:
        raise CollectionError("outblob is empty: the TEE produced no report (for TDX check the host's quote "
                              "generation service, e.g. qgsd)", field="outblob", actual=0)
    try:
        if kind == "snp":
            from mpctrain.attest.snp import parse_report

            parse_report(outblob)
        else:
            from mpctrain.attest.tdx import parse_quote

            parse_quote(outblob)
    except Malformed as exc:
        raise CollectionError(f"outblob is not a well-formed {kind} report (short read?): {exc}",
                              field="outblob", actual=len(outblob)) from exc
    return outblob


def _certs(auxblob: bytes) -> dict[str, bytes]:
    """SNP certificate table → ``vcek``/``vlek``/``ask``/``ark``; empty when the host provisioned none."""
    if not auxblob or not any(auxblob):
        return {}
    from mpctrain.attest.snp import parse_cert_table

    try:
        return parse_cert_table(auxblob)
    except Malformed as exc:
        raise CollectionError(f"auxblob is not a valid SNP certificate table (host misconfiguration): {exc}",
                              field="auxblob", actual=len(auxblob)) from exc
