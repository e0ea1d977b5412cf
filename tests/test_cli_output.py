"""CLI messages print verbatim: square brackets in paths, TOML table names and server text are not Rich markup."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import mpctrain.cli.job as cli_job
from mpctrain.cli.main import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output and "MarkupError" not in result.output, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result


def test_a_path_with_a_closing_tag_is_printed_not_parsed(tmp_path: Path):
    missing = tmp_path / "[/x]" / "party.toml"
    result = invoke("party", "run", "--config", str(missing))
    assert result.exit_code == 2
    assert "[/x]" in result.output


def test_a_config_error_keeps_its_table_name(tmp_path: Path):
    (tmp_path / "party.toml").write_text('id = "p"\n[rules]\nauto_approve = "yes"\n')
    result = invoke("party", "run", "--config", str(tmp_path / "party.toml"))
    assert result.exit_code == 2
    assert "[rules] auto_approve must be true or false" in result.output


def test_job_commands_keep_brackets_in_errors(tmp_path: Path):
    (tmp_path / "party.toml").write_text('id = "p"\nwho = 1\n')
    result = invoke("job", "status", "j", "--as", str(tmp_path / "party.toml"))
    assert result.exit_code == 2
    assert "unknown party config keys ['who']" in result.output


def test_aggregator_errors_keep_brackets(tmp_path: Path):
    d = tmp_path / "[bold]"
    d.mkdir()
    (d / "aggregator.toml").write_text('attester = "sim"\n[sim]\nroot = "x"\n')
    result = invoke("aggregator", "serve", "--config", str(d / "aggregator.toml"))
    assert result.exit_code == 2
    assert f"{d / 'aggregator.toml'}: unknown [sim] keys ['root']" in " ".join(result.output.split())


@pytest.mark.parametrize(("text", "message"), [
    ('id = "p"\n[rules]\nauto_approve = "yes"\n', "[rules] auto_approve must be true or false"),
    ('id = "p"\nwho = 1\n', "unknown party config keys ['who']"),
    ('aggregator = "x:1"\n', "party config needs an id"),
])
def test_party_config_errors_name_the_file(tmp_path: Path, text: str, message: str):
    (tmp_path / "party.toml").write_text(text)
    for args in (["party", "run", "--config"], ["job", "status", "j", "--as"]):
        result = invoke(*args, str(tmp_path / "party.toml"))
        assert result.exit_code == 2
        assert f"error: {tmp_path / 'party.toml'}: {message}" in " ".join(result.output.split())


def test_job_file_errors_name_the_file(tmp_path: Path):
    from mpctrain.jobs import JobManifest, ManifestError

    (tmp_path / "job.toml").write_text('job_id = "j"\nmode = "pooled"\nparties = 5\n')
    with pytest.raises(ManifestError) as err:
        JobManifest.from_toml(tmp_path / "job.toml")
    assert str(err.value).startswith(f"{tmp_path / 'job.toml'}: ")


def test_a_policy_error_keeps_its_table_name(tmp_path: Path):
    (tmp_path / "policy.toml").write_text('backends = ["sim"]\n[sim]\nroots = ["zz"]\nmeasurements = []\n')
    result = invoke("attest", "verify", "--kind", "sim", "--evidence", str(tmp_path / "e.bin"),
                    "--policy", str(tmp_path / "policy.toml"))
    assert result.exit_code == 2
    assert "[sim].roots entry 'zz'" in result.output


def test_job_status_prints_server_text_verbatim(monkeypatch: pytest.MonkeyPatch):
    status = SimpleNamespace(job_id="j[/i]", state="failed", manifest_digest=b"\x01", consented=["[red]a"],
                             missing_consents=[], uploaded=[], public_metrics={}, manifest=b"",
                             error="bad row [/x] in [bold]shard[/bold]")
    agent = SimpleNamespace(client=SimpleNamespace(get_job=lambda job_id: status))
    monkeypatch.setattr(cli_job, "_agent", lambda *a, **k: agent)
    result = invoke("job", "status", "j", "--as", "p")
    assert result.exit_code == 0
    assert "bad row [/x] in [bold]shard[/bold]" in result.output
    assert "[red]a" in result.output and "j[/i]" in result.output


def _env_after_import(env: dict[str, str]) -> str:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = ("import os, sys; import mpctrain.cli; assert 'grpc' not in sys.modules; "
            "import mpctrain.cli.main; print(os.environ['GRPC_VERBOSITY'])")
    env = {**{k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}, "PYTHONPATH": str(root), **env}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_grpc_core_logs_only_errors_in_the_cli_unless_the_user_chose():
    assert _env_after_import({}) == "ERROR"  # set before grpc is imported: the C core reads it once
    assert _env_after_import({"GRPC_VERBOSITY": "DEBUG"}) == "DEBUG"


def _commands(group, path=()):
    import click

    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_positional_argument_shows_its_help():
    """Typer 0.20 (Flower caps it below 0.21) lost every argument's help text with click 8.5: the pin holds."""
    import typer.main

    checked = 0
    for path, cmd in _commands(typer.main.get_command(app)):
        helps = [p.help for p in cmd.params if getattr(p, "param_type_name", "") == "argument" and p.help]
        if not helps:
            continue
        out = " ".join(invoke(*path, "--help").output.replace("│", " ").split())
        for text in helps:
            assert " ".join(text.split())[:30] in out, (path, text)
            checked += 1
    assert checked >= 3


def test_job_status_of_a_done_job_with_a_garbled_manifest_is_no_traceback(monkeypatch: pytest.MonkeyPatch):
    """The host relays the status reply unsigned: manifest bytes that do not parse raised ManifestError (a
    traceback) on the done-state rows; they are display-only, so the table says the manifest is unreadable."""
    status = SimpleNamespace(job_id="j", state="done", manifest_digest=b"\x01", consented=["a"],
                             missing_consents=[], uploaded=["a"], public_metrics={"accuracy": 0.5},
                             manifest=b"\xffgarbage{", error="")
    agent = SimpleNamespace(client=SimpleNamespace(get_job=lambda job_id: status))
    monkeypatch.setattr(cli_job, "_agent", lambda *a, **k: agent)
    result = invoke("job", "status", "j", "--as", "p")
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "accuracy" in flat and "unreadable in the aggregator's reply" in flat, result.output


def test_a_wait_timeout_with_a_garbled_manifest_still_names_the_job():
    """describe_wait parsed the relayed manifest on the timeout path: garbage bytes raised ManifestError instead of
    the typed WaitTimeout naming the job and its state."""
    import grpc

    from mpctrain.party.agent import PartyAgent
    from mpctrain.party.errors import AggregatorError, WaitTimeout

    def watch(job_id, timeout):
        raise AggregatorError("DEADLINE_EXCEEDED: deadline", grpc.StatusCode.DEADLINE_EXCEEDED)
        yield  # a generator, as the real stream

    status = SimpleNamespace(job_id="j", state="open", manifest=b"not a manifest", uploaded=["a"],
                             missing_consents=[], consented=["a", "b"])
    client = SimpleNamespace(watch=watch, get_job=lambda job_id: status)
    agent = PartyAgent(party_id="a", identity=None, kem=None, policy=None, client=client)  # type: ignore[arg-type]
    with pytest.raises(WaitTimeout) as caught:
        agent.wait("j", ("done",), timeout=0.0)
    assert "job j" in str(caught.value) and "state open" in str(caught.value)
    assert "does not parse; uploaded so far: a" in str(caught.value)
