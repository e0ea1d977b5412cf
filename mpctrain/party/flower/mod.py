"""``confidential_mod``: the one Flower mod that makes a ClientApp confidential.

Put it first in ``mods`` (outermost): it opens the sealed instruction, lets the rest of the app (clipping,
DP, training) work on plaintext, and seals the reply to the attested enclave key. It attests the
aggregator before the first reply of a run and whenever the enclave key changes; if attestation fails,
or the instruction does not open, it answers with a bare error and the app never runs.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from mpctrain.enclave.federated.apps import check_run_config
from mpctrain.enclave.federated.codec import CodecError
from mpctrain.enclave.federated.errors import AttestationRefused, EnvelopeError, FederatedError, RunConfigMismatch
from mpctrain.enclave.federated.protocol import (
    ENCLAVE_SENDER,
    PURPOSE_INSTRUCTION,
    PURPOSE_REPLY,
    Envelope,
    PlaintextBuffer,
    make_sealed_content,
    open_content,
    read_sealed_content,
    seal_content,
)
from mpctrain.party.flower.runtime import PartyRuntime, resolve_party
from mpctrain.party.flower.sent import SentUpdate
from mpctrain.seal.errors import SealError

log = logging.getLogger(__name__)

REFUSED = "mpctrain refused"


def _refuse(msg: Message, why: str) -> Message:
    """An error reply: no content, only the reason (never data)."""
    log.warning("%s: %s", REFUSED, why)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=f"{REFUSED}: {why}"), reply_to=msg)


class ConfidentialMod:
    """The mod as an object bound to a fixed party (tests, embedded use) or resolved per node."""

    def __init__(self, party: PartyRuntime | Callable[[Context], PartyRuntime] | None = None) -> None:
        self._party = party
        self._local = threading.local()  # one plaintext buffer per thread, reused round after round

    def _buffer(self) -> PlaintextBuffer:
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = PlaintextBuffer()
        return buffer

    def runtime(self, context: Context) -> PartyRuntime:
        if isinstance(self._party, PartyRuntime):
            return self._party
        if self._party is not None:
            return self._party(context)
        return resolve_party(dict(context.node_config))

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        try:
            rt = self.runtime(context)
        except FederatedError as exc:
            return _refuse(msg, f"party not configured: {exc}")
        if not msg.has_content():
            return _refuse(msg, "instruction has no content")
        try:
            frames, env = read_sealed_content(msg.content)
        except EnvelopeError as exc:
            return _refuse(msg, f"instruction is not sealed by the enclave: {exc}")
        if env.job_id != rt.manifest.job_id:
            return _refuse(msg, f"instruction is for job {env.job_id!r}, not {rt.manifest.job_id!r}")
        if not env.object_id.startswith("ins:"):
            return _refuse(msg, "instruction object id is malformed")
        try:
            check_run_config(rt.manifest, context.run_config)
        except RunConfigMismatch as exc:
            return _refuse(msg, str(exc))
        nonce = env.object_id[4:]
        try:
            att = rt.attestation(msg.metadata.run_id, env.enclave_key)
        except AttestationRefused as exc:  # the detail (policy values, transport errors) stays in this log
            log.warning("%s: aggregator attestation refused: %s", REFUSED, exc)
            return _refuse(msg, f"aggregator attestation failed: {exc.check}")
        category = msg.metadata.message_type.split(".", 1)[0]
        try:
            content, ctx = open_content(
                frames, recipient_id=rt.party_id, recipient_key=rt.kem, sender_public=att.sig_public,
                purpose=PURPOSE_INSTRUCTION, job_id=rt.manifest.job_id, object_id=env.object_id,
                max_bytes=rt.max_bytes, buffer=self._buffer(),
            )
        except (SealError, EnvelopeError) as exc:
            return _refuse(msg, f"sealed instruction does not open: {type(exc).__name__}: {exc}")
        if ctx.get("job_digest") != rt.job_digest:
            return _refuse(msg, "the enclave runs another manifest than the one this party consented to")
        if (ctx.get("nonce") != nonce or ctx.get("category") != category
                or ctx.get("message_type") != msg.metadata.message_type):
            # the message type picks the app's handler (``train.<action>``): the host may not choose it
            return _refuse(msg, "sealed instruction context does not match its envelope")
        object_id = f"res:{nonce}:{rt.party_id}"
        try:
            first = rt.claim_reply(object_id)
        except FederatedError as exc:
            return _refuse(msg, f"cannot read this party's sent log: {exc}")
        if not first:
            return _refuse(msg, "this instruction was already answered: a replay is not answered twice")
        plain = Message(content=content, metadata=msg.metadata)
        try:
            reply = call_next(plain, context)
        except Exception as exc:  # report the type only: exception text may quote local data
            log.warning("ClientApp raised %s", type(exc).__name__)
            return _refuse(msg, f"ClientApp raised {type(exc).__name__}")
        if reply.has_error():
            return Message(Error(code=reply.error.code, reason=reply.error.reason), reply_to=msg)
        sealed_ctx = {"job_digest": rt.job_digest, "party": rt.party_id, "nonce": nonce, "category": category}
        try:
            frames_out = seal_content(
                reply.content, sealed_ctx, sender=rt.identity, sender_id=rt.party_id,
                recipients=[(ENCLAVE_SENDER, att.kem_alg, att.kem_public)], purpose=PURPOSE_REPLY,
                job_id=rt.manifest.job_id, object_id=object_id,
            )
        except (CodecError, EnvelopeError) as exc:  # the app's reply has no safe serialisation: send nothing
            return _refuse(msg, f"the ClientApp's reply cannot be sealed: {type(exc).__name__}")
        rt.record_sent(SentUpdate(job_id=rt.manifest.job_id, run_id=int(msg.metadata.run_id), object_id=object_id,
                                  size=sum(len(f) for f in frames_out),
                                  ciphertext_digest=hashlib.sha256(frames_out[0]).hexdigest()))
        return Message(make_sealed_content(frames_out, Envelope(rt.manifest.job_id, object_id, env.enclave_key,
                                                                 party=rt.party_id)), reply_to=msg)


confidential_mod = ConfidentialMod()
"""Module-level mod for ``ClientApp(mods=[confidential_mod])``: the party comes from ``node_config``."""
