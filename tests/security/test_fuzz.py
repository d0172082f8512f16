"""Property-based tests: random bytes and near-valid envelopes at the parser and the dispatcher,
random values at the endpoint parser. Bounded here; `make fuzz` runs the long profile."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpcrpc import envelope as ev
from grpcrpc.discovery.base import Endpoint, InvalidEndpoint
from grpcrpc.dispatcher import Dispatcher
from grpcrpc.exceptions import GrpcrpcError
from grpcrpc.limits import Limits
from grpcrpc.serializer import NoOpSerializer
from grpcrpc.servicer import EnvelopeServicer, Identity

settings.register_profile("ci", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=30_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


class Api:
    def echo(self, ctxt: Any, value: Any = None) -> Any:
        return value

    async def aecho(self, ctxt: Any, **kwargs: Any) -> Any:
        return kwargs


def _servicer() -> EnvelopeServicer:
    return EnvelopeServicer(Identity("openstack", "svc", "s1", "default"), Dispatcher([Api()]),
                            NoOpSerializer(), Limits())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@st.composite
def near_valid_envelopes(draw: st.DrawFn) -> bytes:
    env = ev.Envelope(
        id=draw(st.text(max_size=300)),
        method=draw(st.sampled_from(["echo", "aecho", "_private", "missing", ""]) | st.text()),
        cast=draw(st.booleans()),
        fanout=draw(st.booleans()),
        cancel=draw(st.booleans()),
        timeout_ms=draw(st.integers(0, 2**32 - 1)),
    )
    env.target.topic = draw(st.sampled_from(["svc", "other", ""]) | st.text(max_size=300))
    env.target.server = draw(st.sampled_from(["", "s1", "s2"]))
    env.target.version = draw(st.sampled_from(["", "1.0", "1.9", "2.0", "x", "1.2.3.4"]))
    env.target.namespace = draw(st.sampled_from(["", "ns"]))
    args = draw(st.one_of(st.binary(max_size=64),
                          json_values.map(lambda v: json.dumps(v).encode())))
    env.args.json = args
    env.context = draw(st.one_of(st.binary(max_size=32),
                                 json_values.map(lambda v: json.dumps(v).encode())))
    for k, v in draw(st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=70)).items():
        env.headers[k] = v
    data = env.SerializeToString()
    # Sometimes flip bytes: near-valid wire data.
    if draw(st.booleans()) and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    return data


@given(st.binary(max_size=512))
def test_parser_takes_any_bytes(data: bytes) -> None:
    with contextlib.suppress(GrpcrpcError):
        ev.parse_envelope(data)


@given(near_valid_envelopes())
def test_dispatcher_accepts_or_answers_every_envelope(data: bytes) -> None:
    servicer = _servicer()
    env, ticket, reply = servicer._accept(data, None, "peer")
    if ticket is not None:
        assert env is not None
        with contextlib.suppress(GrpcrpcError):
            servicer._decode(env, ticket.handler)
        servicer._release(ticket)
        assert servicer.busy == 0
    else:
        assert reply is not None or (env is not None and env.cancel)
        if reply is not None:
            assert reply.WhichOneof("outcome") == "failure"


@given(st.one_of(st.binary(max_size=600),
                 json_values.map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({
                     "address": st.text(max_size=30) | st.just("127.0.0.1:80"),
                     "topic": st.text(max_size=10), "server": st.text(max_size=10),
                 }, optional={"pid": json_values, "tls": json_values, "weight": json_values,
                              "az": json_values}).map(lambda d: json.dumps(d).encode())))
def test_endpoint_values_parse_or_are_rejected(data: bytes) -> None:
    try:
        ep = Endpoint.from_json(data)
    except InvalidEndpoint:
        return
    assert Endpoint.from_json(ep.to_json()) == ep


@given(st.builds(ev.Failure, code=st.integers(0, 20), exc_type=st.text(max_size=20),
                 module=st.sampled_from(["builtins", "os", "grpcrpc.exceptions", "nope", ""]),
                 message=st.text(max_size=40), args_json=st.binary(max_size=40)))
def test_any_failure_becomes_an_exception(failure: ev.Failure) -> None:
    try:
        error = ev.exception_from_failure(failure, "m", "1.0", frozenset({"os", "grpcrpc.exceptions"}))
    except GrpcrpcError:  # undecodable args are themselves a named error
        return
    assert isinstance(error, BaseException) and not isinstance(error, (SystemExit, KeyboardInterrupt))
