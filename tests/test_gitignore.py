"""A new party directory cannot commit its keys: the root .gitignore covers every profile's runtime state, not only
the profiles that ship their own .gitignore."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", ["parties/hospital-new/keys/identity.key", "parties/hospital-new/keys/kem.key",
                                  "parties/hospital-new/outputs/job/model.safetensors",
                                  "parties/bank-new/jobs/job/consent.json"])
def test_a_new_partys_runtime_state_is_ignored(path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    res = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", "-q", path], check=False)
    assert res.returncode == 0, f"{path} is not ignored"


def test_a_profile_itself_is_not_ignored():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    res = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", "-q",
                          "parties/hospital-new/party.toml"], check=False)
    assert res.returncode == 1
