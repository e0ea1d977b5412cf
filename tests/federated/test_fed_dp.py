"""Central DP inside the enclave: ε reported after every round, the manifest's budget stops training."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest
from fedkit import build_job

from examples.banks_federated.app.client_app import make_client_app
from examples.banks_federated.app.task import initial_arrays
from mpctrain.enclave.federated.server_app import FederatedJob, build_strategy, run_federated_job
from mpctrain.jobs import ManifestError
from mpctrain.party.flower import ConfidentialMod

RUN_CONFIG = {"local-epochs": 1, "lr": 0.1, "batch-size": 64}
PRIVACY = {"epsilon": 10.0, "delta": 1e-5, "clip": 0.5, "noise_multiplier": 2.0}


def _run(job, rounds: int):
    grid = job.grid(lambda p, i: make_client_app([ConfidentialMod(job.runtime(p))]),
                    node_config=lambda p, i: {"bank": p.id}, run_config=RUN_CONFIG)
    fjob = FederatedJob(manifest=job.manifest, consents=job.consents, enclave=job.enclave,
                        initial_arrays=initial_arrays(), events=job.events)
    return run_federated_job(fjob, grid, num_rounds=rounds)


def test_epsilon_reported_each_round_and_budget_stops_training(sim_root, sim_attester):
    job = build_job(sim_root, sim_attester, n=4, privacy=PRIVACY, run_config=RUN_CONFIG)
    result = _run(job, rounds=12)
    eps = [result.epsilon[r] for r in sorted(result.epsilon)]
    assert 1 <= result.rounds_completed < 12
    assert sorted(result.epsilon) == list(range(1, result.rounds_completed + 1))  # ε after every round
    assert all(a < b for a, b in pairwise(eps)) and eps[-1] <= PRIVACY["epsilon"]
    assert result.stop_reason.startswith("privacy budget")
    stopped = [f for k, f in job.events.events if k == "fl.training_stopped"]
    assert stopped and stopped[0]["round"] == result.rounds_completed + 1
    # the outputs are still sealed to the recipients, and say why training stopped
    from mpctrain.party.flower import open_output

    arrays, ctx = open_output(result.sealed_output, manifest=job.manifest, recipient_id="researcher",
                              kem=job.researcher.kem, enclave_sig_public=job.enclave.sig.public_bytes())
    assert ctx["stop_reason"] == result.stop_reason and ctx["rounds"] == result.rounds_completed
    assert set(ctx["epsilon"]) == {str(r) for r in result.epsilon}
    assert np.all(np.isfinite(arrays["w"].numpy()))


def test_epsilon_is_accounted_for_replacing_one_banks_update(sim_root, sim_attester):
    """The unit of privacy is a bank's whole update, and the banks are fixed: neighbouring runs replace one
    bank's update. With n equal-weight clipped updates (norm <= C) the mean moves by up to 2C/n under that
    replacement, and the noise has Flower's std z*C/n. A Gaussian mechanism is rho-zCDP with
    rho = sensitivity^2 / (2 std^2); composed here through the library's zCDP event, not the code's z/2."""
    import dp_accounting
    from dp_accounting import NeighboringRelation
    from dp_accounting.rdp import RdpAccountant
    from flwr.supercore.differential_privacy import compute_stdv

    n, rounds = 4, 3
    z, clip, delta = PRIVACY["noise_multiplier"], PRIVACY["clip"], PRIVACY["delta"]
    job = build_job(sim_root, sim_attester, n=n, privacy={**PRIVACY, "epsilon": 50.0}, run_config=RUN_CONFIG)
    result = _run(job, rounds=rounds)
    assert result.rounds_completed == rounds

    sensitivity = 2 * clip / n
    std = compute_stdv(z, clip, n)
    rho = sensitivity**2 / (2 * std**2)
    expected = {}
    for r in range(1, rounds + 1):
        accountant = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
        accountant.compose(dp_accounting.ZCDpEvent(rho), r)
        expected[r] = accountant.get_epsilon(delta)
    assert result.epsilon == pytest.approx(expected, rel=1e-9)
    # accounting the same rounds as add-or-remove-one at sensitivity C/n gives far less: the understatement
    understated = RdpAccountant()
    understated.compose(dp_accounting.GaussianDpEvent(z), rounds)
    assert result.epsilon[rounds] > 2 * understated.get_epsilon(delta)


def test_dp_noise_is_added_inside_the_enclave(sim_root, sim_attester):
    noisy = build_job(sim_root, sim_attester, n=4, privacy=PRIVACY, run_config=RUN_CONFIG)
    plain = build_job(sim_root, sim_attester, n=4, run_config=RUN_CONFIG)
    a = noisy.open_output(_run(noisy, rounds=1))["w"].numpy()
    b = plain.open_output(_run(plain, rounds=1))["w"].numpy()
    # stdev of the aggregate noise is noise_multiplier * clip / parties = 0.25; plain FedAvg moves far less
    assert np.abs(a - b).max() > 0.05


@pytest.mark.parametrize("privacy", [{"epsilon": 1.0}, {"epsilon": -1, "delta": 1e-5, "noise_multiplier": 1.0},
                                     {"epsilon": 1.0, "delta": 2.0, "noise_multiplier": 1.0},
                                     {"epsilon": "x", "delta": 1e-5, "noise_multiplier": 1.0}])
def test_bad_privacy_settings_are_refused(sim_root, sim_attester, privacy):
    job = build_job(sim_root, sim_attester, n=2)
    with pytest.raises(ManifestError):  # the manifest refuses a delta above MAX_DELTA itself
        build_strategy(replace(job.manifest, privacy=privacy))


def test_dp_needs_fedavg(sim_root, sim_attester):
    job = build_job(sim_root, sim_attester, n=2, privacy=PRIVACY)
    manifest = replace(job.manifest, training={**job.manifest.training, "strategy": "Krum"})
    with pytest.raises(ManifestError, match="FedAvg"):
        build_strategy(manifest)


def test_unknown_strategy_or_bad_args_in_manifest_are_refused(sim_root, sim_attester):
    job = build_job(sim_root, sim_attester, n=2)
    with pytest.raises(ManifestError, match="unknown federated strategy"):
        build_strategy(replace(job.manifest, training={**job.manifest.training, "strategy": "Pickle"}))
    with pytest.raises(ManifestError, match="do not fit"):
        build_strategy(replace(job.manifest, training={**job.manifest.training, "strategy_args": {"nope": 1}}))


@pytest.mark.parametrize("privacy", [None, PRIVACY], ids=["plain", "dp"])
def test_federated_runner_plugs_into_the_job_store(sim_root, sim_attester, privacy):
    from mpctrain.enclave.federated.runner import FederatedRunner
    from mpctrain.enclave.state import JobState, JobStore

    job = build_job(sim_root, sim_attester, n=4, privacy=privacy, run_config=RUN_CONFIG)
    grid = job.grid(lambda p, i: make_client_app([ConfidentialMod(job.runtime(p))]),
                    node_config=lambda p, i: {"bank": p.id}, run_config=RUN_CONFIG)
    runner = FederatedRunner(job.enclave, job.events, grid_for=lambda j: nullcontext(grid),
                             initial_arrays=lambda j, g: initial_arrays())
    store = JobStore(job.events, runners={"federated": runner})
    seen: list[dict] = []  # the public metrics as a watcher finds them after each round
    record = store.record

    def recording(j, kind, **fields):
        if kind == "round":
            seen.append(dict(j.public_metrics))
        return record(j, kind, **fields)

    store.record = recording
    stored = store.add(job.manifest, job.manifest.to_bytes())
    for c in job.consents[:-1]:
        store.add_consent(stored, c)
    assert stored.state == JobState.PROPOSED  # nothing runs before every consent is in
    store.add_consent(stored, job.consents[-1])  # the last consent opens the job and starts the rounds
    store.join(timeout=120)
    assert stored.state == JobState.DONE
    assert set(stored.outputs) == {(r, n) for r in job.manifest.recipients for n in ("model", "metrics")}
    assert stored.receipt is not None and stored.receipt.job_digest == job.manifest.digest()
    assert stored.public_metrics["rounds"] == 2.0
    if privacy is None:
        assert 0 < stored.public_metrics["accuracy"] <= 1
    else:  # the banks' evaluation is outside the budget: a DP manifest cannot make it public
        assert "accuracy" not in stored.public_metrics
    kinds = [(e.kind, e.message) for e in stored.events]
    waiting = kinds.index(("state", "federated: waiting for the job's Flower run (flwr run, mpctrain-job)"))
    assert waiting < [k for k, _ in kinds].index("round")  # watchers learn what the job waits for
    rounds = [e for e in stored.events if e.kind == "round"]  # progress for `job status` and WatchJob watchers
    assert [e.epoch for e in rounds] == [1, 2]
    if privacy is None:
        assert all(0 < e.values["accuracy"] <= 1 and np.isfinite(e.loss) for e in rounds)
    else:  # per-round evaluation on the banks' data is outside the privacy budget: only the count is shown
        assert all(e.values == {} and np.isnan(e.loss) for e in rounds)
        assert "epsilon.round2" in stored.public_metrics
        assert [sorted(m) for m in seen] == [["epsilon.round1", "rounds"], ["epsilon.round1", "epsilon.round2",
                                                                            "rounds"]]
    # the same holds for the enclave's own event sinks (the host's audit log): no per-round metrics under DP
    finished = [f for k, f in job.events.events if k == "fl.round_finished"]
    assert [f["round"] for f in finished] == [1, 2]
    assert all(bool(f["metrics"]) == (privacy is None) for f in finished)


def _run_with_bank_a_tampering(sim_root, sim_attester, tamper):
    """Two accounted-DP rounds where bank-a's plaintext reply passes through ``tamper`` before being sealed."""
    job = build_job(sim_root, sim_attester, n=4, privacy={**PRIVACY, "epsilon": 50.0}, run_config=RUN_CONFIG)
    grid = job.grid(lambda p, i: make_client_app([ConfidentialMod(job.runtime(p))] + ([tamper] if i == 0 else [])),
                    node_config=lambda p, i: {"bank": p.id}, run_config=RUN_CONFIG)
    fjob = FederatedJob(manifest=job.manifest, consents=job.consents, enclave=job.enclave,
                        initial_arrays=initial_arrays(), events=job.events)
    return job, run_federated_job(fjob, grid, num_rounds=2)


@pytest.mark.parametrize(("key", "weight"), [("unit-weight", 2.0), ("unit-weight", 0), ("num-examples", 2.0)])
def test_accounted_dp_rejects_a_bank_whose_weight_differs(sim_root, sim_attester, key, weight):
    """Flower's accounted DP needs equal positive weights and raises otherwise: a bank reporting another
    weight is rejected, with the reason, and the job stops cleanly at round 1 (accounted DP aggregates a round
    only when every sampled party's update is valid); nothing crashes and the outputs are still sealed. The
    weight under DP is ``unit-weight``: another example count is an ordinary metric and changes nothing."""
    from flwr.app import MetricRecord

    def tamper(msg, context, call_next):
        out = call_next(msg, context)
        if not out.has_error() and msg.metadata.message_type.startswith("train"):
            metrics = dict(out.content["metrics"])
            metrics[key] = weight
            out.content["metrics"] = MetricRecord(metrics)
        return out

    job, result = _run_with_bank_a_tampering(sim_root, sim_attester, tamper)
    assert "fl.training_ended" in [k for k, _ in job.events.events]
    if key == "num-examples":
        assert result.rounds_completed == 2 and result.rejected == []
        return
    assert result.rounds_completed == 0 and "every sampled party's update is valid" in result.stop_reason
    assert len(result.rejected) == 1 and "bank-a" in result.rejected[0]
    assert ("equal weights" if weight else "finite positive number") in result.rejected[0]


@pytest.mark.parametrize("update", ["zero", "nan"])
def test_a_bank_whose_update_has_no_finite_nonzero_norm_is_rejected(sim_root, sim_attester, update):
    """Flower's clipping divides the clipping norm by the update's norm: a bank sending the model back
    unchanged (norm 0) made it raise ZeroDivisionError and crash the job; a NaN update (norm NaN) would pass
    its clipping unscaled and make the noised model NaN. Either is now rejected with its reason, and the job
    ends as any accounted round with a rejected reply does: stopped, outputs sealed."""
    from flwr.app import Array, ArrayRecord

    def tamper(msg, context, call_next):
        out = call_next(msg, context)
        if not out.has_error() and msg.metadata.message_type.startswith("train"):
            sent = msg.content["arrays"]
            out.content["arrays"] = ArrayRecord({k: Array(a.numpy() * (np.nan if update == "nan" else 1))
                                                 for k, a in sent.items()})
        return out

    job, result = _run_with_bank_a_tampering(sim_root, sim_attester, tamper)
    assert result.rounds_completed == 0 and "every sampled party's update is valid" in result.stop_reason
    assert len(result.rejected) == 1 and "bank-a" in result.rejected[0]
    reason = "norm" if update == "zero" else "NaN or infinite"
    assert reason in result.rejected[0]
    rejected = [f for k, f in job.events.events if k == "fl.reply_rejected"]
    assert len(rejected) == 1 and reason in str(rejected[0])
    assert "fl.training_ended" in [k for k, _ in job.events.events]
    assert np.all(np.isfinite(job.open_output(result)["w"].numpy()))


def test_a_huge_but_finite_update_is_clipped_not_rejected(sim_root, sim_attester):
    """An update of 1e20s is finite, but its float32 norm overflows, and Flower's clipping would pass it
    unscaled (clip / inf = 0 scales it to nothing, or a NaN spreads): the enclave scales it in float64 to
    twice the clipping norm, so Flower clips it as any large update. The job goes on, the model stays finite."""
    from flwr.app import Array, ArrayRecord

    def tamper(msg, context, call_next):
        out = call_next(msg, context)
        if not out.has_error() and msg.metadata.message_type.startswith("train"):
            sent = msg.content["arrays"]
            out.content["arrays"] = ArrayRecord({k: Array(np.full_like(a.numpy(), 1e20)) for k, a in sent.items()})
        return out

    job, result = _run_with_bank_a_tampering(sim_root, sim_attester, tamper)
    assert result.rejected == [] and result.rounds_completed == 2, (result.rejected, result.stop_reason)
    model = job.open_output(result)["w"].numpy()
    assert np.all(np.isfinite(model)) and np.abs(model).max() < 1e3
