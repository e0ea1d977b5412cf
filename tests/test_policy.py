from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpctrain.attest.policy import REPORT_ONLY, Policy, PolicyError


def test_default_policy_accepts_no_simulation() -> None:
    pol = Policy.default()
    assert "sim" not in pol.backends
    assert pol.backend("snp").measurements is None
    assert not pol.backend("snp").allow_debug


def test_policy_parses_tables(tmp_path) -> None:
    p = tmp_path / "policy.toml"
    p.write_text(
        'backends = ["snp"]\nmin_gpus = 1\ncollateral_dir = "coll"\n'
        f'[snp]\nmeasurements = ["{"ab" * 48}"]\nmin_tcb = {{ snp = 8 }}\nvmpl = 0\n'
        f'[nvidia-gpu]\nmeasurements = "{REPORT_ONLY}"\n'
    )
    pol = Policy.load(p)
    assert pol.backend("snp").measurements == (b"\xab" * 48,)
    assert pol.backend("snp").min_tcb == {"snp": 8}
    assert pol.backend("snp").option("vmpl") == 0
    assert pol.backend("nvidia-gpu").measurements is None
    assert pol.collateral_dir == tmp_path / "coll"
    assert pol.min_gpus == 1


@pytest.mark.parametrize(
    "text",
    [
        'backends = ["quantum"]',
        'backends = ["snp"]\n[snp]\nroots = ["xyz"]',
        'backends = ["snp"]\n[snp]\nmeasurements = ["zz"]',
        'backends = ["snp"]\n[snp]\nallow_debug = "yes"',
        'backends = ["snp"]\nmin_gpus = -1',
        'backends = ["snp"]\nsurprise = 1',
        "backends = [",
    ],
)
def test_bad_policy_is_a_typed_error(tmp_path, text) -> None:
    p = tmp_path / "policy.toml"
    p.write_text(text)
    with pytest.raises(PolicyError):
        Policy.load(p)


SIM_KEYS = "allow_debug, measurements, min_tcb, roots, max_report_age_seconds"


@pytest.mark.parametrize(("table", "text"), [
    ("allow_debg = true", f"unknown key(s) ['allow_debg'] in [sim]; known: {SIM_KEYS}"),
    ("max_report_age_seconds = \"soon\"", "[sim].max_report_age_seconds must be a non-negative integer"),
    ('measurements = ["6e352f80"]', "[sim].measurements entry '6e352f80' is 4 bytes; a sim measurement is 48 bytes"),
])
def test_a_policy_typo_is_a_policy_error_naming_the_file(tmp_path, table, text) -> None:
    p = tmp_path / "policy.toml"
    p.write_text(f'backends = ["sim"]\n[sim]\nroots = ["{"ab" * 32}"]\n{table}\n')
    with pytest.raises(PolicyError) as err:
        Policy.load(p)
    assert str(err.value).startswith(f"policy {p}: ") and text in str(err.value)


@pytest.mark.parametrize(("kind", "table", "known"), [
    ("snp", "vmpl = 0\nvmlp = 0", ["roots", "min_tcb", "vmpl", "host_data", "require_crl"]),
    ("tdx", "mrseem = []", ["allow_debug", "mrseam", "rtmrs", "require_fresh_collateral"]),
    ("nvidia-gpu", "driver = []", ["measurements", "drivers", "require_rim", "rim_roots"]),
])
def test_an_unknown_key_lists_every_key_of_its_table(kind, table, known) -> None:
    import tomllib

    with pytest.raises(PolicyError, match=r"unknown key\(s\)") as err:
        Policy.from_dict({"backends": ["snp"], kind: tomllib.loads(table)})
    listed = str(err.value).split("known: ")[1].split(", ")
    assert set(known) <= set(listed)


@pytest.mark.parametrize("table", [
    {"vmpl": 9}, {"host_data": ["zz"]}, {"allow_smt": "no"},
])
def test_backend_option_values_are_checked_when_the_policy_loads(table) -> None:
    with pytest.raises(PolicyError, match=r"\[snp\]"):
        Policy.from_dict({"backends": ["snp"], "snp": table})


@pytest.mark.parametrize("kind", ["sim", "snp", "tdx", "nvidia-gpu"])
def test_measurements_of_the_wrong_size_fail_at_load(kind) -> None:
    assert Policy.from_dict({"backends": ["snp"], kind: {"measurements": ["00" * 48]}})
    for wrong in ("00" * 32, "00" * 64, "6e352f80"):
        with pytest.raises(PolicyError, match="48 bytes"):
            Policy.from_dict({"backends": ["snp"], kind: {"measurements": [wrong]}})


def test_a_party_policy_typo_is_a_config_error_not_an_attestation_failure(tmp_path) -> None:
    from typer.testing import CliRunner

    from mpctrain.cli.main import app

    (tmp_path / "policy.toml").write_text(f'backends = ["sim"]\n[sim]\nroots = ["{"ab" * 32}"]\nallow_debg = true\n')
    (tmp_path / "party.toml").write_text('id = "p"\naggregator = "127.0.0.1:9"\n')
    res = CliRunner().invoke(app, ["party", "run", "--config", str(tmp_path / "party.toml")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, text
    assert f"policy {tmp_path / 'policy.toml'}: unknown key(s) ['allow_debg'] in [sim]; known: {SIM_KEYS}" in text
    assert "attestation failed" not in text


@pytest.mark.parametrize(
    "data",
    [
        {"backends": 5},
        {"backends": "snp"},
        {"backends": [{"kind": "snp"}]},
        {"backends": ["snp"], "collateral_dir": 5},
        {"backends": ["snp"], "collateral_dir": "a\x00b"},
        {"backends": ["snp"], "clock_skew_seconds": 86401},
        {"backends": ["snp"], "clock_skew_seconds": 10**30},
    ],
)
def test_policy_values_of_the_wrong_type_or_range_are_policy_errors(data) -> None:
    with pytest.raises(PolicyError):
        Policy.from_dict(data)


def test_policy_file_that_is_not_utf8_is_a_policy_error(tmp_path) -> None:
    p = tmp_path / "policy.toml"
    p.write_bytes(b'backends = ["\xff"]')
    with pytest.raises(PolicyError, match="cannot read policy"):
        Policy.load(p)


def test_a_day_of_skew_is_the_most_a_policy_may_allow() -> None:
    pol = Policy.from_dict({"backends": ["snp"], "clock_skew_seconds": 86400})
    assert pol.backend("snp").clock_skew_seconds == 86400


_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-5, max_value=10**20), st.floats(allow_nan=False),
                  st.text(max_size=70), st.just(REPORT_ONLY), st.just("ab" * 32))
_value = st.recursive(_leaf, lambda c: st.one_of(
    st.lists(c, max_size=3),
    st.dictionaries(st.sampled_from(["roots", "measurements", "allow_debug", "min_tcb", "vmpl", "snp"]), c, max_size=3),
), max_leaves=8)
_keys = st.sampled_from(["backends", "min_gpus", "clock_skew_seconds", "collateral_dir", "sim", "snp", "tdx",
                         "nvidia-gpu"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_keys, _value, max_size=6))
def test_any_policy_data_is_a_policy_or_a_policy_error(data) -> None:
    try:
        Policy.from_dict(data)
    except PolicyError:
        pass
