"""The banks' Flower ClientApp: an ordinary Flower app plus one mod, ``confidential_mod``, placed first.

Each SuperNode says which bank it is with ``--node-config "mpctrain-party='parties/bank-a'"`` (the party
profile: keys, policy, approved job); the same profile names the bank for the data generator.
Poisoning (for the robustness test) is opt-in through ``node_config['poison']``: "scale" or "flip".
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from .data import generate_bank, split
from .task import loss_and_accuracy, train_local

POISON_FACTORS = {"scale": -10.0, "flip": -3.0}  # a strongly scaled reversed update / a sign-flipped one


def _bank(context: Context) -> str:
    bank = context.node_config.get("bank") or Path(str(context.node_config.get("mpctrain-party", ""))).name
    return str(bank)


def _data(context: Context) -> tuple[np.ndarray, ...]:
    seed = int(context.run_config.get("data-seed", 7))
    x, y = generate_bank(_bank(context), seed=seed)
    return split(x, y, seed=seed)


def make_client_app(mods: list[Mod] | None = None) -> ClientApp:
    """The ClientApp with the given mods (the deployed app uses ``[confidential_mod]``)."""
    app = ClientApp(mods=list(mods or []))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        cfg = msg.content["config"]
        w0, b0 = arrays["w"].numpy(), arrays["b"].numpy()
        x, y, _, _ = _data(context)
        rnd = int(cfg.get("server-round", 1))
        seed = int(context.run_config.get("train-seed", 7)) * 1000 + rnd * 31 + zlib.crc32(_bank(context).encode())
        w, b, loss = train_local(w0, b0, x, y, epochs=int(context.run_config.get("local-epochs", 2)),
                                 lr=float(context.run_config.get("lr", 0.1)),
                                 batch_size=int(context.run_config.get("batch-size", 32)), seed=seed % (2**32))
        poison = context.node_config.get("poison")
        if poison in POISON_FACTORS:  # a malicious bank: boost or reverse its update
            factor = POISON_FACTORS[str(poison)]
            w, b = w0 + factor * (w - w0), b0 + factor * (b - b0)
        reply = RecordDict({
            "arrays": ArrayRecord({"w": Array(np.asarray(w, np.float32)), "b": Array(np.asarray(b, np.float32))}),
            "metrics": MetricRecord({"num-examples": len(y), "unit-weight": 1, "train-loss": loss}),
        })
        return Message(reply, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        _, _, xv, yv = _data(context)
        loss, acc = loss_and_accuracy(arrays["w"].numpy(), arrays["b"].numpy(), xv, yv)
        metrics = MetricRecord({"num-examples": len(yv), "unit-weight": 1, "loss": loss, "accuracy": acc})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def _deployed() -> ClientApp:
    from mpctrain.party.flower import confidential_mod

    return make_client_app([confidential_mod])


app = _deployed()
