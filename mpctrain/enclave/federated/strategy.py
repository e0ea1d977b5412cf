"""``Confidential(strategy)``: any Flower strategy, run inside the attested enclave on sealed traffic.

The inner strategy never sees ciphertext and the host never sees plaintext. Per round and message
kind, the wrapper seals each distinct instruction body once under a fresh data key wrapped to every
selected party, and opens each reply inside the enclave: wrong job, unknown or outside party, node
bound to another party, stale enclave key, replay from another round, tampering or truncation all
reject the reply before the inner strategy runs. FedAvg-style aggregation streams (``fedavg.py``):
``start`` folds each reply into the running mean as it is pulled (optionally on a second thread,
``folding.py``), so little is left after the last one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.grid import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Result,
    Strategy,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore.differential_privacy import get_norm

from mpctrain.enclave.events import EventSink, LogEventSink
from mpctrain.enclave.federated.codec import CodecError, array_view, to_flower_array
from mpctrain.enclave.federated.errors import EnvelopeError, JobNotReady, ReplyRejected
from mpctrain.enclave.federated.fedavg import (
    InconsistentUpdate,
    StreamingMean,
    check_finite,
    check_metric_values,
    is_weight,
)
from mpctrain.enclave.federated.folding import FoldBehind
from mpctrain.enclave.federated.protocol import (
    DEFAULT_CHUNK_SIZE,
    ENCLAVE_SENDER,
    PURPOSE_INSTRUCTION,
    PURPOSE_OUTPUT,
    PURPOSE_REPLY,
    Envelope,
    PlaintextBuffer,
    enclave_key_id,
    make_sealed_content,
    open_content,
    open_numpy,
    read_sealed_content,
    seal_content,
)
from mpctrain.enclave.identity import EnclaveIdentity
from mpctrain.jobs import Consent, JobManifest, missing_consents
from mpctrain.seal.errors import SealError
from mpctrain.seal.stream import MAX_RECIPIENTS

log = logging.getLogger(__name__)

DEFAULT_MAX_UPDATE_BYTES = 1 << 30
# an evaluate reply carries metrics, and every party's is held at once: a far smaller cap than an update's
DEFAULT_MAX_EVALUATE_BYTES = 16 << 20
POLL_MIN_S = 0.1
POLL_MAX_S = 3.0  # Flower's own send_and_receive polls every 3 s


@dataclass
class FederatedResult(Result):
    """What leaves the enclave: the final model sealed to the manifest's recipients, public metrics only.

    ``arrays`` stays empty: the plaintext model never leaves the strategy. ``sealed_output`` is one
    sealed stream (frames) every recipient opens with ``mpctrain.party.flower.open_output``; it stays
    empty when ``Confidential(deliver=...)`` hands the model to the aggregator's job store instead,
    which seals it per recipient with a signed receipt, as for pooled jobs.
    """

    sealed_output: list[bytes] = field(default_factory=list)
    rounds_completed: int = 0
    stop_reason: str = "completed"
    epsilon: dict[int, float] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)


def check_job(manifest: JobManifest, consents: Iterable[Consent], now: datetime | None = None) -> None:
    """The enclave starts a federated job only in federated mode, unexpired, with every data party's consent."""
    if manifest.mode != "federated":
        raise JobNotReady(f"job {manifest.job_id} is a {manifest.mode!r} job, not a federated one")
    if manifest.expired(now):
        raise JobNotReady(f"job {manifest.job_id} expired at {manifest.expires}; propose a new manifest")
    if len(manifest.data_parties()) > MAX_RECIPIENTS:
        raise JobNotReady(f"job {manifest.job_id} has {len(manifest.data_parties())} data parties; a sealed "
                          f"instruction wraps its key to at most {MAX_RECIPIENTS} (nodes not yet authenticated "
                          "may be any party): split the federation")
    missing = missing_consents(manifest, consents)
    if missing:
        raise JobNotReady(f"job {manifest.job_id} lacks valid consent from {missing}; "
                          "each data party must sign this exact manifest (`mpctrain job approve`)")


def is_fedavg_aggregation(strategy: Strategy) -> bool:
    """True when ``aggregate_train`` is Flower's FedAvg one (FedAvg, FedProx): it can stream."""
    return isinstance(strategy, FedAvg) and type(strategy).aggregate_train is FedAvg.aggregate_train


class _JobGrid(Grid):
    """The grid as the inner strategy sees it: nodes that proved to be outside the job are hidden."""

    def __init__(self, grid: Grid, hidden: set[int]) -> None:
        self._grid = grid
        self._hidden = hidden

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self._grid.get_node_ids() if n not in self._hidden]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise RuntimeError("the inner strategy must not send directly; Confidential seals its messages")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise RuntimeError("the inner strategy must not pull directly; Confidential opens its replies")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        raise RuntimeError("the inner strategy must not send directly; Confidential seals its messages")


class Confidential(Strategy):
    """Wrap any ``flwr.serverapp.strategy`` strategy so it runs on sealed traffic inside the enclave."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        manifest: JobManifest,
        consents: Iterable[Consent],
        enclave: EnclaveIdentity,
        events: EventSink | None = None,
        streaming: bool | None = None,
        max_update_bytes: int = DEFAULT_MAX_UPDATE_BYTES,
        max_evaluate_bytes: int = DEFAULT_MAX_EVALUATE_BYTES,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        now: Callable[[], datetime] | None = None,
        pull_batch: int = 1,
        fold_ahead: int = 0,
        deliver: Callable[[ArrayRecord, FederatedResult], None] | None = None,
    ) -> None:
        self._now = now or (lambda: datetime.now(UTC))
        self.consents = list(consents)
        check_job(manifest, self.consents, self._now())
        self.inner = strategy
        self.manifest = manifest
        self.enclave = enclave
        self.events: EventSink = events or LogEventSink()
        self.streaming = is_fedavg_aggregation(strategy) if streaming is None else streaming
        if self.streaming and not is_fedavg_aggregation(strategy):
            raise ValueError("streaming aggregation computes FedAvg; the inner strategy aggregates differently")
        self.max_update_bytes = max_update_bytes
        self.max_evaluate_bytes = max_evaluate_bytes
        if pull_batch < 1:
            raise ValueError("pull_batch must be at least 1")
        self.pull_batch = pull_batch
        if fold_ahead < 0:
            raise ValueError("fold_ahead must be 0 (fold in the pulling thread) or more")
        self.fold_ahead = fold_ahead
        self.deliver = deliver  # inside the enclave: hands the final model to the aggregator's own sealing
        self.chunk_size = chunk_size
        self.job_id = manifest.job_id
        self.job_digest = manifest.digest().hex()
        self._data_parties = {p.id: p for p in manifest.data_parties()}
        self._node_party: dict[int, str] = {}
        self._hidden_nodes: set[int] = set()
        self._expect: dict[tuple[str, int], dict[int, str]] = {}
        self._array_ref: dict[int, list[tuple[str, tuple[int, ...], str]]] = {}
        self._sent: dict[int, list[np.ndarray]] = {}  # the round's model, where the inner strategy clips updates
        self.rejections: list[ReplyRejected] = []
        self.timings: list[AggregationTiming] = []
        self._plaintext = PlaintextBuffer()  # reused by every round: no fresh pages to fault in per update

    # -- keys ---------------------------------------------------------------------------------
    @property
    def key_id(self) -> str:
        return enclave_key_id(self.enclave.kem.public_bytes(), self.enclave.sig.public_bytes())

    def rotate(self, enclave: EnclaveIdentity) -> None:
        """Use new enclave keys (a restarted enclave): parties re-attest, replies sealed to old keys fail."""
        self.enclave = enclave
        self.events.emit("fl.enclave_keys_rotated", job_id=self.job_id, key_id=self.key_id)

    # -- instructions -------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._array_ref = {server_round: array_structure(arrays)}
        self._sent = {server_round: arrays.to_numpy_ndarrays()} if _clips_updates(self.inner) else {}
        messages = self.inner.configure_train(server_round, arrays, config, _JobGrid(grid, self._hidden_nodes))
        return self._seal_instructions("train", server_round, messages, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        messages = self.inner.configure_evaluate(server_round, arrays, config, _JobGrid(grid, self._hidden_nodes))
        return self._seal_instructions("evaluate", server_round, messages, grid)

    def _recipients(self, node_id: int) -> list[str]:
        bound = self._node_party.get(node_id)
        if bound is not None:
            return [bound]
        # A node not yet authenticated may be any job party: the body is wrapped to all of them.
        return list(self._data_parties)

    def _seal_instructions(self, category: str, server_round: int, messages: Iterable[Message],
                           grid: Grid) -> list[Message]:
        groups: dict[tuple[int, str], tuple[RecordDict, list[Message]]] = {}
        for msg in messages:  # one sealed body per content and message type (the type is sealed with it)
            groups.setdefault((id(msg.content), msg.metadata.message_type), (msg.content, []))[1].append(msg)
        expect: dict[int, str] = {}
        out: list[Message] = []
        run_id = _run_id(grid)
        for (_, message_type), (content, group) in groups.items():
            nonce = os.urandom(16).hex()
            object_id = f"ins:{nonce}"
            recipients: list[str] = []
            for msg in group:
                for pid in self._recipients(msg.metadata.dst_node_id):
                    if pid not in recipients:
                        recipients.append(pid)
            ctx = {"job_digest": self.job_digest, "run": run_id, "category": category, "round": server_round,
                   "nonce": nonce, "message_type": message_type}
            started = time.perf_counter()
            frames = seal_content(
                content, ctx, sender=self.enclave.sig, sender_id=ENCLAVE_SENDER,
                recipients=[(pid, self._data_parties[pid].kem_alg, self._data_parties[pid].kem_public)
                            for pid in recipients],
                purpose=PURPOSE_INSTRUCTION, job_id=self.job_id, object_id=object_id, chunk_size=self.chunk_size,
            )
            sealed = make_sealed_content(frames, Envelope(self.job_id, object_id, self.key_id))
            for msg in group:
                node = msg.metadata.dst_node_id
                expect[node] = nonce
                out.append(Message(sealed, node, msg.metadata.message_type, ttl=msg.metadata.ttl,
                                   group_id=msg.metadata.group_id or None))
            self.events.emit("fl.instruction_sealed", job_id=self.job_id, category=category, round=server_round,
                             nodes=len(group), recipients=len(recipients), frames=len(frames),
                             seconds=round(time.perf_counter() - started, 4))
        self._expect[(category, server_round)] = expect
        return out

    # -- replies ------------------------------------------------------------------------------
    def _reject(self, exc: ReplyRejected, category: str, server_round: int) -> None:
        self.rejections.append(exc)
        self.events.emit("fl.reply_rejected", job_id=self.job_id, category=category, round=server_round,
                         node=exc.node_id, party=exc.party_id, reason=exc.reason)
        log.warning("%s", exc)

    def _open_reply(self, reply: Message, category: str, server_round: int, expect: dict[int, str],
                    seen: set[str], *, buffer: PlaintextBuffer | None = None) -> Any:
        """Open one reply; returns the decoded payload, or ``None`` after recording why it was rejected.

        Without ``buffer``: a RecordDict. With it: ``open_numpy``'s ndarray views into that buffer.
        """
        node = reply.metadata.src_node_id
        party: str | None = None
        try:
            nonce = expect.get(node)
            if nonce is None:
                raise ReplyRejected("no instruction of this round was sent to this node", node_id=node)
            frames, env = read_sealed_content(reply.content)
            party = env.party
            if env.job_id != self.job_id:
                raise ReplyRejected(f"reply is for job {env.job_id!r}", node_id=node, party_id=party)
            spec = self._data_parties.get(party)
            if spec is None:
                self._hidden_nodes.add(node)
                raise ReplyRejected("party is not a data party of this job", node_id=node, party_id=party)
            bound = self._node_party.get(node)
            if bound is not None and bound != party:
                raise ReplyRejected(f"node is bound to party {bound!r}", node_id=node, party_id=party)
            if party in seen:
                raise ReplyRejected("a second reply from this party in the same round", node_id=node,
                                    party_id=party)
            object_id = f"res:{nonce}:{party}"
            kwargs = dict(recipient_id=ENCLAVE_SENDER, recipient_key=self.enclave.kem,
                          sender_public=spec.identity_public, purpose=PURPOSE_REPLY, job_id=self.job_id,
                          object_id=object_id,
                          max_bytes=self.max_update_bytes if category == "train" else self.max_evaluate_bytes)
            if buffer is None:
                content, ctx = open_content(frames, **kwargs)
                decoded: Any = content
            else:
                decoded = open_numpy(frames, buffer, **kwargs)
                ctx = decoded[-1]
            want = {"job_digest": self.job_digest, "party": party, "nonce": nonce, "category": category}
            for key, value in want.items():
                if ctx.get(key) != value:
                    raise ReplyRejected(f"sealed context {key!r} does not match", node_id=node, party_id=party)
        except ReplyRejected as exc:
            self._reject(exc, category, server_round)
            return None
        except (SealError, EnvelopeError, CodecError) as exc:
            self._reject(ReplyRejected(f"{type(exc).__name__}: {exc}", node_id=node, party_id=party), category,
                         server_round)
            return None
        seen.add(party)
        self._node_party[node] = party
        self.events.emit("fl.update_accepted", job_id=self.job_id, category=category, round=server_round,
                         party=party, object_id=object_id, ciphertext_digest=_frames_digest(frames),
                         size=sum(len(f) for f in frames))
        return decoded

    def _open_all(self, category: str, server_round: int, replies: Iterable[Message]) -> Iterable[Message]:
        expect = self._expect.pop((category, server_round), {})
        seen: set[str] = set()
        for reply in replies:
            if reply.has_error():
                yield reply  # carries no content; the inner strategy logs it as a failure
                continue
            content = self._open_reply(reply, category, server_round, expect, seen)
            if content is not None:
                yield Message(content=content, metadata=reply.metadata)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.streaming:
            return self._aggregate_streaming(server_round, replies)
        opened = self._consistent(list(self._open_all("train", server_round, replies)), server_round)
        return self.inner.aggregate_train(server_round, opened)

    def _consistent(self, replies: list[Message], server_round: int, category: str = "train") -> list[Message]:
        """Drop authentic but malformed replies, so one party cannot make Flower abort the whole round.

        Flower's strategies raise when replies differ in structure. Here a train update's arrays must have
        the keys, shapes and dtypes of the model this round sent (an evaluate reply holds no arrays), and
        where the inner strategy clips updates, a finite non-zero update norm (``_check_update_norm``); the
        weight must be a finite non-negative number (positive, and the same for all, under accounted DP);
        every metric a number or list a float can hold; and the record names, metric keys and each metric's
        form must be the ones most replies use (so a single party cannot impose its own). Anything else is
        rejected like any other bad reply.
        """
        key = _weight_key(self.inner)
        uniform = category == "train" and _uniform_weights(self.inner)
        ref_arrays = self._array_ref.get(server_round) if category == "train" else None
        candidates: list[tuple[Message, tuple]] = []
        out = []
        for reply in replies:
            if reply.has_error():
                out.append(reply)
                continue
            content = reply.content
            node = reply.metadata.src_node_id
            try:
                arrays_wanted = 1 if category == "train" else 0
                if len(content.array_records) != arrays_wanted or len(content.metric_records) != 1:
                    raise InconsistentUpdate(f"a {category} reply holds exactly {arrays_wanted} ArrayRecord(s) and "
                                             "one MetricRecord")
                name = None
                if arrays_wanted:
                    name, arrays = next(iter(content.array_records.items()))
                    if ref_arrays is not None and array_structure(arrays) != ref_arrays:
                        raise InconsistentUpdate("array keys, shapes or dtypes differ from the model sent this round")
                    try:
                        check_finite(array_view(a) for a in arrays.values())
                    except CodecError as exc:
                        raise InconsistentUpdate(str(exc)) from None
                    sent = self._sent.get(server_round) if category == "train" else None
                    if sent is not None:
                        rescaled = _check_update_norm(arrays, sent, float(self.inner.clipping_norm))
                        if rescaled is not None:
                            content[name] = arrays = rescaled
                metric_name, metrics = next(iter(content.metric_records.items()))
                weight = metrics.get(key) if key else 0
                if not is_weight(weight) or (uniform and weight == 0):
                    sign = "positive" if uniform else "non-negative"
                    raise InconsistentUpdate(f"metric {key!r} must be a finite {sign} number")
                check_metric_values(dict(metrics))
            except InconsistentUpdate as exc:
                self._reject(ReplyRejected(str(exc), node_id=node, party_id=self._node_party.get(node)), category,
                             server_round)
                continue
            forms = frozenset((k, len(v) if isinstance(v, list) else None) for k, v in metrics.items())
            candidates.append((reply, (name, metric_name, forms, weight if uniform else None)))
        if candidates:
            common = Counter(sig for _, sig in candidates).most_common(1)[0][0]
            for reply, sig in candidates:
                if sig == common:
                    out.append(reply)
                    continue
                node = reply.metadata.src_node_id
                why = ("record names, metric keys or metric forms differ from the other replies'"
                       if sig[:3] != common[:3]
                       else "accounted DP needs equal weights: this weight differs from the other replies'")
                self._reject(ReplyRejected(why, node_id=node, party_id=self._node_party.get(node)), category,
                             server_round)
        return out

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        opened = self._consistent(list(self._open_all("evaluate", server_round, replies)), server_round, "evaluate")
        return self.inner.aggregate_evaluate(server_round, opened)

    def _aggregate_streaming(self, server_round: int,
                             replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        started = time.perf_counter()  # every reply is already here: the whole call is on the critical path
        agg = self.begin_streaming_round(server_round)
        replies = list(replies)
        for i, reply in enumerate(replies):
            agg.fold(reply, last=i == len(replies) - 1)
        return agg.finish(started)

    def begin_streaming_round(self, server_round: int) -> StreamingRound:
        """A FedAvg round that folds each reply in as it arrives (``start`` feeds it while pulling)."""
        if not self.streaming:
            raise ValueError("the inner strategy does not aggregate like FedAvg: it needs every reply at once")
        return StreamingRound(self, server_round)

    def summary(self) -> None:
        log.info("Confidential(%s) job=%s enclave-key=%s streaming=%s", type(self.inner).__name__, self.job_id,
                 self.key_id, self.streaming)
        self.inner.summary()

    # -- the run ------------------------------------------------------------------------------
    def start(  # type: ignore[override]
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> FederatedResult:
        """Flower's round loop, plus: privacy budget stops, ε after every round, outputs sealed at the end."""
        check_job(self.manifest, self.consents, self._now())
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = FederatedResult()
        arrays = initial_arrays
        self.events.emit("fl.training_started", job_id=self.job_id, rounds=num_rounds,
                         strategy=type(self.inner).__name__, manifest_digest=self.job_digest,
                         consents={c.party_id: c.signature.hex() for c in self.consents})
        for rnd in range(1, num_rounds + 1):
            try:
                messages = list(self.configure_train(rnd, arrays, train_config, grid))
            except PrivacyBudgetExhausted as exc:
                result.stop_reason = f"privacy budget: {exc}"
                self.events.emit("fl.training_stopped", job_id=self.job_id, round=rnd, reason=result.stop_reason)
                break
            if self.streaming:  # fold each reply in as it arrives: one update's work left after the last
                agg = self.begin_streaming_round(rnd)
                last_reply_at = time.perf_counter()
                ids = list(grid.push_messages(messages))
                left = len(ids)
                with FoldBehind(agg.fold_item, self.fold_ahead) as folder:
                    for reply in self._pull_as_they_arrive(grid, ids, timeout):
                        last_reply_at = time.perf_counter()
                        left -= 1  # each id is answered at most once
                        folder.submit((reply, left == 0))
                del messages
                agg_arrays, agg_metrics = agg.finish(last_reply_at)
            else:
                replies = grid.send_and_receive(messages=messages, timeout=timeout)
                agg_arrays, agg_metrics = self.aggregate_train(rnd, replies)
            if agg_arrays is None:  # every party refused, failed or was rejected: more rounds would not differ
                why = ("accounted DP aggregates a round only when every sampled party's update is valid"
                       if _uniform_weights(self.inner) else "every reply was an error or was rejected")
                result.stop_reason = (f"round {rnd}: no update was accepted ({why}; {len(self.rejections)} rejected "
                                      "so far)")
                self.events.emit("fl.training_stopped", job_id=self.job_id, round=rnd, reason=result.stop_reason)
                break
            arrays = agg_arrays
            if agg_metrics is not None:
                result.train_metrics_clientapp[rnd] = self._public(agg_metrics)
            eps = _epsilon(self.inner)
            if eps is not None:
                result.epsilon[rnd] = eps
                self.events.emit("fl.privacy_spent", job_id=self.job_id, round=rnd, epsilon=eps)
            eval_messages = list(self.configure_evaluate(rnd, arrays, evaluate_config, grid))
            if eval_messages:
                eval_replies = grid.send_and_receive(messages=eval_messages, timeout=timeout)
                eval_metrics = self.aggregate_evaluate(rnd, eval_replies)
                if eval_metrics is not None:
                    result.evaluate_metrics_clientapp[rnd] = self._public(eval_metrics)
            if evaluate_fn is not None:
                res = evaluate_fn(rnd, arrays)
                if res is not None:
                    result.evaluate_metrics_serverapp[rnd] = self._public(res)
            result.rounds_completed = rnd
            # under DP, per-round metrics on the banks' data are not covered by the budget: not even the
            # enclave's own event sinks (the host's audit log) get them, only the round number
            shown = {} if self.manifest.privacy else result.evaluate_metrics_clientapp.get(rnd, {})
            self.events.emit("fl.round_finished", job_id=self.job_id, round=rnd,
                             metrics={k: float(v) for k, v in shown.items() if isinstance(v, int | float)})
        result.rejected = [str(r) for r in self.rejections]
        if self.deliver is not None:  # the job store seals outputs and signs a receipt (FederatedRunner)
            self.deliver(arrays, result)
        else:
            result.sealed_output = self.seal_output(arrays, result, grid)
        self.events.emit("fl.training_ended", job_id=self.job_id, rounds=result.rounds_completed,
                         reason=result.stop_reason)
        return result

    def _pull_as_they_arrive(self, grid: Grid, message_ids: Iterable[str], timeout: float) -> Iterator[Message]:
        """Yield replies one by one as the grid has them, like ``send_and_receive`` but without waiting for all.

        Pulling ``pull_batch`` ids per call (default 1) bounds the replies held in memory to that many, so
        the streaming mean is O(model) end to end, and lets each reply be folded in while the others are
        still being computed. Polls back off from 0.1 s to Flower's 3 s while nothing arrives.
        """
        pending = dict.fromkeys(message_ids)
        deadline = time.monotonic() + timeout
        delay = POLL_MIN_S
        while pending:
            got = 0
            ids = list(pending)
            for i in range(0, len(ids), self.pull_batch):
                for reply in grid.pull_messages(ids[i:i + self.pull_batch]):
                    answered = reply.metadata.reply_to_message_id
                    if answered not in pending:  # not a reply to this round's messages, or a duplicate
                        continue
                    del pending[answered]
                    got += 1
                    yield reply
            if not pending:
                break
            if time.monotonic() >= deadline:
                log.warning("%d of the round's replies did not arrive within %ss", len(pending), timeout)
                break
            if got:
                delay = POLL_MIN_S
            else:
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, POLL_MAX_S)

    def _public(self, metrics: MetricRecord) -> MetricRecord:
        """Only metric names the manifest lists as public leave the enclave in clear."""
        allowed = set(self.manifest.public_metrics)
        return MetricRecord({k: v for k, v in metrics.items() if k in allowed})

    def seal_output(self, arrays: ArrayRecord, result: FederatedResult, grid: Grid) -> list[bytes]:
        """Seal the final model (and the run's facts) to every recipient named by the manifest."""
        recipients = [self.manifest.party(r) for r in self.manifest.recipients]
        ctx = {"job_digest": self.job_digest, "rounds": result.rounds_completed, "stop_reason": result.stop_reason,
               "epsilon": {str(k): v for k, v in result.epsilon.items()}, "run": _run_id(grid)}
        frames = seal_content(
            RecordDict({"arrays": arrays}), ctx, sender=self.enclave.sig, sender_id=ENCLAVE_SENDER,
            recipients=[(p.id, p.kem_alg, p.kem_public) for p in recipients], purpose=PURPOSE_OUTPUT,
            job_id=self.job_id, object_id=output_object_id(self.job_digest), chunk_size=self.chunk_size,
        )
        self.events.emit("fl.output_sealed", job_id=self.job_id, recipients=[p.id for p in recipients],
                         frames=len(frames))
        return frames


@dataclass
class AggregationTiming:
    """Where the server's aggregation time went in one round (event ``fl.round_aggregated``, benchmark).

    ``busy_s`` sums the time spent opening, checking and adding every reply plus the final division;
    ``after_last_reply_s`` is the part left once the last reply had arrived (the round's critical path):
    the same as ``busy_s`` when all replies are handed over at once, one update's worth when they are
    folded in as they arrive.
    """

    round: int
    updates: int
    busy_s: float
    after_last_reply_s: float


class StreamingRound:
    """One round of streaming FedAvg: ``fold`` each reply (opened into one reused buffer, added, dropped),
    then ``finish``. Rejections are recorded like every other bad reply; nothing reaches the sums before
    its stream, context and structure all check out."""

    def __init__(self, owner: Confidential, server_round: int) -> None:
        inner = owner.inner
        assert isinstance(inner, FedAvg)
        self.owner = owner
        self.round = server_round
        self._expect = owner._expect.pop(("train", server_round), {})
        self._seen: set[str] = set()
        self.mean = StreamingMean(inner.weighted_by_key, expected=owner._array_ref.get(server_round))
        self._metric_records: list[RecordDict] = []
        self._custom_metrics = inner.train_metrics_aggr_fn is not aggregate_metricrecords
        self._buffer: PlaintextBuffer | None = owner._plaintext
        self.busy_s = 0.0

    def fold_item(self, item: tuple[Message, bool]) -> None:
        self.fold(*item)

    def fold(self, reply: Message, last: bool = False) -> None:
        """Open, check and add one reply; ``last``: no other reply of this round will come."""
        started = time.perf_counter()
        try:
            self._fold(reply, last)
        finally:
            self.busy_s += time.perf_counter() - started

    def _fold(self, reply: Message, last: bool) -> None:
        owner, server_round = self.owner, self.round
        if reply.has_error():
            log.info("node %s replied with an error: %s", reply.metadata.src_node_id, reply.error.reason)
            return
        decoded = owner._open_reply(reply, "train", server_round, self._expect, self._seen,
                                    buffer=self._buffer or PlaintextBuffer())
        if decoded is None:
            return
        array_records, others, _ctx = decoded
        node = reply.metadata.src_node_id
        metrics = [o for o in others.values() if o["kind"] == "metrics"]
        try:
            if len(array_records) != 1 or len(metrics) != 1:
                raise InconsistentUpdate("a FedAvg reply holds exactly one ArrayRecord and one MetricRecord")
            try:
                MetricRecord(metrics[0]["values"])  # Flower's own type checks, before any value is used
            except (TypeError, ValueError) as exc:
                raise InconsistentUpdate(f"metric values of the wrong type: {exc}") from exc
            name, keys, arrays = array_records[0]
            self.mean.add(name, keys, arrays, metrics[0]["values"], last=last)
        except InconsistentUpdate as exc:
            owner._reject(ReplyRejected(str(exc), node_id=node, party_id=owner._node_party.get(node)), "train",
                          server_round)
            return
        if self._custom_metrics:
            self._metric_records.append(RecordDict({"metrics": MetricRecord(metrics[0]["values"])}))

    def finish(self, last_reply_at: float) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The round's mean; ``last_reply_at`` (``perf_counter``) is when the last reply had arrived."""
        started = time.perf_counter()
        owner, inner = self.owner, self.owner.inner
        assert isinstance(inner, FedAvg)
        self._buffer = None  # the last update's plaintext is no longer needed
        try:
            arrays_out, metrics_out = self.mean.result()
        except InconsistentUpdate as exc:  # e.g. every accepted update weighs zero: nothing to average
            log.warning("round %s not aggregated: %s", self.round, exc)
            arrays_out, metrics_out = None, None
        if self._custom_metrics and self._metric_records:
            metrics_out = inner.train_metrics_aggr_fn(self._metric_records, inner.weighted_by_key)
        done = time.perf_counter()
        self.busy_s += done - started
        timing = AggregationTiming(self.round, self.mean.count, self.busy_s, done - last_reply_at)
        owner.timings.append(timing)
        owner.events.emit("fl.round_aggregated", job_id=owner.job_id, round=self.round, updates=self.mean.count,
                          streaming=True, seconds=round(timing.busy_s, 4),
                          after_last_reply_s=round(timing.after_last_reply_s, 4))
        return arrays_out, metrics_out


def output_object_id(job_digest_hex: str) -> str:
    return f"output:{job_digest_hex}"


def _run_id(grid: Grid) -> int:
    try:
        return int(grid.run.run_id)
    except Exception:  # a grid without a run yet
        return 0


def array_structure(arrays: ArrayRecord) -> list[tuple[str, tuple[int, ...], str]]:
    """Keys, shapes and dtypes (numpy's ``dtype.str``) of a record's arrays: what every update must match."""
    out = []
    for key, array in arrays.items():
        try:
            dtype = np.dtype(array.dtype).str
        except TypeError:
            dtype = str(array.dtype)
        out.append((key, tuple(array.shape), dtype))
    return out


def _clips_updates(strategy: Strategy) -> bool:
    """Whether the strategy is a Flower central-DP wrapper that clips each update in the enclave."""
    return isinstance(strategy, (DifferentialPrivacyServerSideFixedClipping,
                                 DifferentialPrivacyServerSideAdaptiveClipping))


def _check_update_norm(arrays: ArrayRecord, sent: list[np.ndarray], clip: float) -> ArrayRecord | None:
    """Flower's server-side clipping scales an update by ``clip / norm``, its norm taken in the arrays'
    own float32: a norm of 0 (the model sent back unchanged) raises ZeroDivisionError there and would end
    the job, and a NaN or infinite one passes unscaled, so the bound the accounting relies on fails. Such
    updates are rejected. An update that is finite but so large that its float32 norm overflows is what
    clipping is for: it is scaled in float64 to norm ``2 * clip`` (returned, to replace the reply), so
    Flower still clips it, and counts it as clipped, exactly as it would a large finite update."""
    replies = arrays.to_numpy_ndarrays()
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing norm is handled below, not warned about
        norm = get_norm([np.subtract(x, y) for x, y in zip(replies, sent, strict=True)])
    if math.isfinite(norm) and norm > 0:
        return None
    diffs = [np.subtract(x, y, dtype=np.float64) for x, y in zip(replies, sent, strict=True)]
    norm64 = math.sqrt(math.fsum(float(np.square(d).sum()) for d in diffs))
    if math.isfinite(norm64) and norm64 > 0:
        scale = 2 * clip / norm64
        scaled = [(np.asarray(y, np.float64) + d * scale).astype(y.dtype) for y, d in zip(sent, diffs, strict=True)]
        norm = get_norm([np.subtract(x, y) for x, y in zip(scaled, sent, strict=True)])
        if math.isfinite(norm) and norm > 0:
            return ArrayRecord({key: to_flower_array(a) for key, a in zip(arrays.keys(), scaled, strict=True)})
    raise InconsistentUpdate(f"the update's L2 norm is {norm}: central DP clips an update by scaling it by "
                             "clip / norm, which needs a finite non-zero norm")


def _uniform_weights(strategy: Strategy) -> bool:
    """Whether the strategy is a Flower DP wrapper with an accountant: it requires equal positive weights."""
    return getattr(strategy, "accountant", None) is not None and hasattr(strategy, "_validate_uniform_weights")


def _weight_key(strategy: Strategy) -> str | None:
    """The weighting metric of the strategy (or of the strategy a DP wrapper wraps)."""
    for candidate in (strategy, getattr(strategy, "strategy", None)):
        key = getattr(candidate, "weighted_by_key", None)
        if isinstance(key, str):
            return key
    return None


def _epsilon(strategy: Strategy) -> float | None:
    spent = getattr(strategy, "privacy_spent", None)
    if spent is None:
        return None
    value = spent()
    return None if value is None else float(value.epsilon)


def _frames_digest(frames: list[bytes]) -> str:
    """SHA-256 of the sealed stream's header frame: it names exactly one ciphertext, since every chunk is
    authenticated under the header's digest and fresh data key (hashing all frames would cost a full pass)."""
    return hashlib.sha256(frames[0]).hexdigest() if frames else ""
