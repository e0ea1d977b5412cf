"""A party's keys: one naming scheme (``identity.key``, ``kem.key``) for `mpctrain keys generate`, `party run` and
every loader; an older ``.pem`` pair is read where it is the only one; a profile generates keys only where there
are none, and never writes a new identity over half a pair."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mpctrain.cli.audit import load_signer
from mpctrain.cli.main import app
from mpctrain.party.config import PartyConfig, PartyConfigError
from mpctrain.seal.keys import IdentityKey, KemKey, load_identity_public, write_public_files


def _profile(tmp_path):
    (tmp_path / "party.toml").write_text('id = "bank-a"\nkeys_dir = "keys"\n')
    return PartyConfig.load(tmp_path / "party.toml")


def test_keys_from_mpctrain_keys_generate_are_the_profile_keys(tmp_path):
    res = CliRunner().invoke(app, ["keys", "generate", "--out", str(tmp_path / "keys")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["identity.key", "identity.pub", "kem.key",
                                                                     "kem.pub"]
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
