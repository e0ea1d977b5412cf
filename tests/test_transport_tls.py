"""Transport TLS between party and aggregator: every party-side client honours the profile's ``tls_ca``."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpctrain.enclave.events import MemoryEventSink
from mpctrain.enclave.federated.deploy import tls_material
from mpctrain.enclave.federated.errors import AttestationRefused
from mpctrain.party.client import AggregatorClient
from mpctrain.party.config import PartyConfig
from mpctrain.party.errors import PartyError
from mpctrain.party.flower.attestation import GrpcEvidenceSource, attest_enclave
from mpctrain.party.profile import aggregator_channel, channel_credentials
from mpctrain.sim.cluster import SimCluster
from mpctrain.wire import attestation_pb2, attestation_pb2_grpc


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("tls")
    files = tls_material(work / "tls")
    other = tls_material(work / "other")
    with SimCluster(work, party_ids=("hospital-a",), events=MemoryEventSink(), tls=(files.cert, files.key)) as c:
        yield c, files, other


def _config(tmp: Path, cluster: SimCluster, ca: Path | None) -> PartyConfig:
    doc = {"id": "hospital-a", "aggregator": cluster.target}
    if ca is not None:
        doc["tls_ca"] = str(ca)
    return PartyConfig.from_dict(doc, tmp)


def test_a_party_with_the_aggregators_ca_attests_over_tls(tls_cluster, tmp_path):
    cluster, files, _ = tls_cluster
    cfg = _config(tmp_path, cluster, files.ca)
    p = cluster.parties["hospital-a"]
    agent = cluster.agent("hospital-a", client=AggregatorClient(cluster.target, "hospital-a", p.identity,
                                                                credentials=channel_credentials(cfg)))
    agent.attest()
    result = attest_enclave(GrpcEvidenceSource(cluster.target, credentials=channel_credentials(cfg)),
                            cluster.policy())  # the SuperNode mod's path
    assert result.kem_public == cluster.aggregator.identity.kem.public_bytes()
    with aggregator_channel(cfg) as channel:  # the audit CLIs' path
        reply = attestation_pb2_grpc.AttestationStub(channel).GetEvidence(
            attestation_pb2.GetEvidenceRequest(nonce=bytes(32)), timeout=10)
    assert reply.keys.kem_public == result.kem_public


@pytest.mark.parametrize("ca", ["none", "other"])
def test_plaintext_or_another_ca_cannot_reach_it(tls_cluster, tmp_path, ca):
    cluster, _, other = tls_cluster
    cfg = _config(tmp_path, cluster, None if ca == "none" else other.ca)
    p = cluster.parties["hospital-a"]
    client = AggregatorClient(cluster.target, "hospital-a", p.identity, credentials=channel_credentials(cfg),
                              timeout=5)
    with pytest.raises(PartyError):
        cluster.agent("hospital-a", client=client).attest()
    with pytest.raises(AttestationRefused, match="cannot get evidence"):
        attest_enclave(GrpcEvidenceSource(cluster.target, credentials=channel_credentials(cfg), timeout=5),
                       cluster.policy())


def test_an_unreadable_tls_ca_is_a_config_error(tmp_path, tls_cluster):
    from mpctrain.party.config import PartyConfigError

    cluster, _, _ = tls_cluster
    with pytest.raises(PartyConfigError, match="tls_ca"):
        channel_credentials(_config(tmp_path, cluster, tmp_path / "missing.pem"))


def test_audit_fetch_speaks_tls_with_the_given_roots(tls_cluster, tmp_path):
    from typer.testing import CliRunner

    from mpctrain.cli.main import app

    cluster, files, _ = tls_cluster
    keys = cluster.parties["hospital-a"].dir / "keys"
    base = ["audit", "fetch", cluster.target, "--out", str(tmp_path / "log.jsonl"), "--as", "hospital-a",
            "--keys", str(keys), "--timeout", "5"]
    runner = CliRunner()
    res = runner.invoke(app, [*base, "--tls-ca", str(files.ca)])
    # the request reached the aggregator over TLS, which refuses a party it does not know: its own answer
    assert res.exit_code == 1 and "unknown party 'hospital-a'" in res.output
    res = runner.invoke(app, base)  # plaintext: never reaches it
    assert res.exit_code == 1 and "UNAVAILABLE" in res.output
    res = runner.invoke(app, [*base, "--tls-ca", str(tmp_path / "missing.pem")])
    assert res.exit_code == 2 and "cannot read tls_ca" in res.output
