"""A party checks the job's pinned enclave policy in full, on the very evidence it verified: not just the
measurement, but roots, every backend setting, unknown options and the GPUs the job requires."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from mpctrain.attest import BuildInfo, Policy, verify
from mpctrain.attest.sim import SimAttester, SimRoot
from mpctrain.enclave.identity import EnclaveIdentity
from mpctrain.party.attestation import Attested, check_job_policy
from mpctrain.party.errors import AttestationRefused
from mpctrain.seal.binding import evidence_binding


@pytest.fixture(scope="module")
def attested():
    root = SimRoot.generate()
    enclave = EnclaveIdentity.generate(SimAttester(root, config_digest=b"\x07" * 32), BuildInfo("t", b"\x01" * 32))
    nonce = os.urandom(32)
    bundle = enclave.evidence(nonce)
    binding = evidence_binding(nonce, bundle.kem_public, bundle.sig_public, bundle.build.build_digest)
    at = datetime.now(UTC)
    party = {"backends": ["sim"], "sim": {"roots": [root.sha256], "measurements": "report-only"}}
    result = verify(bundle, binding, Policy.from_dict(party), at)
    return Attested(result, bundle, binding, at), root, result.cpu.measurement.hex()


def _job(policy):
    return SimpleNamespace(enclave_policy=policy)


def test_the_jobs_full_policy_passes_on_the_same_evidence(attested):
    att, root, measurement = attested
    ok = {"backends": ["sim"], "sim": {"roots": [root.sha256], "measurements": [measurement]}}
    assert check_job_policy(att, _job(ok)).sig_public == att.result.sig_public


@pytest.mark.parametrize(("change", "check"), [
    (lambda p, m: p["sim"].update(measurements=["00" * 48]), "measurement"),  # another measurement
    (lambda p, m: p["sim"].update(roots=["ab" * 32]), "root"),  # another pinned root
    (lambda p, m: p.update(min_gpus=1), "gpu"),  # the job requires a confidential GPU; the enclave has none
    (lambda p, m: p.update(backends=["tdx"], tdx={"measurements": [m]}), "backend"),  # another TEE kind
])
def test_a_job_policy_the_enclave_does_not_meet_is_refused(attested, change, check):
    att, root, measurement = attested
    policy = {"backends": ["sim"], "sim": {"roots": [root.sha256], "measurements": [measurement]}}
    change(policy, measurement)
    with pytest.raises(AttestationRefused) as err:
        check_job_policy(att, _job(policy))
    assert check in f"{err.value.check} {err.value}".lower()


def test_a_job_policy_with_an_unknown_option_is_refused(attested):
    att, root, measurement = attested
    policy = {"backends": ["sim"], "sim": {"roots": [root.sha256], "measurements": [measurement], "typo_knob": 1}}
    with pytest.raises(AttestationRefused, match=r"unknown key\(s\) \['typo_knob'\] in \[sim\]"):
        check_job_policy(att, _job(policy))
