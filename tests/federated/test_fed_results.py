"""A federated job's outputs leave the enclave like a pooled job's: sealed per recipient, with a signed receipt.

The aggregator (real gRPC server, federated runner on its job store) runs the job once every consent is
in; the researcher then fetches the model and the run's metrics with the same client and checks as for
pooled outputs (``fetch_outputs``: open with its key, verify the receipt and the evidence it carries).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy
from fedkit import initial_arrays

from mpctrain.enclave.state import JobState
from mpctrain.party.client import AggregatorClient
from mpctrain.party.errors import PartyError
from mpctrain.party.flower.attestation import GrpcEvidenceSource, attest_enclave
from mpctrain.party.outputs import fetch_outputs


def _fetch(job, port, party, recipient=None):
    enclave = attest_enclave(GrpcEvidenceSource(f"127.0.0.1:{port}"), job.policy)
    with AggregatorClient(f"127.0.0.1:{port}", party.id, party.identity) as client:
        return fetch_outputs(client, enclave, job.manifest, recipient or party.id, party.kem, policy=job.policy)


def test_recipients_fetch_the_sealed_model_and_metrics_with_a_verified_receipt(served):
    job, agg, port, start = served
    stored = start(job.consents)
    agg.store.join(timeout=120)
    assert stored.state == JobState.DONE, stored.error
    opened, receipt = _fetch(job, port, job.researcher)
    assert receipt.job_digest == job.manifest.digest()
    model = safetensors.numpy.load(opened["model"])
    # toy banks add 0.1, 0.2, 0.3 with 10, 11, 12 examples: FedAvg adds their weighted mean each round
    step = (0.1 * 10 + 0.2 * 11 + 0.3 * 12) / 33
    start_w = initial_arrays()["w"].numpy()
    np.testing.assert_allclose(model["w"], start_w + 2 * step, rtol=1e-6)
    assert set(model) == {"b", "w"}
    metrics = json.loads(opened["metrics"])
    assert metrics["mode"] == "federated" and metrics["rounds"] == 2 and metrics["stop_reason"] == "completed"
    assert metrics["manifest_digest"] == job.manifest.digest().hex() and metrics["rejected_replies"] == 0
    assert set(metrics["evaluate"]) == {"1", "2"} and "accuracy" in metrics["evaluate"]["2"]
    bank_a, _ = _fetch(job, port, job.parties[0])  # a data party named as recipient gets its own copy
    assert bank_a == opened
    assert stored.public_metrics["rounds"] == 2.0


def test_a_party_that_is_not_a_recipient_gets_nothing(served):
    job, agg, port, start = served
    start(job.consents)
    agg.store.join(timeout=120)
    outsider = job.parties[1]  # a data party, but the manifest seals outputs to the researcher and bank-a only
    with pytest.raises(PartyError) as err:
        _fetch(job, port, outsider)
    assert "not a recipient" in str(err.value)
    with pytest.raises(PartyError):  # nor may it ask for the researcher's copy
        _fetch(job, port, outsider, recipient="researcher")


def test_outputs_are_not_served_before_the_rounds_ran(served):
    job, _agg, port, start = served
    start(job.consents[:1])
    enclave = attest_enclave(GrpcEvidenceSource(f"127.0.0.1:{port}"), job.policy)
    with AggregatorClient(f"127.0.0.1:{port}", "researcher", job.researcher.identity) as client:
        with pytest.raises(PartyError) as err:
            fetch_outputs(client, enclave, job.manifest, "researcher", job.researcher.kem, policy=job.policy)
    assert "no receipt" in str(err.value)
