"""Any metadata a client can send yields the caller or an AuthError: never another exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mpctrain.enclave.auth import MD_PARTY, MD_SESSION, MD_SIGNATURE, MD_TIME, AuthError, RequestAuthenticator
from mpctrain.seal.keys import IdentityKey
from mpctrain.wire import jobs_pb2

KEY = IdentityKey.generate()
REQ = jobs_pb2.GetJobRequest(job_id="j")
KEYS = {"p": [KEY.public_bytes()], "q": [b"\x00" * 32, b"short"]}
values = st.one_of(st.text(max_size=80), st.binary(max_size=200))
names = st.sampled_from([MD_PARTY, MD_TIME, MD_SESSION, MD_SIGNATURE, "other"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, values), max_size=8))
def test_arbitrary_metadata_is_rejected_cleanly(md):
    auth = RequestAuthenticator()
    try:
        auth.authenticate(md, "/m", REQ, lambda pid: KEYS.get(pid, []))
    except AuthError as exc:
        assert exc.code.name in ("UNAUTHENTICATED", "RESOURCE_EXHAUSTED")
    else:  # only a valid signature by a known key can get here, which random bytes do not produce
        raise AssertionError("random metadata authenticated")


def test_huge_or_odd_timestamps_are_rejected_cleanly():
    from mpctrain.enclave.auth import auth_metadata

    good = dict(auth_metadata(KEY, "p", "/m", REQ))
    for ts in ("9" * 400, "-" + "9" * 30, "1e9", "", "0x10", " 12 "):
        md = [(k, ts if k == MD_TIME else v) for k, v in good.items()]
        try:
            RequestAuthenticator().authenticate(md, "/m", REQ, lambda pid: KEYS.get(pid, []))
        except AuthError:
            continue
        raise AssertionError(f"timestamp {ts!r} accepted")
