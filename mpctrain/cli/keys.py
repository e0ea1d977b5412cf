"""`mpctrain keys ...` commands: create and inspect a party's identity and KEM keys."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from mpctrain.seal.errors import SealError
from mpctrain.seal.keydir import (
    LEGACY_FILES,
    PRIVATE_FILES,
    PUBLIC_FILES,
    generate_pair,
    load_pair,
    public_file_problems,
)
from mpctrain.seal.keys import write_public_files

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
    except (OSError, SealError) as e:  # SealError: the directory's lock file cannot be created
        typer.echo(f"error: cannot write keys to {out}: {e}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"identity  ed25519  {identity.key_id()}  {out / PRIVATE_FILES[0]}")
    typer.echo(f"kem       {kem_key.alg:<8} {kem_key.key_id()}  {out / PRIVATE_FILES[1]}")


@app.command()
def show(
    directory: Path = typer.Argument(..., help="a key directory (a party profile's keys_dir)"),
    fix: bool = typer.Option(False, "--fix", help="rewrite identity.pub and kem.pub from the private keys where "
                                                  "they are missing or do not match"),
) -> None:
    """Print the key ids of a key directory, checking that the public files match the private keys.

    The private keys are the identity: a mismatch is fixed by re-deriving the public files from them (--fix)
    or by restoring the private key the public files name, never by generating new keys.
    """
    try:
        identity, kem_key = load_pair(directory, where="the directory")
        problems = public_file_problems(directory, identity, kem_key)
        if problems and fix:
            write_public_files(directory, identity, kem_key)
            typer.echo(f"rewrote identity.pub and kem.pub in {directory} from the private keys ({'; '.join(problems)})")
            problems = []
    except (SealError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1) from None
    if problems:
        for p in problems:
            typer.echo(f"error: {directory}: {p}", err=True)
        typer.echo("the private keys are this party's identity, so do not generate new ones. If the public files are "
                   f"what is wrong, rewrite them from the private keys: `mpctrain keys show {directory} --fix`. If a "
                   "job manifest or another party already has the key the public file names, that is your "
                   "identity: restore its private key from a backup instead.", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"identity  ed25519  {identity.key_id()}")
    typer.echo(f"kem       {kem_key.alg:<8} {kem_key.key_id()}")
