"""`mpctrain keys ...` commands: create and inspect a party's identity and KEM keys."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from mpctrain.seal.errors import SealError
from mpctrain.seal.keydir import LEGACY_FILES, PRIVATE_FILES, PUBLIC_FILES, generate_pair, load_pair
from mpctrain.seal.keys import load_identity_public, load_kem_public

app = typer.Typer(
    pretty_exceptions_show_locals=False,  # locals in a traceback would print key bytes and data rows
    help="keys commands", no_args_is_help=True)

KEY_FILES = (*PRIVATE_FILES, *PUBLIC_FILES, *LEGACY_FILES)  # any of them: a directory already in use


class KemChoice(StrEnum):
    x25519 = "x25519"
    mlkem768_x25519 = "mlkem768-x25519"


@app.command()
def generate(
    out: Path = typer.Option(..., "--out", help="directory for identity.key/.pub and kem.key/.pub (a party "
                                                "profile's keys_dir)"),
    kem: KemChoice = typer.Option(KemChoice.x25519, "--kem", help="KEM for data sealed to you"),
    force: bool = typer.Option(False, "--force", help="replace the keys there (an older identity.pem/kem.pem pair "
                                                      "is removed too): the old identity is lost"),
) -> None:
    """Generate an Ed25519 identity key and an HPKE KEM key (identity.key, kem.key: mode 0600) and their public
    files (identity.pub, kem.pub: what a job manifest names)."""
    existing = [name for name in KEY_FILES if (out / name).exists()]
    if existing and not force:
        typer.echo(f"refusing to overwrite {', '.join(str(out / n) for n in existing)}: "
                   "pass --force to replace these keys (the old ones are lost)", err=True)
        raise typer.Exit(code=1)
    try:
        identity, kem_key = generate_pair(out, kem.value)
    except OSError as e:
        typer.echo(f"error: cannot write keys to {out}: {e}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"identity  ed25519  {identity.key_id()}  {out / PRIVATE_FILES[0]}")
    typer.echo(f"kem       {kem_key.alg:<8} {kem_key.key_id()}  {out / PRIVATE_FILES[1]}")


@app.command()
def show(directory: Path = typer.Argument(..., help="directory written by `mpctrain keys generate`")) -> None:
    """Print the key ids of a key directory, checking that private and public files match."""
    try:
        identity, kem_key = load_pair(directory, where="the directory")
        identity_pub = load_identity_public(directory / "identity.pub")
        kem_alg, kem_pub = load_kem_public(directory / "kem.pub")
    except (SealError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1) from None
    if identity_pub != identity.public_bytes() or (kem_alg, kem_pub) != (kem_key.alg, kem_key.public_bytes()):
        typer.echo(f"error: public files in {directory} do not match the private keys; regenerate them", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"identity  ed25519  {identity.key_id()}")
    typer.echo(f"kem       {kem_key.alg:<8} {kem_key.key_id()}")
