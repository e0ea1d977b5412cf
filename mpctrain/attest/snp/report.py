"""Parsing of the 1184-byte AMD SEV-SNP attestation report (versions 2, 3, 4 and 5).

Parsing checks only structure (length, version, algorithm, reserved bytes); it trusts nothing. The
verifier decides what the fields are worth after the signature and certificate chain are checked.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mpctrain.attest.errors import Malformed

REPORT_SIZE = 1184
SIGNED_SIZE = 0x2A0
SIG_COMPONENT_SIZE = 72
SIG_R_OFFSET = 0x2A0
SIG_S_OFFSET = SIG_R_OFFSET + SIG_COMPONENT_SIZE
SIG_END = SIG_S_OFFSET + SIG_COMPONENT_SIZE
SUPPORTED_VERSIONS = (2, 3, 4, 5)
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1

SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7
SIGNING_KEY_NAMES = {SIGNING_KEY_VCEK: "vcek", SIGNING_KEY_VLEK: "vlek"}

PRODUCTS = ("Milan", "Genoa", "Turin")
TURIN_CHIP_ID_BYTES = 8

# POLICY bits (guest policy the VM was launched with)
POLICY_SMT = 1 << 16
POLICY_RESERVED_ONE = 1 << 17
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20

_PLATFORM_INFO_BITS = {
    "smt_enabled": 0,
    "tsme_enabled": 1,
    "ecc_enabled": 2,
    "rapl_disabled": 3,
    "ciphertext_hiding_enabled": 4,
    "alias_check_complete": 5,
}


@dataclass(frozen=True)
class Tcb:
    """The security version numbers of one TCB value (``fmc`` only exists on Turin)."""

    bl: int
    tee: int
    snp: int
    ucode: int
    fmc: int | None = None

    def as_dict(self) -> dict[str, int]:
        out = {"bl": self.bl, "tee": self.tee, "snp": self.snp, "ucode": self.ucode}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


def decode_tcb(raw: bytes, product: str) -> Tcb:
    """Decode 8 TCB bytes; the byte layout differs between Milan/Genoa and Turin (ATTESTATION.md)."""
    if len(raw) != 8:
        raise Malformed("TCB value must be 8 bytes", field="tcb", expected=8, actual=len(raw))
    if product == "Turin":
        return Tcb(fmc=raw[0], bl=raw[1], tee=raw[2], snp=raw[3], ucode=raw[7])
    if product in ("Milan", "Genoa"):
        return Tcb(bl=raw[0], tee=raw[1], snp=raw[6], ucode=raw[7])
    raise Malformed("unknown SEV-SNP product", field="product", expected=list(PRODUCTS), actual=product)


def product_from_cpuid(family: int, model: int) -> str | None:
    """Product from the CPUID fields of v3+ reports; None when they are zero (v2, or not reported)."""
    if family == 0 and model == 0:
        return None
    if family == 0x19 and model <= 0x0F:
        return "Milan"
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return "Genoa"
    if family == 0x1A:
        return "Turin"
    raise Malformed("report names a CPU that is not a known SEV-SNP product", field="cpuid",
                    expected="family 0x19 (Milan, Genoa) or 0x1a (Turin)",
                    actual=f"family {family:#x} model {model:#x}")


@dataclass(frozen=True)
class SnpReport:
    """The fields of one attestation report; TCB values stay raw until the product is known."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb_raw: bytes
    platform_info: int
    key_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb_raw: bytes
    cpuid_family: int
    cpuid_model: int
    cpuid_stepping: int
    chip_id: bytes
    committed_tcb_raw: bytes
    current_version: tuple[int, int, int]
    committed_version: tuple[int, int, int]
    launch_tcb_raw: bytes
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @property
    def signed_bytes(self) -> bytes:
        """The bytes the ECDSA signature covers: 0x000-0x29F."""
        return self.raw[:SIGNED_SIZE]

    @property
    def signing_key(self) -> int:
        return (self.key_info >> 2) & 0x7

    @property
    def signing_key_name(self) -> str:
        return SIGNING_KEY_NAMES.get(self.signing_key, str(self.signing_key))

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.key_info & 0x2)

    @property
    def author_key_en(self) -> bool:
        return bool(self.key_info & 0x1)

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def abi(self) -> tuple[int, int]:
        """(major, minor) minimum ABI version the guest policy requires."""
        return (self.policy >> 8) & 0xFF, self.policy & 0xFF

    @property
    def cpuid_product(self) -> str | None:
        return product_from_cpuid(self.cpuid_family, self.cpuid_model)

    def hwid(self, product: str) -> bytes:
        """The part of CHIP_ID that AMD's hwID extension and key server use (8 bytes on Turin)."""
        return self.chip_id[:TURIN_CHIP_ID_BYTES] if product == "Turin" else self.chip_id

    def policy_bits(self) -> dict[str, object]:
        major, minor = self.abi
        return {
            "abi": f"{major}.{minor}",
            "smt": bool(self.policy & POLICY_SMT),
            "migrate_ma": bool(self.policy & POLICY_MIGRATE_MA),
            "debug": self.debug,
            "single_socket": bool(self.policy & POLICY_SINGLE_SOCKET),
            "raw": f"{self.policy:#x}",
        }

    def platform_bits(self) -> dict[str, bool]:
        return {name: bool(self.platform_info >> bit & 1) for name, bit in _PLATFORM_INFO_BITS.items()}


def parse_report(data: bytes) -> SnpReport:
    """Parse a report; raise ``Malformed`` for anything that is not a well-formed signed v2-v5 report."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise Malformed("SEV-SNP report must be bytes", field="report", actual=type(data).__name__)
    raw = bytes(data)
    if len(raw) != REPORT_SIZE:
        raise Malformed("SEV-SNP report has the wrong length", field="report.length", expected=REPORT_SIZE,
                        actual=len(raw))
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0x000)
    if version not in SUPPORTED_VERSIONS:
        raise Malformed("unsupported SEV-SNP report version", field="version", expected=list(SUPPORTED_VERSIONS),
                        actual=version)
    vmpl, signature_algo = struct.unpack_from("<II", raw, 0x030)
    if signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise Malformed("unsupported report signature algorithm", field="signature_algo",
                        expected=SIGNATURE_ALGO_ECDSA_P384_SHA384, actual=signature_algo)
    (platform_info,) = struct.unpack_from("<Q", raw, 0x040)
    (key_info,) = struct.unpack_from("<I", raw, 0x048)
    signing_key = (key_info >> 2) & 0x7
    if signing_key not in SIGNING_KEY_NAMES:
        what = "report is unsigned (SIGNING_KEY=7)" if signing_key == SIGNING_KEY_NONE else "unknown SIGNING_KEY"
        raise Malformed(what, field="signing_key", expected="0 (VCEK) or 1 (VLEK)", actual=signing_key)
    if any(raw[SIG_END:]):
        raise Malformed("reserved bytes after the signature are not zero", field="signature.reserved")
    v3 = version >= 3
    v5 = version >= 5
    cur = raw[0x1E8:0x1EB]
    com = raw[0x1EC:0x1EF]
    return SnpReport(
        raw=raw,
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=raw[0x010:0x020],
        image_id=raw[0x020:0x030],
        vmpl=vmpl,
        signature_algo=signature_algo,
        current_tcb_raw=raw[0x038:0x040],
        platform_info=platform_info,
        key_info=key_info,
        report_data=raw[0x050:0x090],
        measurement=raw[0x090:0x0C0],
        host_data=raw[0x0C0:0x0E0],
        id_key_digest=raw[0x0E0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        report_id_ma=raw[0x160:0x180],
        reported_tcb_raw=raw[0x180:0x188],
        cpuid_family=raw[0x188] if v3 else 0,
        cpuid_model=raw[0x189] if v3 else 0,
        cpuid_stepping=raw[0x18A] if v3 else 0,
        chip_id=raw[0x1A0:0x1E0],
        committed_tcb_raw=raw[0x1E0:0x1E8],
        current_version=(cur[2], cur[1], cur[0]),
        committed_version=(com[2], com[1], com[0]),
        launch_tcb_raw=raw[0x1F0:0x1F8],
        launch_mit_vector=struct.unpack_from("<Q", raw, 0x1F8)[0] if v5 else None,
        current_mit_vector=struct.unpack_from("<Q", raw, 0x200)[0] if v5 else None,
        signature_r=int.from_bytes(raw[SIG_R_OFFSET:SIG_S_OFFSET], "little"),
        signature_s=int.from_bytes(raw[SIG_S_OFFSET:SIG_END], "little"),
    )
