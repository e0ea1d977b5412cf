"""Intel TDX DCAP quote v4/v5 parser: fixed offsets, every length bounded, nothing trusted yet.

Parsing only splits bytes into fields; ``verifier`` checks signatures. Bytes after the quote's declared
end (zero padding, or go-tdx-guest's test marker) are outside every signature and are ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mpctrain.attest.errors import Malformed

HEADER_LEN = 48
QE_REPORT_LEN = 384
SIG_LEN = 64
ATT_KEY_LEN = 64
MAX_QUOTE_BYTES = 64 * 1024
MAX_CERT_DATA_BYTES = 32 * 1024

TDX_TEE_TYPE = 0x81
ECDSA_P256_KEY_TYPE = 2
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
CERT_DATA_QE_REPORT = 6
CERT_DATA_PCK_CHAIN = 5

BODY_TYPE_TDX10 = 2
BODY_TYPE_TDX15 = 3
BODY_LEN = {BODY_TYPE_TDX10: 584, BODY_TYPE_TDX15: 648}


@dataclass(frozen=True)
class TdReportBody:
    """The TD report body (TDX 1.0 fields; TDX 1.5 adds ``tee_tcb_svn2`` and ``mrservicetd``)."""

    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mrservicetd: bytes | None = None

    @property
    def debug(self) -> bool:
        """TD_ATTRIBUTES bit 0 (TUD.DEBUG): the host can read and change the TD's memory."""
        return bool(self.td_attributes[0] & 1)


@dataclass(frozen=True)
class QeReport:
    """The SGX report of Intel's quoting enclave, signed by the PCK key."""

    raw: bytes
    cpusvn: bytes
    miscselect: int
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    isvprodid: int
    isvsvn: int
    report_data: bytes


@dataclass(frozen=True)
class Quote:
    """A parsed quote. ``signed`` is the region the attestation key signs: header and body."""

    version: int
    body_type: int
    header: bytes
    qe_vendor_id: bytes
    body: TdReportBody
    signed: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain: bytes
    trailing_bytes: int


class _Reader:
    """Bounded cursor: every read checks the remaining length and raises Malformed otherwise."""

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def take(self, n: int, name: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise Malformed("quote truncated", field=name, expected=f"{n} bytes", actual=max(self.end - self.pos, 0))
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, name: str) -> int:
        return struct.unpack("<H", self.take(2, name))[0]

    def u32(self, name: str) -> int:
        return struct.unpack("<I", self.take(4, name))[0]


def _parse_body(raw: bytes, body_type: int) -> TdReportBody:
    r = _Reader(raw, 0, len(raw))
    fields = [r.take(n, name) for name, n in _BODY_FIELDS]
    extra: dict[str, bytes] = {}
    if body_type == BODY_TYPE_TDX15:
        extra = {"tee_tcb_svn2": r.take(16, "tee_tcb_svn2"), "mrservicetd": r.take(48, "mrservicetd")}
    (tee_tcb_svn, mrseam, mrsignerseam, seam_attr, td_attr, xfam, mrtd, mrconfigid, mrowner, mrownerconfig,
     rtmr0, rtmr1, rtmr2, rtmr3, report_data) = fields
    return TdReportBody(
        tee_tcb_svn=tee_tcb_svn, mrseam=mrseam, mrsignerseam=mrsignerseam, seam_attributes=seam_attr,
        td_attributes=td_attr, xfam=xfam, mrtd=mrtd, mrconfigid=mrconfigid, mrowner=mrowner,
        mrownerconfig=mrownerconfig, rtmrs=(rtmr0, rtmr1, rtmr2, rtmr3), report_data=report_data, **extra,
    )


_BODY_FIELDS = (
    ("tee_tcb_svn", 16), ("mrseam", 48), ("mrsignerseam", 48), ("seam_attributes", 8), ("td_attributes", 8),
    ("xfam", 8), ("mrtd", 48), ("mrconfigid", 48), ("mrowner", 48), ("mrownerconfig", 48), ("rtmr0", 48),
    ("rtmr1", 48), ("rtmr2", 48), ("rtmr3", 48), ("report_data", 64),
)


def _parse_qe_report(raw: bytes) -> QeReport:
    return QeReport(
        raw=raw,
        cpusvn=raw[0:16],
        miscselect=struct.unpack_from("<I", raw, 0x10)[0],
        attributes=raw[0x30:0x40],
        mrenclave=raw[0x40:0x60],
        mrsigner=raw[0x80:0xA0],
        isvprodid=struct.unpack_from("<H", raw, 0x100)[0],
        isvsvn=struct.unpack_from("<H", raw, 0x102)[0],
        report_data=raw[0x140:0x180],
    )


def parse_quote(data: bytes) -> Quote:
    """Split a v4 or v5 TDX quote into fields; raise ``Malformed`` on any structural error."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise Malformed("quote must be bytes", field="quote", actual=type(data).__name__)
    data = bytes(data)
    if len(data) > MAX_QUOTE_BYTES:
        raise Malformed("quote too large", field="quote", expected=f"<={MAX_QUOTE_BYTES} bytes", actual=len(data))
    r = _Reader(data, 0, len(data))
    header = r.take(HEADER_LEN, "header")
    version, key_type, tee_type = struct.unpack_from("<HHI", header, 0)
    if version not in (4, 5):
        raise Malformed("unsupported quote version", field="version", expected=[4, 5], actual=version)
    if key_type != ECDSA_P256_KEY_TYPE:
        raise Malformed("unsupported attestation key type", field="att_key_type", expected=2, actual=key_type)
    if tee_type != TDX_TEE_TYPE:
        raise Malformed("not a TDX quote", field="tee_type", expected=hex(TDX_TEE_TYPE), actual=hex(tee_type))
    vendor = header[12:28]
    if vendor != INTEL_QE_VENDOR_ID:
        raise Malformed("quote not produced by Intel's quoting enclave", field="qe_vendor_id",
                        expected=INTEL_QE_VENDOR_ID, actual=vendor)
    if version == 4:
        body_type = BODY_TYPE_TDX10
        body_len = BODY_LEN[body_type]
    else:
        body_type = r.u16("body_type")
        body_len = r.u32("body_size")
        if body_type not in BODY_LEN:
            raise Malformed("unsupported v5 body type (TDX needs 2 or 3)", field="body_type", expected=[2, 3],
                            actual=body_type)
        if body_len != BODY_LEN[body_type]:
            raise Malformed("v5 body size does not match its type", field="body_size",
                            expected=BODY_LEN[body_type], actual=body_len)
    body = _parse_body(r.take(body_len, "body"), body_type)
    signed = data[: r.pos]

    sig_len = r.u32("sig_data_len")
    sig_end = r.pos + sig_len
    if sig_end > len(data):
        raise Malformed("signature data runs past the end of the quote", field="sig_data_len",
                        expected=f"<={len(data) - r.pos}", actual=sig_len)
    s = _Reader(data, r.pos, sig_end)
    signature = s.take(SIG_LEN, "quote_signature")
    att_key = s.take(ATT_KEY_LEN, "attestation_key")
    cd_type = s.u16("cert_data_type")
    if cd_type != CERT_DATA_QE_REPORT:
        raise Malformed("outer certification data must be the QE report (type 6)", field="cert_data_type",
                        expected=CERT_DATA_QE_REPORT, actual=cd_type)
    cd_size = s.u32("cert_data_size")
    if s.pos + cd_size != sig_end:
        raise Malformed("certification data size does not match the signature data length",
                        field="cert_data_size", expected=sig_end - s.pos, actual=cd_size)
    qe_report = _parse_qe_report(s.take(QE_REPORT_LEN, "qe_report"))
    qe_sig = s.take(SIG_LEN, "qe_report_signature")
    auth_len = s.u16("qe_auth_data_len")
    auth = s.take(auth_len, "qe_auth_data")
    inner_type = s.u16("pck_cert_data_type")
    if inner_type != CERT_DATA_PCK_CHAIN:
        raise Malformed("QE certification data must be a PCK chain (type 5)", field="pck_cert_data_type",
                        expected=CERT_DATA_PCK_CHAIN, actual=inner_type)
    inner_size = s.u32("pck_cert_data_size")
    if inner_size > MAX_CERT_DATA_BYTES or s.pos + inner_size != sig_end:
        raise Malformed("PCK chain size does not match the signature data length", field="pck_cert_data_size",
                        expected=sig_end - s.pos, actual=inner_size)
    chain = s.take(inner_size, "pck_cert_chain")
    return Quote(
        version=version, body_type=body_type, header=header, qe_vendor_id=vendor, body=body, signed=signed,
        signature=signature, attestation_key=att_key, qe_report=qe_report, qe_report_signature=qe_sig,
        qe_auth_data=auth, pck_chain=chain, trailing_bytes=len(data) - sig_end,
    )
