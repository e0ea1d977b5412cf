"""Outputs are never written through a link below the directory the caller chose (job directory included)."""

from __future__ import annotations

import os
import stat

import pytest
from test_seal_files_cli import sealed_file

from mpctrain.seal import open_file
from mpctrain.seal.keys import write_private
from mpctrain.seal.paths import LinkedPath


def _tree(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


def test_a_linked_job_directory_is_refused(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "job-1").symlink_to(elsewhere)
    with pytest.raises(LinkedPath, match=r"job-1 is a symbolic link; refusing to write through it"):
        write_private(out / "job-1" / "model.safetensors", b"plaintext", root=out)
    assert _tree(elsewhere) == []  # nothing written, not even a temporary file


@pytest.mark.parametrize("planted", ["anyone-may-write", "another-owner"])
def test_a_job_directory_others_control_is_refused(tmp_path, planted):
    """A real directory planted at <out>/<job> by another user (or left writable by anyone) would let them
    rename or replace the files written into it: refused."""
    out = tmp_path / "out"
    (out / "job-1").mkdir(parents=True)
    if planted == "another-owner":
        if os.geteuid() != 0:
            pytest.skip("only root can give a directory to another user")
        os.chown(out / "job-1", os.geteuid() + 1, -1)
    else:
        os.chmod(out / "job-1", 0o777)
    with pytest.raises(LinkedPath, match=r"job-1 is a directory another user owns or may write to"):
        write_private(out / "job-1" / "model.safetensors", b"plaintext", root=out)
    assert _tree(out / "job-1") == []
    os.chmod(out / "job-1", 0o700)
    os.chown(out / "job-1", os.geteuid(), -1)
    write_private(out / "job-1" / "model.safetensors", b"plaintext", root=out)  # the party's own: fine


def test_a_linked_directory_deeper_down_is_refused(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "a").mkdir(parents=True)
    elsewhere.mkdir()
    (out / "a" / "b").symlink_to(elsewhere)
    with pytest.raises(LinkedPath, match="symbolic link"):
        write_private(out / "a" / "b" / "c" / "metrics.json", b"{}", root=out)
    assert _tree(elsewhere) == []
    (out / "a" / "f").write_text("a file")
    with pytest.raises(LinkedPath, match="not a directory"):
        write_private(out / "a" / "f" / "metrics.json", b"{}", root=out)


def test_the_chosen_root_may_be_a_link_and_a_linked_file_is_replaced(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    out = tmp_path / "out"
    out.symlink_to(real)  # the caller's own choice, e.g. --out pointing at another disk
    victim = tmp_path / "victim.conf"
    victim.write_text("keep me")
    (real / "job-1").mkdir()
    (real / "job-1" / "metrics.json").symlink_to(victim)
    write_private(out / "job-1" / "metrics.json", b"{}", root=out)
    written = real / "job-1" / "metrics.json"
    assert not written.is_symlink() and written.read_bytes() == b"{}"
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o600 and victim.read_text() == "keep me"
    write_private(out / "new" / "model.safetensors", b"m", root=out)  # missing directories are created 0700
    assert stat.S_IMODE(os.stat(real / "new").st_mode) == 0o700
    assert _tree(real) == ["job-1", "job-1/metrics.json", "new", "new/model.safetensors"]


def test_a_path_outside_the_root_is_refused(tmp_path):
    with pytest.raises(LinkedPath, match="not inside"):
        write_private(tmp_path / "x" / "f", b"", root=tmp_path / "out")


def test_open_file_refuses_a_linked_directory_under_its_root(tmp_path, parties):
    _, sealed = sealed_file(tmp_path, parties, 100)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "job").symlink_to(elsewhere)
    with pytest.raises(LinkedPath):
        open_file(sealed, out / "job" / "plain.bin", out_root=out, **parties.open_kw())
    assert _tree(elsewhere) == []
