"""The Attestation gRPC service: evidence binding the caller's nonce to the enclave keys."""

from __future__ import annotations

import hashlib

import grpc

from mpctrain.enclave.common import Rejected, guarded
from mpctrain.enclave.events import EventSink
from mpctrain.enclave.identity import EnclaveIdentity
from mpctrain.enclave.limits import Limits
from mpctrain.enclave.ratelimit import CallerRateLimit
from mpctrain.seal.binding import NONCE_BYTES
from mpctrain.wire import attestation_pb2, attestation_pb2_grpc
from mpctrain.wire.convert import bundle_to_proto

GET_EVIDENCE = "/mpctrain.v1.Attestation/GetEvidence"


class AttestationService(attestation_pb2_grpc.AttestationServicer):
    """Anyone may ask for evidence, so asking is rate limited (``limits``): see ``ratelimit``."""

    def __init__(self, identity: EnclaveIdentity, events: EventSink, limits: Limits | None = None) -> None:
        self.identity = identity
        self.events = events
        limits = limits or Limits()
        self.rate = CallerRateLimit("evidence", per_peer=limits.evidence_per_minute_per_peer,
                                    total=limits.evidence_per_minute)

    def GetEvidence(self, request: attestation_pb2.GetEvidenceRequest,
                    context: grpc.ServicerContext) -> attestation_pb2.EvidenceBundle:
        with guarded(context, self.events, GET_EVIDENCE):
            if len(request.nonce) != NONCE_BYTES:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               f"nonce must be exactly {NONCE_BYTES} fresh random bytes, got {len(request.nonce)}")
            if not self.rate.allow(context.peer()):
                raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               "too many evidence requests from this address or in total in the last minute; "
                               "retry in a minute")
            bundle = self.identity.evidence(bytes(request.nonce))
            self.events.emit("evidence.served", backend=bundle.cpu.kind, gpus=len(bundle.gpus),
                             evidence_digest=bundle.digest().hex(),
                             nonce_digest=hashlib.sha256(request.nonce).hexdigest())
            return bundle_to_proto(bundle)
