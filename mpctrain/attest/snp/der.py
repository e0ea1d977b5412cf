"""A tiny, bounded DER reader for the values inside AMD's VCEK/VLEK certificate extensions.

``cryptography`` hands unknown extensions over as raw bytes (``UnrecognizedExtension.value``); AMD puts
one DER INTEGER, OCTET STRING or IA5String in each. Only definite, minimal lengths up to 64 KiB are read.
"""

from __future__ import annotations

from mpctrain.attest.errors import Malformed

TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_IA5_STRING = 0x16
MAX_VALUE_BYTES = 0xFFFF


def read_tlv(data: bytes, *, field: str) -> tuple[int, bytes]:
    """Return (tag, content) of the single TLV that must fill ``data`` exactly."""
    if len(data) < 2:
        raise Malformed("DER value truncated", field=field, actual=data)
    tag, first = data[0], data[1]
    if first < 0x80:
        length, start = first, 2
    elif first in (0x81, 0x82):
        n = first & 0x7F
        if len(data) < 2 + n:
            raise Malformed("DER length truncated", field=field, actual=data)
        length, start = int.from_bytes(data[2 : 2 + n], "big"), 2 + n
        if length < 0x80 or (n == 2 and length < 0x100):
            raise Malformed("DER length not minimal", field=field, actual=data)
    else:
        raise Malformed("DER length form not supported", field=field, actual=data)
    if length > MAX_VALUE_BYTES or start + length != len(data):
        raise Malformed("DER length does not match the value", field=field, expected=len(data) - start,
                        actual=length)
    return tag, data[start:]


def read_uint(data: bytes, *, field: str, maximum: int = 0xFF) -> int:
    """A non-negative DER INTEGER no larger than ``maximum`` (an SVN is one byte)."""
    tag, content = read_tlv(data, field=field)
    if tag != TAG_INTEGER or not content:
        raise Malformed("expected a DER INTEGER", field=field, actual=data)
    if content[0] & 0x80:
        raise Malformed("negative DER INTEGER", field=field, actual=data)
    if len(content) > 1 and content[0] == 0 and not content[1] & 0x80:
        raise Malformed("DER INTEGER not minimal", field=field, actual=data)
    value = int.from_bytes(content, "big")
    if value > maximum:
        raise Malformed("DER INTEGER out of range", field=field, expected=f"<={maximum}", actual=value)
    return value


def read_ia5(data: bytes, *, field: str) -> str:
    """A DER IA5String (ASCII)."""
    tag, content = read_tlv(data, field=field)
    if tag != TAG_IA5_STRING or any(b > 0x7F for b in content):
        raise Malformed("expected a DER IA5String", field=field, actual=data)
    return content.decode("ascii")


def read_octets(data: bytes, *, field: str) -> bytes:
    """A DER OCTET STRING."""
    tag, content = read_tlv(data, field=field)
    if tag != TAG_OCTET_STRING:
        raise Malformed("expected a DER OCTET STRING", field=field, actual=data)
    return content
