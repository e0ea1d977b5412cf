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
        '[snp]\nmeasurements = ["aabb"]\nmin_tcb = { snp = 8 }\nvmpl = 0\n'
        f'[nvidia-gpu]\nmeasurements = "{REPORT_ONLY}"\n'
    )
    pol = Policy.load(p)
    assert pol.backend("snp").measurements == (b"\xaa\xbb",)
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
