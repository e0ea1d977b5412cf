"""The SEV-SNP certificate table (GHCB spec, section 4.1.8.1) that configfs-tsm returns as ``auxblob``.

An attester turns it into ``Evidence.certs`` so the verifier finds the VCEK/VLEK, ASK and ARK the host
provisioned. The table is untrusted host data: it is only a place to look; the chain is checked anyway.
"""

from __future__ import annotations

import struct
import uuid

from mpctrain.attest.errors import Malformed

ENTRY_SIZE = 24
MAX_ENTRIES = 16
MAX_TABLE_BYTES = 256 << 10

CERT_GUIDS: dict[uuid.UUID, str] = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "vcek",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"): "vlek",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): "ask",  # the ASVK when the table holds a VLEK
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ark",
}


def parse_cert_table(blob: bytes) -> dict[str, bytes]:
    """Return the known certificates by name (``vcek``, ``vlek``, ``ask``, ``ark``); unknown GUIDs are skipped.

    Entries are GUID (RFC 4122 byte order), offset and length (u32 little-endian, from the start of the
    table); an all-zero entry ends the table. Every entry must point inside the blob.
    """
    if not isinstance(blob, bytes | bytearray) or len(blob) > MAX_TABLE_BYTES:
        raise Malformed("certificate table is not bytes or too large", field="cert_table",
                        expected=f"<={MAX_TABLE_BYTES} bytes")
    blob = bytes(blob)
    out: dict[str, bytes] = {}
    for index in range(MAX_ENTRIES + 1):
        start = index * ENTRY_SIZE
        if start + ENTRY_SIZE > len(blob):
            raise Malformed("certificate table is not terminated by an all-zero entry", field="cert_table")
        entry = blob[start : start + ENTRY_SIZE]
        if not any(entry):
            return out
        if index == MAX_ENTRIES:
            break
        guid = uuid.UUID(bytes=entry[:16])
        offset, length = struct.unpack_from("<II", entry, 16)
        if length == 0 or offset < ENTRY_SIZE or offset + length > len(blob):
            raise Malformed("certificate table entry points outside the table", field=f"cert_table[{index}]",
                            expected=f"within {len(blob)} bytes", actual=f"offset {offset} length {length}")
        name = CERT_GUIDS.get(guid)
        if name is None:
            continue
        if name in out:
            raise Malformed("certificate table names a certificate twice", field=f"cert_table.{name}")
        out[name] = _trim_der(blob[offset : offset + length])
    raise Malformed("certificate table has too many entries", field="cert_table", expected=f"<={MAX_ENTRIES}")


def _trim_der(cert: bytes) -> bytes:
    """Drop host padding after a DER certificate (its outer SEQUENCE says how long it is)."""
    if len(cert) >= 4 and cert[0] == 0x30 and cert[1] in (0x81, 0x82):
        n = cert[1] & 0x7F
        total = 2 + n + int.from_bytes(cert[2 : 2 + n], "big")
        if total <= len(cert):
            return cert[:total]
    return cert
