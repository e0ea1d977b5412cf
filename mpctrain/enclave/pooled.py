"""The pooled trainer: opens the quorum's shards in enclave memory, trains, evaluates, seals outputs.

Validation is held out from every party's shard (stratified per party, seeded), so the reported
metrics cover every hospital's distribution and no party's rows are all in training. A DP job holds nothing
out and releases nothing computed from the rows without accounted noise: only the model and the accounting.
Its sampling rate, steps, noise and ε come from the manifest alone (``train.loop.dp_plan``), so not even the
row count leaves through them, and its events carry no row count.

Whatever the manifest alone decides (training, privacy, model size) is checked when the job is proposed
(``PooledRunner.check``); once shards are opened, a failure is reported in words that carry no data.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpctrain.enclave.events import EventSink
from mpctrain.enclave.identity import EnclaveIdentity
from mpctrain.enclave.outputs import seal_outputs
from mpctrain.enclave.state import Job, JobFailed, JobStore
from mpctrain.jobs import JobManifest, ManifestError

log = logging.getLogger("mpctrain.enclave.pooled")

SCHEMA_KEYS = ("label", "features", "label_values")
MIN_VAL_ROWS = 20
"""Fewest held-out rows of a job without DP, and of each party's shard (``MIN_VAL_ROWS_PER_PARTY``): its public
metrics are averages over them, and an average over a handful of rows that a party knows all but one of
gives that one away. With ``jobs.manifest.MIN_VAL_FRACTION`` a shard needs 200 rows."""
MIN_VAL_ROWS_PER_PARTY = 10
PUBLIC_DIGITS = 4
"""Significant digits of public metrics (and of a public training loss): no last bits to solve for a row."""
SHARD_MISMATCH = "a shard does not match the job's schema (feature count, dtypes or label range)"
WITHHELD = ("training failed inside the enclave after the parties' shards were opened; the cause is withheld "
            "because it could depend on their data")
DP_NOTE = ("DP job: validation metrics, loss history and row counts are withheld, since they are computed from "
           "the parties' rows without accounted noise; only the model (trained with DP-SGD) and the privacy "
           "accounting are released")


POOLED_METRICS = ("accuracy", "auc", "f1", "loss", "train_loss")
"""What ``public_metrics`` may name in a pooled job without DP: ``train.loop.evaluate``'s metrics, and the per-epoch
``train_loss``. A DP job may name ``epsilon_spent`` only (``jobs.manifest``)."""


def unavailable_reason(name: str, m: JobManifest) -> str:
    """Why the public metric ``name`` of ``m`` was not computed. Fixed per name and manifest: the metric's absence
    is public anyway, and the reason must say nothing more about the rows."""
    if name == "auc":
        hint = ("" if m.schema.get("label_values") is not None else
                "; pin [schema] label_values (e.g. [0, 1]) so that a row with another label is refused at its party")
        return "auc is defined only for two classes, both present among the validation rows" + hint
    return "not computed by this job"


class ValidationTooSmall(Exception):
    """The held-out part is under ``MIN_VAL_ROWS`` overall or ``MIN_VAL_ROWS_PER_PARTY`` for a shard. The message
    is fixed: it names no party and no count, since it is shown to every party of the job."""

    def __init__(self) -> None:
        super().__init__(f"fewer than {MIN_VAL_ROWS} validation rows in all or {MIN_VAL_ROWS_PER_PARTY} from some "
                         "party's shard; raise [training] val_fraction or bring more rows")


def own_shard_floor(y: np.ndarray, m: JobManifest) -> str | None:
    """Why the enclave would refuse this one shard under the validation floors (``ValidationTooSmall``), or None.

    For the party holding the shard, before it consents: the split is the enclave's (same function, fraction and
    seed), so its own held-out count is exact. The overall floor depends on the other shards too; it follows from
    the per-party one when the quorum is two or more, and is this shard's alone when it is one."""
    from mpctrain.train.data import stratified_split
    from mpctrain.train.loop import ConfigError, TrainConfig

    if m.mode != "pooled" or m.privacy:  # a DP job holds nothing out
        return None
    try:
        cfg = TrainConfig.from_dict(dict(m.training))
    except ConfigError:
        return None  # refused at propose time; nothing to check here
    held_out = len(stratified_split(np.empty((len(y), 0)), y, cfg.val_fraction, cfg.seed).y_val)
    floor = MIN_VAL_ROWS if m.quorum <= 1 else MIN_VAL_ROWS_PER_PARTY
    if held_out >= floor:
        return None
    about = f" (about {math.ceil(floor / cfg.val_fraction)} in all)" if cfg.val_fraction > 0 else ""
    return (f"the job holds out val_fraction {cfg.val_fraction:g} of each class for validation, {held_out} of this "
            f"table's {len(y)} rows, and the enclave needs at least {floor} from each party"
            f"{' (the quorum is one shard)' if m.quorum <= 1 else ''}: bring more rows{about} or ask the proposer to "
            "raise [training] val_fraction")


def table_schema(schema: Mapping[str, Any]) -> Any:
    """The training schema of a manifest (authoring-only keys such as ``format`` dropped)."""
    from mpctrain.train.data import TableSchema

    return TableSchema.from_dict({k: v for k, v in schema.items() if k in SCHEMA_KEYS})


def pool_shards(shards: Mapping[str, bytes], schema: Mapping[str, Any], val_fraction: float, seed: int, *,
                min_val_rows: int = 0, min_val_rows_per_party: int = 0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Decode each party's shard, hold out a stratified validation part of each, pool both sides.

    Raises ``ValidationTooSmall`` when a shard holds out fewer than ``min_val_rows_per_party`` rows or all of
    them fewer than ``min_val_rows``."""
    from mpctrain.train.data import stratified_split, table_from_bytes

    ts = table_schema(schema)
    xs_tr, ys_tr, xs_va, ys_va, rows = [], [], [], [], {}
    for party in sorted(shards):
        X, y = table_from_bytes(shards[party], num_features=len(ts.features), num_classes=ts.num_classes)
        split = stratified_split(X, y, val_fraction, seed)
        if len(split.y_val) < min_val_rows_per_party:
            raise ValidationTooSmall()
        xs_tr.append(split.X_train)
        ys_tr.append(split.y_train)
        xs_va.append(split.X_val)
        ys_va.append(split.y_val)
        rows[party] = len(y)
    if sum(len(v) for v in ys_va) < min_val_rows:
        raise ValidationTooSmall()
    return (np.concatenate(xs_tr), np.concatenate(ys_tr), np.concatenate(xs_va), np.concatenate(ys_va), rows)


@dataclass(frozen=True)
class Plan:
    """What the manifest alone decides about a pooled job (no party data involved)."""

    config: Any  # train.loop.TrainConfig
    dp: Any  # train.dp.DPConfig | None
    schema: Any  # train.data.TableSchema
    dp_plan: Any = None  # train.loop.DPPlan | None: the whole privacy schedule, known before any data


def plan(m: JobManifest) -> Plan:
    """Training, privacy and schema settings of ``m``, and a model of its spec built without memory (meta
    device) at the smallest class count the manifest allows: ``label_values`` if given, else 2. Under DP the
    privacy schedule too (noise calibrated, steps within the budget). Raises the setting's own error
    (``ConfigError``, ``PrivacyBudgetError``, ``ModelSpecError``, ``SchemaError``)."""
    import torch

    from mpctrain.train.dp import DPConfig
    from mpctrain.train.loop import TrainConfig, dp_plan
    from mpctrain.train.registry import build_model

    config = TrainConfig.from_dict(dict(m.training))  # unknown keys refused: a typo must not be ignored
    dp = DPConfig.from_dict(dict(m.privacy)) if m.privacy else None
    ts = table_schema(m.schema)
    with torch.device("meta"):
        build_model(dict(m.model), len(ts.features), max(ts.num_classes or 2, 2))
    return Plan(config, dp, ts, dp_plan(config, dp) if dp is not None else None)


def _after_data(exc: Exception) -> JobFailed:
    """The public form of an error raised once shards were opened: a fixed reason, and the type only where the
    type itself says nothing about the data (a malformed shard; too few validation rows)."""
    from mpctrain.train.data import DataError, SchemaError
    from mpctrain.train.tensors import TensorFormatError

    if type(exc) is ValidationTooSmall:
        return JobFailed("ValidationTooSmall", str(exc))
    if type(exc) in (TensorFormatError, SchemaError, DataError):
        return JobFailed(type(exc).__name__, SHARD_MISMATCH)
    return JobFailed("TrainingFailed", WITHHELD)


def _rounded(x: float) -> float:
    return float(f"{x:.{PUBLIC_DIGITS}g}")


class PooledRunner:
    """``Runner`` for ``mode = "pooled"`` jobs (see ``JobStore.runners``)."""

    def __init__(self, identity: EnclaveIdentity, events: EventSink, device: str = "auto") -> None:
        self.identity = identity
        self.events = events
        self.device = device

    def check(self, m: JobManifest) -> None:
        """At propose time: a bad setting or a model too large even at the smallest class count is refused before
        any data, so no such error can come after the shards are opened, where its message (a parameter
        count from the data's class count) would reveal a label."""
        try:
            plan(m)
        except (ValueError, TypeError) as exc:
            raise ManifestError(f"{type(exc).__name__}: {exc}") from None
        if not m.privacy:  # a DP job's public metrics are checked by the manifest itself
            unknown = sorted(set(m.public_metrics) - set(POOLED_METRICS))
            if unknown:
                raise ManifestError(f"public_metrics {unknown} are not metrics of a pooled job; it computes "
                                    f"{list(POOLED_METRICS)}")
            labels = m.schema.get("label_values")
            if "auc" in m.public_metrics and labels is not None and len(labels) != 2:
                raise ManifestError(f"public_metrics lists auc, defined for two classes only, and [schema] "
                                    f"label_values lists {len(labels)}")

    def __call__(self, job: Job, store: JobStore) -> None:
        from mpctrain.train.device import pick_device

        try:  # no data yet: these errors are about the manifest or this machine, and shown as they are
            p = plan(job.manifest)
            device = pick_device(self.device)
        except Exception as exc:
            raise JobFailed(type(exc).__name__, str(exc)) from None
        try:
            self._train(job, store, p, device)
        except Exception as exc:
            raise _after_data(exc) from None  # the cause stays here: its message may quote the data

    def _train(self, job: Job, store: JobStore, p: Plan, device: Any) -> None:
        from mpctrain.train.loop import evaluate, fit
        from mpctrain.train.registry import build_model
        from mpctrain.train.tensors import state_to_bytes

        m, cfg, dp = job.manifest, p.config, p.dp
        shards = {pid: up.plaintext() for pid, up in job.shards.items()}
        try:  # a DP job trains on every row: held-out rows would serve only metrics it does not release
            X_tr, y_tr, X_va, y_va, rows = pool_shards(
                shards, m.schema, 0.0 if dp else cfg.val_fraction, cfg.seed,
                min_val_rows=0 if dp else MIN_VAL_ROWS, min_val_rows_per_party=0 if dp else MIN_VAL_ROWS_PER_PARTY)
        finally:
            shards.clear()
        n_classes = p.schema.num_classes or int(max(y_tr.max(), y_va.max() if len(y_va) else 0)) + 1
        model = build_model(dict(m.model), X_tr.shape[1], max(n_classes, 2))
        if dp is None:
            self.events.emit("training.data", job_id=job.job_id, train_rows=len(y_tr), val_rows=len(y_va),
                             parties=sorted(rows), device=str(device))
        else:  # the host's audit log is outside the DP guarantee: no row count goes there
            self.events.emit("training.data", job_id=job.job_id, parties=sorted(rows), device=str(device))

        # Watchers are not authenticated: the training loss goes out only when the manifest makes it public,
        # rounded, and never under DP (the loss history is not covered by the privacy budget).
        show_loss = "train_loss" in m.public_metrics and dp is None

        def on_epoch(epoch: int, loss: float) -> None:
            store.record(job, "epoch", epoch=int(epoch), loss=_rounded(loss) if show_loss else float("nan"))

        result = fit(model, X_tr, y_tr, cfg, device=device, on_epoch=on_epoch, dp=dp)
        doc: dict[str, Any] = {"job_id": job.job_id, "manifest_digest": job.digest.hex(),
                               "stop_reason": result.stop_reason, "device": str(device)}
        if dp is None:
            metrics = {k: float(v) for k, v in evaluate(model, X_va, y_va).items() if _is_number(v)}
            doc["validation"] = metrics
            doc["rows"] = {"train": len(y_tr), "validation": len(y_va), "per_party": rows}
            doc["history"] = [float(h) for h in result.history]
        else:
            metrics = {"epsilon_spent": float(result.epsilon or 0.0)}
            doc["privacy"] = {**metrics, "delta": result.delta, "noise_multiplier": result.noise_multiplier,
                              "steps": result.steps, "sample_rate": dp.sample_rate}
            doc["note"] = DP_NOTE
        public = {k: _rounded(v) for k, v in metrics.items() if k in m.public_metrics}
        # a requested metric that could not be computed (auc of a job whose labels were not two classes) is said
        # to be missing, with a fixed reason, instead of vanishing (train_loss went out with the epochs)
        unavailable = {k: unavailable_reason(k, m) for k in m.public_metrics
                       if k not in metrics and not (k == "train_loss" and show_loss)}
        if unavailable:
            doc["unavailable"] = unavailable
        outputs = {"model": state_to_bytes(result.state), "metrics": json.dumps(doc, sort_keys=True, indent=2).encode()}
        for up in job.shards.values():
            up.wipe()
        seal_outputs(job, self.identity, outputs, self.events)
        with job.cond:
            job.public_metrics = public
            job.unavailable_metrics = unavailable
        store.record(job, "metrics", values=public,
                     message="; ".join(f"{k} not computed: {why}" for k, why in sorted(unavailable.items())))


def _is_number(v: object) -> bool:
    return isinstance(v, int | float | np.floating | np.integer) and not isinstance(v, bool)
