"""The banks' ServerApp: Flower FedAvg (or any strategy the manifest names) wrapped in ``Confidential``.

It runs in the aggregator process, inside the TEE, where the enclave keys and the approved job live;
``mpctrain.enclave.federated.server_app.make_server_app`` builds it from a job provider.
"""

from __future__ import annotations

from flwr.app import Context

from mpctrain.enclave.federated.server_app import FederatedJob, make_server_app

_JOB: FederatedJob | None = None


def serve(job: FederatedJob) -> None:
    """Called by the aggregator once every bank has consented: the next run serves this job."""
    global _JOB
    _JOB = job


def _current_job(context: Context) -> FederatedJob:
    if _JOB is None:
        raise RuntimeError("no consented federated job is loaded in this aggregator")
    return _JOB


app = make_server_app(_current_job)
