"""Claims the docs make about configuration, checked against the code so they cannot drift."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from mpctrain.attest import Policy
from mpctrain.enclave.config import AggregatorConfig

ROOT = Path(__file__).resolve().parents[1]


def _toml_blocks(doc: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", doc, flags=re.S)


def test_audit_doc_auditors_table_is_a_real_aggregator_key():
    doc = (ROOT / "docs" / "audit.md").read_text()
    assert "not there yet" not in doc
    blocks = [b for b in _toml_blocks(doc) if "[auditors]" in b]
    assert blocks, "docs/audit.md shows no [auditors] table"
    key = "ab" * 32
    cfg = AggregatorConfig.from_dict(tomllib.loads(blocks[0].replace("<hex identity key>", key)))
    assert cfg.auditors == {"security-office": bytes.fromhex(key)}


def _paragraph(doc: str, needle: str) -> str:
    return next(p for p in doc.split("\n\n") if needle in p)


def test_readme_describes_every_committed_party_policy():
    """README's sentence on the committed policies names each profile by what its policy really accepts."""
    readme = (ROOT / "README.md").read_text()
    real = _paragraph(readme, "accept real SNP/TDX evidence only")
    nothing = _paragraph(readme, "accept nothing")
    for path in sorted((ROOT / "parties").glob("*/policy.toml")):
        name = path.parent.name
        shown = f"parties/{name.rsplit('-', 1)[0]}-*/policy.toml" if "-" in name else f"parties/{name}/policy.toml"
        policy = Policy.load(path)
        if "sim" in policy.backends:
            sim = policy.backend("sim")
            assert not sim.roots or not sim.measurements, f"{path} accepts a simulated enclave"
            assert shown in nothing.split("accept nothing")[0], f"README does not say {shown} accepts nothing"
        else:
            assert set(policy.backends) <= {"snp", "tdx"}, path
            assert shown in real.split("accept real SNP/TDX")[0], f"README does not say {shown} is SNP/TDX only"
