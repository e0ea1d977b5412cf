"""Run a documented shell block as written, in a copy of the examples and party profiles.

The copy leaves the checkout as it was; the block runs in its own process group, which is killed at the
end whatever the block left running (aggregators, SuperLinks, executors).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_block(tmp_path: Path, script: str, *, timeout: float, pythonpath: Path | None = None,
              prepare: Callable[[Path], None] | None = None, **env_extra: str) -> tuple[Path, int, str]:
    """(the copy, the block's exit status, its output); ``prepare`` edits the copy before the block runs."""
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "parties", work / "parties", ignore=shutil.ignore_patterns("keys", "jobs", "outputs"))
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    if prepare is not None:
        prepare(work)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=str(pythonpath or work), **env_extra)
    proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # whatever the script left running
        except ProcessLookupError:
            pass
    return work, proc.returncode, out
