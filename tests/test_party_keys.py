"""A party's keys: its profile uses the pair it has (``.key``, or ``.pem`` from ``mpctrain keys generate``),
generates one only where there is none, and never writes a new identity over half a pair."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mpctrain.cli.main import app
from mpctrain.party.config import PartyConfig, PartyConfigError


def _profile(tmp_path):
    (tmp_path / "party.toml").write_text('id = "bank-a"\nkeys_dir = "keys"\n')
    return PartyConfig.load(tmp_path / "party.toml")


def test_keys_from_mpctrain_keys_generate_are_the_profile_keys(tmp_path):
    res = CliRunner().invoke(app, ["keys", "generate", "--out", str(tmp_path / "keys")])
    assert res.exit_code == 0, res.output
    published = (tmp_path / "keys" / "identity.pub").read_bytes()
    identity, _ = _profile(tmp_path).load_keys()
    assert (tmp_path / "keys" / "identity.pub").read_bytes() == published  # the registered key is kept
    assert not (tmp_path / "keys" / "identity.key").exists()  # and no second identity appeared
    assert published.decode().strip() == identity.public_bytes().hex()


def test_first_use_generates_a_pair_once(tmp_path):
    cfg = _profile(tmp_path)
    with pytest.raises(PartyConfigError, match="mpctrain keys generate --out"):
        cfg.load_keys(create=False)
    first, _ = cfg.load_keys()
    again, _ = cfg.load_keys()
    assert first.public_bytes() == again.public_bytes()
    assert (tmp_path / "keys" / "identity.key").stat().st_mode & 0o077 == 0


def test_half_a_pair_is_an_error_not_a_new_identity(tmp_path):
    cfg = _profile(tmp_path)
    cfg.load_keys()
    (tmp_path / "keys" / "kem.key").unlink()
    before = (tmp_path / "keys" / "identity.pub").read_bytes()
    with pytest.raises(PartyConfigError, match=r"holds identity\.key but not the matching"):
        cfg.load_keys()
    assert (tmp_path / "keys" / "identity.pub").read_bytes() == before
    assert not (tmp_path / "keys" / "kem.key").exists()
