"""Claims the docs make about configuration, checked against the code so they cannot drift."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

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
