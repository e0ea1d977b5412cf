"""README's pooled job as separate processes, run from the README as written, in one shell.

The block runs in a copy of the examples and profiles, so the checkout is left as it was. The only change
is the aggregator's port (50051 in the README and the profiles): a free one, so that this test does not
collide with another run on the same machine; the documented commands are the ones tested.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from walkthrough import run_block

ROOT = Path(__file__).resolve().parents[1]
HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")

pytestmark = pytest.mark.slow


def _block(doc: Path) -> str:
    text = doc.read_text()
    start = text.index("```sh\n. .venv/bin/activate\n") + len("```sh\n")
    return text[start:text.index("```", start)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_docs_pooled_shows_the_readme_block():
    assert _block(ROOT / "docs" / "pooled.md") == _block(ROOT / "README.md")


def test_the_readme_pooled_block_runs_as_written(tmp_path):
    port = str(_free_port())

    def use_free_port(work: Path) -> None:
        for path in [work / "examples" / "hospitals_pooled" / "aggregator.toml",
                     *(work / "parties" / h / "party.toml" for h in HOSPITALS)]:
            path.write_text(path.read_text().replace("50051", port))

    script = _block(ROOT / "README.md").replace("50051", port)
    work, returncode, out = run_block(tmp_path, script, timeout=150, pythonpath=ROOT, prepare=use_free_port,
                                      COLUMNS="200")
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((work / "out").glob("*.log")))
    assert returncode == 0, out[-4000:] + logs
    said = " ".join(out.split())
    assert "proposed hospitals-pooled" in said and "│ state │ done" in said, said
    assert said.count("OK ") >= 1 and "audit log broken" not in said, said
    for h in HOSPITALS:
        opened = work / "parties" / h / "outputs" / "hospitals-pooled"
        assert (opened / "model.safetensors").is_file() and (opened / "metrics.json").is_file(), logs
    assert (work / "out" / "fetched" / "hospitals-pooled" / "metrics.json").is_file()
