"""The pooled trainer: opens the quorum's shards in enclave memory, trains, evaluates, seals outputs.

Validation is held out from every party's shard (stratified per party, seeded), so the reported
metrics cover every hospital's distribution and no party's rows are all in training.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from mpctrain.enclave.events import EventSink
from mpctrain.enclave.identity import EnclaveIdentity
from mpctrain.enclave.outputs import seal_outputs
from mpctrain.enclave.state import Job, JobStore

log = logging.getLogger("mpctrain.enclave.pooled")

SCHEMA_KEYS = ("label", "features", "label_values")


def table_schema(schema: Mapping[str, Any]) -> Any:
    """The training schema of a manifest (authoring-only keys such as ``format`` dropped)."""
    from mpctrain.train.data import TableSchema

    return TableSchema.from_dict({k: v for k, v in schema.items() if k in SCHEMA_KEYS})


def pool_shards(shards: Mapping[str, bytes], schema: Mapping[str, Any], val_fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Decode each party's shard, hold out a stratified validation part of each, pool both sides."""
    from mpctrain.train.data import stratified_split, table_from_bytes

    ts = table_schema(schema)
    xs_tr, ys_tr, xs_va, ys_va, rows = [], [], [], [], {}
    for party in sorted(shards):
        X, y = table_from_bytes(shards[party], num_features=len(ts.features), num_classes=ts.num_classes)
        split = stratified_split(X, y, val_fraction, seed)
        xs_tr.append(split.X_train)
        ys_tr.append(split.y_train)
        xs_va.append(split.X_val)
        ys_va.append(split.y_val)
        rows[party] = len(y)
    return (np.concatenate(xs_tr), np.concatenate(ys_tr), np.concatenate(xs_va), np.concatenate(ys_va), rows)


class PooledRunner:
    """``Runner`` for ``mode = "pooled"`` jobs (see ``JobStore.runners``)."""

    def __init__(self, identity: EnclaveIdentity, events: EventSink, device: str = "auto") -> None:
        self.identity = identity
        self.events = events
        self.device = device

    def __call__(self, job: Job, store: JobStore) -> None:
        from mpctrain.train.device import pick_device
        from mpctrain.train.dp import DPConfig
        from mpctrain.train.loop import TrainConfig, evaluate, fit
        from mpctrain.train.registry import build_model
        from mpctrain.train.tensors import state_to_bytes

        m = job.manifest
        training = {k: v for k, v in m.training.items() if k in TrainConfig.__dataclass_fields__}
        cfg = TrainConfig.from_dict(training)
        seed, val_fraction = cfg.seed, cfg.val_fraction
        shards = {pid: up.plaintext() for pid, up in job.shards.items()}
        try:
            X_tr, y_tr, X_va, y_va, rows = pool_shards(shards, m.schema, val_fraction, seed)
        finally:
            shards.clear()
        ts = table_schema(m.schema)
        n_classes = ts.num_classes or int(max(y_tr.max(), y_va.max() if len(y_va) else 0)) + 1
        model = build_model(dict(m.model), X_tr.shape[1], max(n_classes, 2))
        device = pick_device(self.device)
        self.events.emit("training.data", job_id=job.job_id, train_rows=len(y_tr), val_rows=len(y_va),
                         parties=sorted(rows), device=str(device))

        dp = DPConfig.from_dict(dict(m.privacy)) if m.privacy else None
        # Watchers are not authenticated: the training loss goes out only when the manifest makes it public,
        # and never under DP (the loss history is not covered by the privacy budget).
        show_loss = "train_loss" in m.public_metrics and dp is None

        def on_epoch(epoch: int, loss: float) -> None:
            store.record(job, "epoch", epoch=int(epoch), loss=float(loss) if show_loss else float("nan"))

        result = fit(model, X_tr, y_tr, cfg, device=device, on_epoch=on_epoch, dp=dp)
        metrics = {k: float(v) for k, v in evaluate(model, X_va, y_va).items() if _is_number(v)}
        if result.epsilon is not None:
            metrics["epsilon_spent"] = float(result.epsilon)
        metrics_doc = {
            "job_id": job.job_id,
            "manifest_digest": job.digest.hex(),
            "validation": metrics,
            "rows": {"train": len(y_tr), "validation": len(y_va), "per_party": rows},
            "history": [float(h) for h in result.history],
            "stop_reason": result.stop_reason,
            "device": str(device),
        }
        outputs = {
            "model": state_to_bytes(result.state),
            "metrics": json.dumps(metrics_doc, sort_keys=True, indent=2).encode(),
        }
        for up in job.shards.values():
            up.wipe()
        seal_outputs(job, self.identity, outputs, self.events)
        public = {k: v for k, v in metrics.items() if k in m.public_metrics}
        with job.cond:
            job.public_metrics = public
        store.record(job, "metrics", values=public)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float | np.floating | np.integer) and not isinstance(v, bool)
