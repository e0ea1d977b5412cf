"""Strict, bounded parser for the SPDM 1.1 GET_MEASUREMENTS exchange an NVIDIA H100/H200 returns.

Evidence ``data`` is the request (37 bytes) immediately followed by the response. Every length field
is checked against what is actually there, so truncated, padded or garbage input raises ``Malformed``
before any cryptography runs. Layout (little-endian)::

    request   11 E0 p1 p2 | nonce (32) | slot (1)          p1 bit 0: signature requested; p2 0xFF: all blocks
    response  11 60 p1 p2 | n_blocks (1) | record_len (u24) | n_blocks x block | responder nonce (32)
              | opaque_len (u16) | opaque TLVs | signature (96, raw r||s P-384)
    block     index (1) | spec (1, 0x01 DMTF) | size (u16) | dmtf_type (1) | value_size (u16) | value (48)
    TLV       type (u16) | length (u16) | value
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from mpctrain.attest.errors import Malformed

SPDM_VERSION_1_1 = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
REQUEST_BYTES = 37
NONCE_BYTES = 32
SIGNATURE_BYTES = 96
DIGEST_BYTES = 48
DMTF_SPEC = 0x01
ALL_MEASUREMENTS = 0xFF
MAX_SLOT = 7
MAX_OPAQUE_BYTES = 1024
MAX_EVIDENCE_BYTES = 64 << 10
_BLOCK_HEADER = struct.Struct("<BBHBH")

# NVIDIA opaque-data field types (nvtrust OpaqueDataTypes) this verifier reads.
OPAQUE_DRIVER_VERSION = 3
OPAQUE_VBIOS_VERSION = 6
OPAQUE_CHIP_SKU = 15
OPAQUE_PROJECT = 17
OPAQUE_PROJECT_SKU = 18
OPAQUE_FWID = 20
_REQUIRED_OPAQUE = {
    OPAQUE_DRIVER_VERSION: "driver_version",
    OPAQUE_VBIOS_VERSION: "vbios_version",
    OPAQUE_CHIP_SKU: "chip_sku",
    OPAQUE_PROJECT: "project",
    OPAQUE_PROJECT_SKU: "project_sku",
    OPAQUE_FWID: "fwid",
}
MAX_TEXT_FIELD = 64


@dataclass(frozen=True)
class MeasurementBlock:
    """One DMTF measurement block; ``index`` is the SPDM block index (1..254)."""

    index: int
    dmtf_type: int
    value: bytes


@dataclass(frozen=True)
class GpuReport:
    """A parsed, not yet verified, GET_MEASUREMENTS exchange."""

    request_attributes: int
    request_operation: int
    requester_nonce: bytes
    slot: int
    blocks: tuple[MeasurementBlock, ...]
    responder_nonce: bytes
    opaque: dict[int, bytes]
    driver_version: str
    vbios_version: str
    project: str
    project_sku: str
    chip_sku: str
    fwid: bytes
    signed_bytes: bytes
    signature: bytes

    def measurement_digest(self) -> bytes:
        """SHA-384 over the block values concatenated in ascending block-index order."""
        return hashlib.sha384(b"".join(b.value for b in self.blocks)).digest()

    def measurements_by_rim_index(self) -> dict[int, bytes]:
        """Values keyed as NVIDIA's RIMs number them: SPDM block index minus one."""
        return {b.index - 1: b.value for b in self.blocks}


def parse_report(data: bytes) -> GpuReport:
    """Parse request ‖ response; raise ``Malformed`` naming the first field that is wrong."""
    if len(data) > MAX_EVIDENCE_BYTES:
        raise Malformed("GPU evidence too large", field="data", expected=f"<={MAX_EVIDENCE_BYTES}",
                        actual=len(data))
    if len(data) < REQUEST_BYTES + 8 + NONCE_BYTES + 2 + SIGNATURE_BYTES:
        raise Malformed("GPU evidence truncated", field="data", actual=len(data))
    req = data[:REQUEST_BYTES]
    if req[0] != SPDM_VERSION_1_1 or req[1] != GET_MEASUREMENTS:
        raise Malformed("request is not an SPDM 1.1 GET_MEASUREMENTS", field="request.header",
                        expected="11e0", actual=req[:2])
    attributes, operation = req[2], req[3]
    if not attributes & 0x01:
        raise Malformed("request did not ask for a signed response", field="request.param1",
                        expected="bit 0 set", actual=attributes)
    if operation != ALL_MEASUREMENTS:
        raise Malformed("request did not ask for all measurement blocks", field="request.param2",
                        expected=ALL_MEASUREMENTS, actual=operation)
    requester_nonce = req[4:36]
    slot = req[36]
    if slot > MAX_SLOT:
        raise Malformed("request slot id out of range", field="request.slot", expected=f"<={MAX_SLOT}", actual=slot)

    resp = data[REQUEST_BYTES:]
    if resp[0] != SPDM_VERSION_1_1 or resp[1] != MEASUREMENTS:
        raise Malformed("response is not an SPDM 1.1 MEASUREMENTS", field="response.header",
                        expected="1160", actual=resp[:2])
    if resp[3] & 0x0F != slot:
        raise Malformed("response slot differs from the request's", field="response.param2",
                        expected=slot, actual=resp[3] & 0x0F)
    n_blocks = resp[4]
    record_len = int.from_bytes(resp[5:8], "little")
    if n_blocks == 0:
        raise Malformed("response carries no measurement blocks", field="response.n_blocks", actual=0)
    record_end = 8 + record_len
    tail = NONCE_BYTES + 2 + SIGNATURE_BYTES
    if record_end + tail > len(resp):
        raise Malformed("measurement record runs past the response", field="response.record_len",
                        expected=f"<={len(resp) - 8 - tail}", actual=record_len)
    blocks = _parse_blocks(resp[8:record_end], n_blocks)

    off = record_end
    responder_nonce = resp[off : off + NONCE_BYTES]
    off += NONCE_BYTES
    opaque_len = int.from_bytes(resp[off : off + 2], "little")
    off += 2
    if opaque_len > MAX_OPAQUE_BYTES:
        raise Malformed("opaque data too long", field="response.opaque_len", expected=f"<={MAX_OPAQUE_BYTES}",
                        actual=opaque_len)
    if off + opaque_len + SIGNATURE_BYTES != len(resp):
        raise Malformed("response length does not match its opaque length and a 96-byte signature",
                        field="response.opaque_len", expected=len(resp) - off - SIGNATURE_BYTES, actual=opaque_len)
    opaque = _parse_opaque(resp[off : off + opaque_len])
    fields = _opaque_fields(opaque)
    return GpuReport(
        request_attributes=attributes,
        request_operation=operation,
        requester_nonce=requester_nonce,
        slot=slot,
        blocks=blocks,
        responder_nonce=responder_nonce,
        opaque=opaque,
        driver_version=fields["driver_version"],
        vbios_version=fields["vbios_version"],
        project=fields["project"],
        project_sku=fields["project_sku"],
        chip_sku=fields["chip_sku"],
        fwid=opaque[OPAQUE_FWID],
        signed_bytes=data[:-SIGNATURE_BYTES],
        signature=data[-SIGNATURE_BYTES:],
    )


def _parse_blocks(record: bytes, n_blocks: int) -> tuple[MeasurementBlock, ...]:
    blocks: list[MeasurementBlock] = []
    off = 0
    last_index = 0
    for i in range(n_blocks):
        if off + _BLOCK_HEADER.size > len(record):
            raise Malformed("measurement record ends inside a block header", field=f"block[{i}]",
                            actual=len(record) - off)
        index, spec, size, dmtf_type, value_size = _BLOCK_HEADER.unpack_from(record, off)
        if not 1 <= index <= 254 or index <= last_index:
            raise Malformed("measurement block indices must be 1..254 and strictly ascending",
                            field=f"block[{i}].index", expected=f">{last_index}", actual=index)
        if spec != DMTF_SPEC:
            raise Malformed("measurement block is not in DMTF format", field=f"block[{i}].spec",
                            expected=DMTF_SPEC, actual=spec)
        if value_size != DIGEST_BYTES or size != 3 + value_size or dmtf_type & 0x80:
            raise Malformed("measurement block is not a 48-byte SHA-384 digest", field=f"block[{i}].size",
                            expected="size 51, value 48, digest form", actual=f"size {size}, value {value_size}, "
                            f"type {dmtf_type:#x}")
        start = off + _BLOCK_HEADER.size
        if start + value_size > len(record):
            raise Malformed("measurement block runs past the record", field=f"block[{i}].value")
        blocks.append(MeasurementBlock(index=index, dmtf_type=dmtf_type, value=record[start : start + value_size]))
        last_index = index
        off = start + value_size
    if off != len(record):
        raise Malformed("measurement record length does not match its blocks", field="response.record_len",
                        expected=off, actual=len(record))
    return tuple(blocks)


def _parse_opaque(raw: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    while off < len(raw):
        if off + 4 > len(raw):
            raise Malformed("opaque data ends inside a TLV header", field="opaque", actual=len(raw) - off)
        ftype, flen = struct.unpack_from("<HH", raw, off)
        off += 4
        if off + flen > len(raw):
            raise Malformed("opaque TLV runs past the opaque data", field=f"opaque[{ftype}]", actual=flen)
        if ftype in out:
            raise Malformed("opaque TLV type repeated", field=f"opaque[{ftype}]")
        out[ftype] = raw[off : off + flen]
        off += flen
    return out


def _opaque_fields(opaque: dict[int, bytes]) -> dict[str, str]:
    for ftype, name in _REQUIRED_OPAQUE.items():
        if ftype not in opaque:
            raise Malformed("opaque data lacks a required field", field=f"opaque.{name}", expected=f"type {ftype}")
    if len(opaque[OPAQUE_FWID]) != DIGEST_BYTES:
        raise Malformed("opaque FWID is not 48 bytes", field="opaque.fwid", expected=DIGEST_BYTES,
                        actual=len(opaque[OPAQUE_FWID]))
    vbios = opaque[OPAQUE_VBIOS_VERSION]
    if len(vbios) < 5:
        raise Malformed("opaque VBIOS version too short", field="opaque.vbios_version", expected=">=5 bytes",
                        actual=len(vbios))
    return {
        "driver_version": _text(opaque[OPAQUE_DRIVER_VERSION], "driver_version"),
        "vbios_version": format_vbios_version(vbios),
        "project": _text(opaque[OPAQUE_PROJECT], "project"),
        "project_sku": _text(opaque[OPAQUE_PROJECT_SKU], "project_sku"),
        "chip_sku": _text(opaque[OPAQUE_CHIP_SKU], "chip_sku"),
    }


def format_vbios_version(raw: bytes) -> str:
    """``96.00.9F.00.01``: bytes 3, 2, 1, 0 of the little-endian u32, then byte 4, as NVIDIA's RIMs write it."""
    return ".".join(f"{b:02X}" for b in (raw[3], raw[2], raw[1], raw[0], raw[4]))


def _text(raw: bytes, name: str) -> str:
    """NUL-padded ASCII; anything else (or empty) is malformed."""
    text = raw.rstrip(b"\x00")
    if not text or len(text) > MAX_TEXT_FIELD or b"\x00" in text or not all(0x21 <= c <= 0x7E for c in text):
        raise Malformed("opaque text field is not printable ASCII", field=f"opaque.{name}", actual=raw)
    return text.decode("ascii")
