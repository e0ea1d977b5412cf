"""In-process runtime: a real Flower ``Grid`` that delivers messages to ClientApps called directly.

No Ray, no SuperLink: tests, the demo and the benchmark run a real ServerApp strategy against real
ClientApps with their real mods in one process. Messages are copied through Flower's own protobuf
form in both directions (as a SuperLink would carry them), so the server and the clients never share
objects, and ``tap`` sees exactly the bytes a host relaying the traffic would see.

With ``workers=1`` (the default, deterministic) a message runs when it is pulled, so parties take turns.
With more workers it runs as soon as it is pushed, on a thread pool, as parties on their own machines
would: the server can open and add early replies while later parties still compute (only where the work
releases the GIL: numpy and BLAS do; Flower's serde and AES-GCM in ``cryptography`` do not). A node
handles one message at a time either way.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
from flwr.serverapp.grid import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger(__name__)

Tap = Callable[[str, bytes], None]
"""Called with ``"ins"`` or ``"res"`` and the serialised message, for every message relayed."""


@dataclass
class Node:
    """One simulated SuperNode: its ClientApp and its persistent Context."""

    node_id: int
    app: ClientApp
    node_config: dict[str, object] = field(default_factory=dict)
    context: Context | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class InProcessGrid(Grid):
    """Flower ``Grid`` over ClientApps in this process: with one worker a message runs when pulled, with
    more it runs when pushed, concurrently with other nodes' messages."""

    def __init__(self, nodes: Iterable[Node], *, run_id: int = 1, tap: Tap | None = None,
                 run_config: Mapping[str, object] | None = None, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._nodes: dict[int, Node] = {}
        for node in nodes:
            if node.node_id in self._nodes or node.node_id == SUPERLINK_NODE_ID:
                raise ValueError(f"node id {node.node_id} is reserved or used twice")
            node.context = Context(run_id=run_id, node_id=node.node_id, node_config=dict(node.node_config),
                                   state=RecordDict(), run_config=dict(run_config or {}))
            self._nodes[node.node_id] = node
        self._run = Run.create_empty(run_id)
        _claim_task_identity(run_id)
        self._tap = tap
        self._pending: dict[str, bytes] = {}
        self._replies: dict[str, Message] = {}
        self._running: dict[str, Future[None]] = {}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="node") if workers > 1 else None

    def close(self) -> None:
        """Stop the worker threads (after the messages already pushed have run)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> InProcessGrid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Grid interface -------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run
        _claim_task_identity(run.run_id)

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            if msg.metadata.dst_node_id not in self._nodes:
                raise ValueError(f"message for unknown node {msg.metadata.dst_node_id}")
            msg_id = uuid4().hex
            msg.metadata.__dict__["_message_id"] = msg_id
            msg.metadata.__dict__["_run_id"] = self._run.run_id
            msg.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            wire = message_to_proto(msg).SerializeToString()
            if self._tap is not None:
                self._tap("ins", wire)
            self._pending[msg_id] = wire
            ids.append(msg_id)
            if self._pool is not None:
                self._running[msg_id] = self._pool.submit(self._deliver, msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to ``message_ids``; a message not yet run is run now (one worker) or awaited (more)."""
        message_ids = list(message_ids)
        if self._pool is not None:
            running = [f for f in (self._running.pop(m, None) for m in message_ids) if f is not None]
            wait(running)
            for f in running:
                f.result()  # a failure of the runtime itself (not of a ClientApp) surfaces here, as with one worker
        out = []
        for msg_id in message_ids:
            if msg_id in self._pending:
                self._deliver(msg_id)
            reply = self._replies.pop(msg_id, None)
            if reply is not None:
                out.append(reply)
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        return list(self.pull_messages(ids))

    # -- delivery -------------------------------------------------------------------------------
    def _deliver(self, msg_id: str) -> None:
        wire = self._pending.pop(msg_id, None)
        if wire is None:  # already run
            return
        proto = ProtoMessage()
        proto.ParseFromString(wire)
        ins = message_from_proto(proto)
        node = self._nodes[ins.metadata.dst_node_id]
        started = time.perf_counter()
        with node.lock:
            try:
                reply = node.app(ins, node.context)  # type: ignore[arg-type]
            except Exception as exc:  # a crashing ClientApp becomes an error reply, as on a SuperNode
                log.warning("ClientApp on node %s raised %s", node.node_id, type(exc).__name__)
                reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=ins)
        log.debug("node %s handled %s in %.3fs", node.node_id, ins.metadata.message_type,
                  time.perf_counter() - started)
        reply.metadata.__dict__["_message_id"] = uuid4().hex
        reply.metadata.__dict__["_reply_to_message_id"] = msg_id
        reply.metadata.__dict__["_src_node_id"] = node.node_id
        wire_res = message_to_proto(reply).SerializeToString()
        if self._tap is not None:
            self._tap("res", wire_res)
        proto_res = ProtoMessage()
        proto_res.ParseFromString(wire_res)
        self._replies[msg_id] = message_from_proto(proto_res)


def _claim_task_identity(run_id: int) -> None:
    """Flower stamps new messages with the process's task identity; here the process is the ServerApp's."""
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
