"""Claims the docs make about configuration, checked against the code so they cannot drift."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from mpctrain.attest import Policy
from mpctrain.enclave.config import AggregatorConfig
from mpctrain.enclave.limits import Limits

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


UNITS = {None: 1, "MiB": 1 << 20, "GiB": 1 << 30}


def test_pooled_doc_limits_table_lists_every_limit_with_its_default():
    doc = (ROOT / "docs" / "pooled.md").read_text()
    section = doc.split("### Limits (`[limits]` in aggregator.toml)", 1)[1]
    rows = [line for line in section.strip().split("\n\n", 1)[0].splitlines() if line.startswith("| `")]
    documented: dict[str, int] = {}
    for row in rows:
        names_cell, defaults_cell = row.split("|")[1:3]
        names = re.findall(r"`(\w+)`", names_cell)
        defaults = [re.match(r"\s*(\d+)\s*(MiB|GiB)?", d) for d in defaults_cell.split(",")]
        assert len(names) == len(defaults) and all(defaults), row
        documented.update({n: int(m[1]) * UNITS[m[2]] for n, m in zip(names, defaults, strict=True)})
    expected = {f.name: f.default for f in dataclasses.fields(Limits)}
    assert sorted(documented) == sorted(expected), "docs/pooled.md's [limits] table and Limits differ"
    assert documented == expected


def test_no_merge_conflict_markers_are_left_in_the_tree():
    """A merge that leaves markers in a doc still passes every other test (it happened once, in security.md)."""
    marker = re.compile(r"^(<{7} |>{7} |={7}$)", re.M)
    suffixes = {".py", ".md", ".toml", ".proto", ".txt", ".cfg", ".sh"}
    skip = {".git", ".venv", "out", "node_modules", "__pycache__"}
    found = []
    for path in ROOT.rglob("*"):
        if path.suffix in suffixes and path.is_file() and not skip.intersection(path.relative_to(ROOT).parts):
            if marker.search(path.read_text(errors="replace")):
                found.append(str(path.relative_to(ROOT)))
    assert found == []
