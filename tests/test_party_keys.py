"""A party's keys: one naming scheme (``identity.key``, ``kem.key``) for `mpctrain keys generate`, `party run` and
every loader; an older ``.pem`` pair is read where it is the only one; a profile generates keys only where there
are none, and never writes a new identity over half a pair."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mpctrain.cli.audit import load_signer
from mpctrain.cli.main import app
from mpctrain.party.config import PartyConfig, PartyConfigError
from mpctrain.seal.keys import IdentityKey, KemKey, load_identity_public, write_public_files

ROOT = Path(__file__).resolve().parents[1]


def _profile(tmp_path):
    (tmp_path / "party.toml").write_text('id = "bank-a"\nkeys_dir = "keys"\n')
    return PartyConfig.load(tmp_path / "party.toml")


def test_keys_from_mpctrain_keys_generate_are_the_profile_keys(tmp_path):
    res = CliRunner().invoke(app, ["keys", "generate", "--out", str(tmp_path / "keys")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [".lock", "identity.key", "identity.pub",
                                                                     "kem.key", "kem.pub"]
    published = (tmp_path / "keys" / "identity.pub").read_bytes()
    identity, _ = _profile(tmp_path).load_keys()
    assert (tmp_path / "keys" / "identity.pub").read_bytes() == published  # the registered key is kept
    assert published.decode().strip() == identity.public_bytes().hex()


def test_keys_generate_force_over_a_party_run_directory_leaves_one_identity(tmp_path):
    """The review's repro: `party run` made keys/, `keys generate --force` replaced them; every loader must then
    sign with the key identity.pub names (before, the profile kept signing with the stale identity.key)."""
    cfg = _profile(tmp_path)
    first, _ = cfg.load_keys(create=True)  # as the first `party run`
    keys = tmp_path / "keys"
    res = CliRunner().invoke(app, ["keys", "generate", "--out", str(keys), "--force"])
    assert res.exit_code == 0, res.output
    published = load_identity_public(keys / "identity.pub")
    assert published != first.public_bytes()
    profile_key, _ = cfg.load_keys()
    assert profile_key.public_bytes() == published
    _, audit_key, _ = load_signer(str(tmp_path / "party.toml"), tmp_path, None)
    assert audit_key.public_bytes() == published
    shown = CliRunner().invoke(app, ["keys", "show", str(keys)])
    assert shown.exit_code == 0 and IdentityKey.load(keys / "identity.key").key_id() in shown.output


def test_an_older_pem_pair_is_read_and_replaced_by_force(tmp_path):
    keys = tmp_path / "keys"
    ident, kem = IdentityKey.generate(), KemKey.generate()
    ident.save(keys / "identity.pem")
    kem.save(keys / "kem.pem")
    write_public_files(keys, ident, kem)
    assert _profile(tmp_path).load_keys()[0].public_bytes() == ident.public_bytes()
    assert not (keys / "identity.key").exists()  # read, not copied or regenerated
    res = CliRunner().invoke(app, ["keys", "generate", "--out", str(keys)])
    assert res.exit_code == 1 and "identity.pem" in res.output and "--force" in res.output
    res = CliRunner().invoke(app, ["keys", "generate", "--out", str(keys), "--force"])
    assert res.exit_code == 0, res.output
    assert not (keys / "identity.pem").exists() and not (keys / "kem.pem").exists()


def test_keys_under_both_namings_are_an_error_naming_the_pair_to_keep(tmp_path):
    cfg = _profile(tmp_path)
    cfg.load_keys(create=True)
    keys = tmp_path / "keys"

    def refused(pattern):
        with pytest.raises(PartyConfigError, match=pattern):
            cfg.load_keys()

    IdentityKey.generate().save(keys / "identity.pem")  # a stray older pair beside the published one
    KemKey.generate().save(keys / "kem.pem")
    refused(r"belong to identity\.key and kem\.key: remove identity\.pem and kem\.pem")
    res = CliRunner().invoke(app, ["keys", "show", str(keys)])
    assert res.exit_code == 1 and "both namings" in res.output
    ident, kem = IdentityKey.load(keys / "identity.pem"), KemKey.load(keys / "kem.pem")
    write_public_files(keys, ident, kem)  # now the .pem pair is the published one
    refused(r"belong to identity\.pem and kem\.pem: move identity\.key and kem\.key out")
    for name in ("identity", "kem"):  # a copy of the same keys under the old names
        (keys / f"{name}.pem").write_bytes((keys / f"{name}.key").read_bytes())
        (keys / f"{name}.pem").chmod(0o600)
    write_public_files(keys, IdentityKey.load(keys / "identity.key"), KemKey.load(keys / "kem.key"))
    refused(r"kem\.key \(the same keys\): remove identity\.pem and kem\.pem")


def test_first_use_generates_a_pair_once(tmp_path):
    cfg = _profile(tmp_path)
    with pytest.raises(PartyConfigError, match="mpctrain keys generate --out"):
        cfg.load_keys(create=False)
    first, _ = cfg.load_keys(create=True)
    again, _ = cfg.load_keys(create=True)
    assert first.public_bytes() == again.public_bytes()
    assert (tmp_path / "keys" / "identity.key").stat().st_mode & 0o077 == 0


def test_half_a_pair_is_an_error_not_a_new_identity(tmp_path):
    cfg = _profile(tmp_path)
    cfg.load_keys(create=True)
    (tmp_path / "keys" / "kem.key").unlink()
    before = (tmp_path / "keys" / "identity.pub").read_bytes()
    with pytest.raises(PartyConfigError, match=r"holds identity\.key but not the matching kem\.key"):
        cfg.load_keys(create=True)
    assert (tmp_path / "keys" / "identity.pub").read_bytes() == before
    assert not (tmp_path / "keys" / "kem.key").exists()


def test_public_files_without_private_keys_are_not_overwritten(tmp_path):
    cfg = _profile(tmp_path)
    cfg.load_keys(create=True)
    before = (tmp_path / "keys" / "identity.pub").read_bytes()
    for name in ("identity.key", "kem.key"):
        (tmp_path / "keys" / name).unlink()
    with pytest.raises(PartyConfigError, match="no private keys: restore"):
        cfg.load_keys(create=True)
    assert (tmp_path / "keys" / "identity.pub").read_bytes() == before


def test_two_first_runs_at_once_end_with_one_consistent_pair(tmp_path, monkeypatch):
    """Two `party run` starting together on an empty key directory: the pair is four files written one by one,
    so without the directory's lock each run kept its own identity (or the files mixed two pairs). Writes are
    slowed here so the two runs overlap for sure."""
    import mpctrain.seal.keys as keys_module
    from mpctrain.seal.keydir import load_pair, public_file_problems

    write = keys_module.write_private

    def slow_write(*args, **kwargs):
        time.sleep(0.2)
        write(*args, **kwargs)

    monkeypatch.setattr(keys_module, "write_private", slow_write)
    cfgs = [_profile(tmp_path), _profile(tmp_path)]
    start = threading.Barrier(2)
    got: list[object] = [None, None]

    def first_run(i: int) -> None:
        start.wait()
        try:
            got[i] = cfgs[i].load_keys(create=True)
        except Exception as exc:
            got[i] = exc

    threads = [threading.Thread(target=first_run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(isinstance(g, tuple) for g in got), got
    (ida, kema), (idb, kemb) = got
    assert ida.public_bytes() == idb.public_bytes() and kema.public_bytes() == kemb.public_bytes()
    on_disk_id, on_disk_kem = load_pair(tmp_path / "keys")
    assert on_disk_id.public_bytes() == ida.public_bytes() and on_disk_kem.public_bytes() == kema.public_bytes()
    assert public_file_problems(tmp_path / "keys", on_disk_id, on_disk_kem) == []


def test_two_processes_creating_keys_at_once_agree(tmp_path):
    """The same across processes (flock, not a lock inside one interpreter)."""
    from mpctrain.seal.keydir import load_pair

    _profile(tmp_path)
    code = ("import sys, time\n"
            "import mpctrain.seal.keys as k\n"
            "w = k.write_private\n"
            "k.write_private = lambda *a, **kw: (time.sleep(0.2), w(*a, **kw))[1]\n"
            "from mpctrain.party.config import PartyConfig\n"
            "cfg = PartyConfig.load(sys.argv[1])\n"
            "while time.time() < float(sys.argv[2]): time.sleep(0.005)\n"
            "i, kem = cfg.load_keys(create=True)\n"
            "print(i.public_bytes().hex(), kem.public_bytes().hex())\n")
    at = str(time.time() + 3)  # both start together, once imported
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "party.toml"), at], text=True, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]
    identity, kem = load_pair(tmp_path / "keys")
    assert outs[0][0].split() == [identity.public_bytes().hex(), kem.public_bytes().hex()]
