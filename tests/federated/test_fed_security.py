"""Every check on the sealed path fails closed: stale keys, replays, tampering, outsiders, failed attestation."""

from __future__ import annotations

import logging
import re
from dataclasses import replace

import numpy as np
import pytest
from fedkit import Party, build_job, initial_arrays, make_enclave, toy_app
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from mpctrain.attest import Policy
from mpctrain.attest.sim import SimAttester
from mpctrain.enclave.federated import Confidential, InProcessGrid, JobNotReady, Node
from mpctrain.enclave.federated.protocol import SEALED_KEY
from mpctrain.jobs import sign_consent
from mpctrain.party.flower import CallableEvidenceSource, ConfidentialMod, PartyRuntime
from mpctrain.seal.keys import IdentityKey, KemKey

DELTAS = [0.1, 0.2, 0.4]


def _fedavg() -> FedAvg:
    return FedAvg(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3, fraction_evaluate=0.0)


def _round(job, strategy, grid, rnd=1):
    msgs = strategy.configure_train(rnd, initial_arrays(), ConfigRecord(), grid)
    return list(grid.send_and_receive(msgs))


def _grid(job, seen=None):
    return job.grid(lambda p, i: toy_app(DELTAS[i], 10, mod=ConfidentialMod(job.runtime(p)), seen=seen))


def test_reply_sealed_to_stale_enclave_key_is_rejected(job):
    grid = _grid(job)
    strategy = job.confidential(_fedavg())
    replies = _round(job, strategy, grid)
    assert all(not r.has_error() for r in replies)
    strategy.rotate(make_enclave(job.attester))  # the enclave restarted: new keys
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is None
    assert len(strategy.rejections) == 3
    assert all("WrongRecipient" in r.reason for r in strategy.rejections)
    assert "fl.reply_rejected" in job.events.kinds()


def test_key_change_makes_parties_attest_again(job):
    grid = _grid(job)
    strategy = job.confidential(_fedavg())
    replies = _round(job, strategy, grid)
    assert strategy.aggregate_train(1, replies)[0] is not None
    new = make_enclave(job.attester)
    strategy.rotate(new)
    job.evidence_fn = new.evidence  # the aggregator now serves the new enclave's evidence
    replies = _round(job, strategy, grid, rnd=2)
    assert strategy.aggregate_train(2, replies)[0] is not None
    assert all(rt.attestations == 2 for rt in job.runtimes.values())


def test_reply_replayed_into_a_later_round_is_rejected(job):
    grid = _grid(job)
    strategy = job.confidential(_fedavg())
    old = _round(job, strategy, grid)
    strategy.aggregate_train(1, old)
    strategy.configure_train(2, initial_arrays(), ConfigRecord(), grid)
    arrays, _ = strategy.aggregate_train(2, old)
    assert arrays is None
    assert all("ContextMismatch" in r.reason for r in strategy.rejections)


@pytest.mark.parametrize("damage", ["flip", "truncate", "drop-header", "plaintext", "other-job", "swap-party"])
def test_damaged_replies_are_rejected_the_rest_aggregate(job, damage):
    grid = _grid(job)
    strategy = job.confidential(_fedavg())
    replies = _round(job, strategy, grid)
    victim = replies[0]
    frames = victim.content[SEALED_KEY]
    env = victim.content["mpctrain.envelope"]
    keys = list(frames.keys())
    if damage == "flip":
        arr = frames[keys[-1]]
        data = bytearray(arr.data)
        data[len(data) // 2] ^= 1
        frames[keys[-1]] = Array(arr.dtype, tuple(arr.shape), arr.stype, bytes(data))
    elif damage == "truncate":
        arr = frames[keys[-1]]
        frames[keys[-1]] = Array(arr.dtype, (len(arr.data) - 7,), arr.stype, arr.data[:-7])
    elif damage == "drop-header":
        victim.content[SEALED_KEY] = ArrayRecord({f"{i:06d}": frames[k] for i, k in enumerate(keys[1:])})
    elif damage == "plaintext":
        victim.content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(10, np.float32))}),
                                     "metrics": MetricRecord({"num-examples": 10})})
    elif damage == "other-job":
        env["job"] = "another-job"
    elif damage == "swap-party":  # claims to be another job party: its signature does not match
        env["party"] = replies[1].content["mpctrain.envelope"]["party"]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert len(strategy.rejections) == 1
    assert strategy.rejections[0].node_id == victim.metadata.src_node_id
    # the two intact replies still aggregate: mean of their deltas
    got = arrays["w"].numpy() - initial_arrays()["w"].numpy()
    others = [DELTAS[i] for i in range(3) if 100 + i != victim.metadata.src_node_id]
    np.testing.assert_allclose(got, np.mean(others), atol=1e-5)


def test_party_outside_the_job_cannot_join(job, sim_root, sim_attester):
    # An outsider with its own keys and its own (validly consented) job tries to take part.
    outsider_job = build_job(sim_root, sim_attester, n=1)
    outsider_party = Party("bank-z", IdentityKey.generate(), KemKey.generate())
    outsider_job.parties = [outsider_party]
    manifest = replace(outsider_job.manifest, job_id=job.manifest.job_id,
                       parties=(outsider_party.spec(), job.researcher.spec("researcher")), quorum=1,
                       recipients=("researcher",))
    outsider_job.manifest = manifest
    outsider_job.consents = [sign_consent(manifest, "bank-z", outsider_party.identity)]
    outsider_job.enclave = job.enclave
    seen: list[Message] = []
    outsider = Node(node_id=999, app=toy_app(100.0, 1000, mod=ConfidentialMod(outsider_job.runtime(outsider_party)),
                                             seen=seen))
    grid = job.grid(lambda p, i: toy_app(DELTAS[i], 10, mod=ConfidentialMod(job.runtime(p))), extra=[outsider])
    strategy = job.confidential(FedAvg(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0))
    result = strategy.start(grid, initial_arrays(), num_rounds=2)
    assert not seen  # the outsider could never open the global model
    # nothing of the outsider reached the model: the mean of the three banks' deltas per round
    from mpctrain.party.flower import open_output

    arrays, _ = open_output(result.sealed_output, manifest=job.manifest, recipient_id="researcher",
                            kem=job.researcher.kem, enclave_sig_public=job.enclave.sig.public_bytes())
    np.testing.assert_allclose(arrays["w"].numpy() - initial_arrays()["w"].numpy(), 2 * np.mean(DELTAS), atol=1e-5)


def test_forged_reply_from_a_non_job_party_is_rejected_and_its_node_hidden(job):
    grid = _grid(job)
    strategy = job.confidential(_fedavg())
    replies = _round(job, strategy, grid)
    replies[2].content["mpctrain.envelope"]["party"] = "bank-z"
    strategy.aggregate_train(1, replies)
    assert strategy.rejections[0].party_id == "bank-z"
    assert replies[2].metadata.src_node_id in strategy._hidden_nodes


def _refusal_case(job, policy=None, evidence=None):
    seen: list[Message] = []
    runtimes = {}
    for p in job.parties:
        runtimes[p.id] = PartyRuntime(
            party_id=p.id, identity=p.identity, kem=p.kem, manifest=job.manifest,
            consent=next(c for c in job.consents if c.party_id == p.id), policy=policy or job.policy,
            evidence=CallableEvidenceSource(evidence or job.enclave.evidence))
    grid = job.grid(lambda p, i: toy_app(DELTAS[i], 10, mod=ConfidentialMod(runtimes[p.id]), seen=seen))
    strategy = job.confidential(_fedavg())
    replies = _round(job, strategy, grid)
    return seen, replies, strategy


def _policy(job, **sim):
    base = dict(job.manifest.enclave_policy["sim"])
    base.update(sim)
    return Policy.from_dict({"backends": ["sim"], "sim": base})


@pytest.mark.parametrize("failure", ["wrong-measurement", "unpinned-root", "debug", "replayed-evidence",
                                     "unreachable", "substituted-keys"])
def test_party_whose_attestation_fails_sends_nothing(job, sim_root, failure):
    policy, evidence = None, None
    if failure == "wrong-measurement":
        policy = _policy(job, measurements=["00" * 48])
    elif failure == "unpinned-root":
        policy = _policy(job, roots=["11" * 32])
    elif failure == "debug":
        debug = SimAttester(sim_root, config_digest=b"\x07" * 32, debug=True)
        enclave = make_enclave(debug)
        evidence = enclave.evidence
        job.enclave = enclave
    elif failure == "replayed-evidence":
        recorded = job.enclave.evidence(b"\x00" * 32)
        evidence = lambda nonce: recorded  # noqa: E731
    elif failure == "unreachable":
        def evidence(nonce):
            raise ConnectionError("aggregator down")
    elif failure == "substituted-keys":  # a genuine enclave's evidence, but the host seals with other keys
        other = make_enclave(job.attester)
        evidence = other.evidence
    seen, replies, strategy = _refusal_case(job, policy, evidence)
    assert not seen  # the ClientApp never ran
    assert len(replies) == 3
    for r in replies:
        assert r.has_error() and not r.has_content()
        # only the failed check's name travels to the SuperLink: never the party's policy values or errors
        assert re.fullmatch(r"mpctrain refused: aggregator attestation failed: [a-z0-9-]+", r.error.reason)
        assert "00" * 8 not in r.error.reason and "11" * 8 not in r.error.reason and "down" not in r.error.reason
    assert strategy.aggregate_train(1, replies) == (None, None)


def test_party_refuses_unsealed_instruction(job):
    seen: list[Message] = []
    app = toy_app(0.1, 10, mod=ConfidentialMod(job.runtime(job.parties[0])), seen=seen)
    grid = InProcessGrid([Node(node_id=5, app=app)])
    plain = Message(RecordDict({"arrays": initial_arrays(), "config": ConfigRecord()}), 5, "train")
    (reply,) = grid.send_and_receive([plain])
    assert reply.has_error() and "not sealed" in reply.error.reason
    assert not seen


def test_party_refuses_an_enclave_running_another_manifest(job):
    other = replace(job.manifest, training={**job.manifest.training, "rounds": 99})
    strategy = job.confidential(_fedavg())
    strategy.job_digest = other.digest().hex()  # the host feeds the enclave a manifest nobody consented to
    seen: list[Message] = []
    grid = _grid(job, seen=seen)
    replies = _round(job, strategy, grid)
    assert not seen
    assert all("another manifest" in r.error.reason for r in replies)


def test_enclave_refuses_jobs_without_all_consents(job):
    with pytest.raises(JobNotReady, match="consent"):
        Confidential(FedAvg(), manifest=job.manifest, consents=job.consents[:2], enclave=job.enclave)
    forged = sign_consent(job.manifest, job.parties[0].id, job.parties[0].identity)
    with pytest.raises(JobNotReady, match="consent"):  # a consent signed by the wrong party's key counts as missing
        Confidential(FedAvg(), manifest=job.manifest, consents=[*job.consents[:2], replace(
            forged, party_id=job.parties[2].id)], enclave=job.enclave)
    with pytest.raises(JobNotReady, match="pooled"):
        Confidential(FedAvg(), manifest=replace(job.manifest, mode="pooled"), consents=job.consents,
                     enclave=job.enclave)
    many = tuple(replace(job.manifest.parties[0], id=f"bank-{i:03d}", identity_public=bytes([i % 256]) * 31 + b"\x01")
                 for i in range(65))
    with pytest.raises(JobNotReady, match="at most 64"):
        Confidential(FedAvg(), manifest=replace(job.manifest, parties=(*many, job.researcher.spec("researcher")),
                                                quorum=65, recipients=("researcher",)),
                     consents=job.consents, enclave=job.enclave)
    with pytest.raises(JobNotReady, match="expired"):
        Confidential(FedAvg(), manifest=replace(job.manifest, expires=1000), consents=job.consents,
                     enclave=job.enclave)


def test_party_runtime_refuses_bad_consent_and_foreign_code(job, tmp_path):
    p = job.parties[0]
    bad = sign_consent(job.manifest, job.parties[1].id, job.parties[1].identity)
    with pytest.raises(JobNotReady):
        PartyRuntime(party_id=p.id, identity=p.identity, kem=p.kem, manifest=job.manifest, consent=bad,
                     policy=job.policy, evidence=CallableEvidenceSource(job.enclave.evidence))
    (tmp_path / "client_app.py").write_text("print('not the consented code')\n")
    from mpctrain.enclave.federated import CodeDigestMismatch

    with pytest.raises(CodeDigestMismatch):
        PartyRuntime(party_id=p.id, identity=p.identity, kem=p.kem, manifest=job.manifest,
                     consent=next(c for c in job.consents if c.party_id == p.id), policy=job.policy,
                     evidence=CallableEvidenceSource(job.enclave.evidence), app_dir=tmp_path)


def _canary_app(canary: np.float32, mod):
    app = ClientApp(mods=[mod] if mod is not None else [])

    @app.train()
    def train(msg, ctx):
        update = ArrayRecord({"w": Array(np.full(64, canary, np.float32))})
        return Message(RecordDict({"arrays": update, "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)

    return app


def test_host_visible_path_and_logs_never_carry_plaintext(job, caplog):
    up, down = np.float32(1234.5678), np.float32(-8765.4321)
    init = ArrayRecord({"w": Array(np.full(64, down, np.float32))})

    def run(confidential: bool) -> tuple[bytes, bytes]:
        job.relayed.clear()
        grid = job.grid(lambda p, i: _canary_app(up, ConfidentialMod(job.runtime(p)) if confidential else None))
        strategy = job.confidential(_fedavg()) if confidential else _fedavg()
        strategy.start(grid, init, num_rounds=1)
        return (b"".join(w for k, w in job.relayed if k == "ins"), b"".join(w for k, w in job.relayed if k == "res"))

    ins, res = run(confidential=False)
    assert down.tobytes() * 8 in ins and up.tobytes() * 8 in res  # positive control: the canaries are visible
    with caplog.at_level(logging.DEBUG):
        ins, res = run(confidential=True)
    assert ins and res
    assert down.tobytes() not in ins and up.tobytes() not in res
    assert "1234.5" not in caplog.text and "8765.4" not in caplog.text


@pytest.mark.parametrize("metrics", [{"num-examples": "ten"}, {"num-examples": 10, "loss": ["a"]},
                                     {"num-examples": -1}, {"loss": 1.0}, {"num-examples": float("nan")}])
def test_authentic_reply_with_malformed_metrics_is_rejected_not_crashing(job, metrics):
    """A job party seals well-formed bytes with hostile contents: typed rejection, the others aggregate."""
    import json

    from safetensors.numpy import save as st_save

    from mpctrain.enclave.federated.codec import META_KEY
    from mpctrain.enclave.federated.protocol import (
        ENCLAVE_SENDER,
        PURPOSE_REPLY,
        Envelope,
        make_sealed_content,
    )
    from mpctrain.seal.stream import seal_bytes

    grid = _grid(job)
    strategy = job.confidential(_fedavg())
    replies = _round(job, strategy, grid)
    victim = replies[0]
    party = victim.content["mpctrain.envelope"]["party"]
    node = victim.metadata.src_node_id
    nonce = strategy._expect[("train", 1)][node]
    meta = {"v": 1, "records": [{"name": "arrays", "kind": "arrays", "keys": ["w", "b"]},
                                {"name": "metrics", "kind": "metrics", "values": metrics}],
            "ctx": {"job_digest": strategy.job_digest, "party": party, "nonce": nonce, "category": "train"}}
    payload = st_save({"0.0": np.zeros(10, np.float32), "0.1": np.zeros(2, np.float32)},
                      metadata={META_KEY: json.dumps(meta)})
    p = next(x for x in job.parties if x.id == party)
    frames = seal_bytes(payload, sender=p.identity, sender_id=party,
                        recipients=[(ENCLAVE_SENDER, job.enclave.kem.alg, job.enclave.kem.public_bytes())],
                        purpose=PURPOSE_REPLY, job_id=job.manifest.job_id, object_id=f"res:{nonce}:{party}")
    victim.content = make_sealed_content(frames, Envelope(job.manifest.job_id, f"res:{nonce}:{party}", strategy.key_id,
                                                          party=party))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert len(strategy.rejections) == 1 and strategy.rejections[0].party_id == party
    assert arrays is not None


def test_a_bank_holds_the_enclave_to_the_jobs_pinned_policy_too(job):
    """The bank's own policy passes, but the job every party approved requires a confidential GPU: the bank
    refuses before its app runs, naming the job policy's failed check."""
    import dataclasses

    from mpctrain.jobs import sign_consent

    strict = {**job.manifest.enclave_policy, "min_gpus": 1}
    manifest = dataclasses.replace(job.manifest, enclave_policy=strict)
    strict_job = dataclasses.replace(job, manifest=manifest, runtimes={},
                                     consents=[sign_consent(manifest, p.id, p.identity) for p in job.parties])
    seen: list[Message] = []
    grid = strict_job.grid(lambda p, i: toy_app(DELTAS[i], 10, mod=ConfidentialMod(strict_job.runtime(p)), seen=seen))
    replies = _round(strict_job, strict_job.confidential(_fedavg()), grid)
    assert not seen and len(replies) == 3
    assert all(r.has_error() and "aggregator attestation failed: job-policy/" in r.error.reason for r in replies)
