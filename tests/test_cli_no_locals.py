"""A crash in the CLI must not print a traceback with local variables: they hold key bytes and data rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from mpctrain.cli import aggregator, attest, audit, job, keys, main, party


def test_every_cli_app_hides_local_variables_in_tracebacks():
    for module in (aggregator, attest, audit, job, keys, main, party):
        apps = [v for v in vars(module).values() if isinstance(v, typer.Typer)]
        assert apps and all(a.pretty_exceptions_show_locals is False for a in apps), module.__name__


def test_a_party_whose_key_file_is_wrong_gets_one_line_not_its_key(tmp_path: Path):
    from mpctrain.seal.keys import IdentityKey

    keys = tmp_path / "keys"
    keys.mkdir()
    ident = IdentityKey.generate()
    ident.save(keys / "identity.key")
    ident.save(keys / "kem.key")  # an identity key where the KEM key belongs
    (tmp_path / "policy.toml").write_text('backends = ["sim"]\n[sim]\nroots = []\nmeasurements = []\n')
    (tmp_path / "party.toml").write_text('id = "hospital-a"\naggregator = "127.0.0.1:9"\nkeys_dir = "keys"\n')
    res = subprocess.run([str(Path(sys.executable).parent / "mpctrain"), "party", "run", "--config",
                          str(tmp_path / "party.toml"), "--timeout", "1"], capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "Traceback" not in out and "PRIVATE KEY" not in out and "error:" in out
