"""Central differential privacy inside the enclave: Flower's DP wrapper plus an RDP accountant.

Flower's ``DifferentialPrivacyServerSideFixedClipping`` clips each update and adds Gaussian noise to the
aggregate; its accountant (Google's ``dp-accounting``, RDP) composes one Gaussian release per round. The
manifest's ``[privacy]`` names the budget; the accountant refuses, before sending anything, a round that
would push ε past it, and ``Confidential.start`` then stops training and still seals the outputs.

Because this runs inside the attested enclave on plaintext updates, clipping happens where parties
cannot skip it, and the noise is added once to the aggregate rather than by every party.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy
from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from mpctrain.jobs import JobManifest, ManifestError

UNIT_WEIGHT_KEY = "unit-weight"
"""Client-level DP weighs every party equally; the ClientApp reports this metric as 1."""


def privacy_settings(privacy: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """(epsilon, delta, clipping norm, noise multiplier) from a manifest's ``[privacy]``, validated."""
    try:
        epsilon = float(privacy["epsilon"])
        delta = float(privacy["delta"])
        clip = float(privacy.get("clip", 1.0))
        noise = float(privacy["noise_multiplier"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"[privacy] needs numeric epsilon, delta, noise_multiplier (and clip): {exc}") from exc
    if not (epsilon > 0 and 0 < delta < 1 and clip > 0 and noise > 0):
        raise ManifestError("[privacy] needs epsilon > 0, 0 < delta < 1, clip > 0 and noise_multiplier > 0")
    return epsilon, delta, clip, noise


def central_dp(strategy: Strategy, manifest: JobManifest, *, num_sampled: int, population: int) -> Strategy:
    """Wrap ``strategy`` (a FedAvg weighted by ``unit-weight``) in central DP with the manifest's ε budget."""
    epsilon, delta, clip, noise = privacy_settings(manifest.privacy)
    accountant = RdpAccountant(PrivacyConfig(
        target_delta=delta, population_size=population, neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION, max_epsilon=epsilon,
    ))
    return DifferentialPrivacyServerSideFixedClipping(strategy, noise_multiplier=noise, clipping_norm=clip,
                                                      num_sampled_clients=num_sampled, accountant=accountant)
