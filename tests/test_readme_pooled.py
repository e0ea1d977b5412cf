"""README's pooled job as separate processes, run from the README as written, in one shell.

The block runs in a copy of the examples and profiles, so the checkout is left as it was. The only change
is the aggregator's port (50051 in the README and the profiles): a free one, so that this test does not
collide with another run on the same machine; the documented commands are the ones tested.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "parties", work / "parties", ignore=shutil.ignore_patterns("keys", "jobs", "outputs"))
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    port = str(_free_port())
    for path in [work / "examples" / "hospitals_pooled" / "aggregator.toml",
                 *(work / "parties" / h / "party.toml" for h in HOSPITALS)]:
        path.write_text(path.read_text().replace("50051", port))
    script = _block(ROOT / "README.md").replace("50051", port)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="200")
    proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # whatever the script left running
        except ProcessLookupError:
            pass
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((work / "out").glob("*.log")))
    assert proc.returncode == 0, out[-4000:] + logs
    said = " ".join(out.split())
    assert "proposed hospitals-pooled" in said and "│ state │ done" in said, said
    assert said.count("OK ") >= 1 and "audit log broken" not in said, said
    for h in HOSPITALS:
        opened = work / "parties" / h / "outputs" / "hospitals-pooled"
        assert (opened / "model.safetensors").is_file() and (opened / "metrics.json").is_file(), logs
    assert (work / "out" / "fetched" / "hospitals-pooled" / "metrics.json").is_file()
