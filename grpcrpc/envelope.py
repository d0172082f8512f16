"""Building and reading envelopes and replies: pure functions, shared by clients and servers.

Nothing here does I/O. Clients build an `Envelope`, servers validate it and build a `Reply`,
clients turn the reply into a value or an exception.

>>> env = build_envelope("id1", Target(topic="scheduler"), "ping", encode_json({}), b"{}")
>>> parse_envelope(env.SerializeToString()).method
'ping'
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import os
import re
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

from grpcrpc import exceptions as exc
from grpcrpc.generated.v1 import envelope_pb2 as pb
from grpcrpc.target import Target, parse_version

__all__ = [
    "Envelope",
    "ErrorCode",
    "Failure",
    "FanoutReport",
    "Payload",
    "Reply",
    "WireTarget",
    "blob_args",
    "build_envelope",
    "decode_json",
    "encode_json",
    "exception_from_failure",
    "failure_from_exception",
    "id_factory",
    "json_payload",
    "message_class",
    "message_to_python",
    "operation",
    "pack_message",
    "parse_envelope",
    "parse_reply",
    "payload_to_message",
    "payload_to_python",
    "payload_value",
    "plain_args",
    "refused_blob_args",
    "reply_failure",
    "timeout_ms",
    "validate_envelope",
    "wire_target",
]

Envelope = pb.Envelope
Reply = pb.Reply
Payload = pb.Payload
Blob = pb.Blob
WireTarget = pb.Target
Failure = pb.Failure
FanoutReport = pb.FanoutReport
ErrorCode = pb.ErrorCode

# Limits on fields a peer controls (the whole message is bounded by the gRPC max size). The
# server takes its values from `Limits`; these are the defaults.
MAX_NAME = 255  # every string field: id, method, exchange, topic, server, namespace, version, az
MAX_HEADERS = 64
MAX_HEADER_VALUE = 8192  # characters in one header value (W3C baggage's own maximum)
MAX_HEADER_BYTES = 16384  # characters in all header names and values together

# The W3C trace headers, which the server parses. OpenTelemetry's baggage parser splits on a
# regex that takes time quadratic in a run of blanks (8,191 spaces: ~43 ms of a loop's time),
# and no well-formed header has a long run of them: such a header is refused, not parsed.
_TRACE_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})
_BLANK_RUN = re.compile(r"[ \t]{16}")

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def id_factory() -> Callable[[], str]:
    """Cheap unique message ids: a random per-client prefix and a counter.

    >>> new_id = id_factory()
    >>> new_id() != new_id()
    True
    """
    prefix = os.urandom(6).hex()
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter):x}"


def encode_json(value: Any) -> bytes:
    """JSON bytes, or `SerializationError` naming what could not be encoded."""
    try:
        return _dumps(value).encode()
    except (TypeError, ValueError, RecursionError) as err:
        raise exc.SerializationError(f"value is not JSON-serialisable: {err}") from None


_loads = json.JSONDecoder().decode


def decode_json(data: bytes, what: str = "payload") -> Any:
    try:
        # UTF-8 by contract (RFC 8259): decoding it here skips json.loads' encoding sniffing.
        return _loads(data.decode()) if data else None
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise exc.InvalidEnvelope(f"{what} is not valid JSON: {err}") from None


# Strings at least this long travel as blobs (raw UTF-8 beside the JSON) where the peer reads
# them: JSON-escaping and -scanning a string costs ~2 ms per MB on each side, its UTF-8 bytes a
# copy. Shorter ones stay in the JSON (a blob's framing would cost more than it saves).
BLOB_CHARS = 16 * 1024


def json_payload(value: Any, *, blobs: bool = False) -> pb.Payload:
    """`value` as a JSON payload; with `blobs`, a long string that is the whole value or an
    entry of a top-level object travels as a blob (`SerializationError` as for `encode_json`).

    >>> p = json_payload({"a": 1, "b": "x" * BLOB_CHARS}, blobs=True)
    >>> p.json, p.blobs[0].key, len(p.blobs[0].utf8)
    (b'{"a":1}', 'b', 16384)
    >>> payload_value(p) == {"a": 1, "b": "x" * BLOB_CHARS}
    True
    """
    payload = pb.Payload()
    if blobs:
        try:
            if type(value) is str and len(value) >= BLOB_CHARS:
                payload.blobs.add().utf8 = value.encode()
                return payload
            if type(value) is dict:
                apart = [k for k, v in value.items()
                         if type(v) is str and type(k) is str and len(v) >= BLOB_CHARS]
                if apart:
                    for key in apart:
                        blob = payload.blobs.add()
                        blob.key, blob.utf8 = key, value[key].encode()
                    value = {k: v for k, v in value.items() if k not in apart}
        except UnicodeEncodeError as err:  # a lone surrogate: not valid UTF-8, nor JSON
            raise exc.SerializationError(f"value is not JSON-serialisable: {err}") from None
    payload.json = encode_json(value)
    return payload


def payload_value(payload: pb.Payload, what: str = "payload") -> Any:
    """A JSON payload's value (None when empty), blobs put back in place; `InvalidEnvelope`
    when it does not decode."""
    data, blobs = payload.json, payload.blobs
    if not blobs:
        return decode_json(data, what) if data else None
    if not blobs[0].HasField("key"):
        if data or len(blobs) != 1:
            raise exc.InvalidEnvelope(f"{what}: a whole-value blob comes alone")
        return _utf8(blobs[0].utf8, what)
    return _put_blobs(decode_json(data, what) if data else {}, blobs, what)


def _put_blobs(value: Any, blobs: Iterable[pb.Blob], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise exc.InvalidEnvelope(f"{what}: blobs with keys need a JSON object")
    for blob in blobs:
        if not blob.HasField("key") or blob.key in value:
            raise exc.InvalidEnvelope(f"{what}: a blob without a key, or a key given twice")
        value[blob.key] = _utf8(blob.utf8, what)
    return value


BLOB_ARGS = "grpcrpc.v1.BlobArgs"
_BLOB_ARGS_URL = "type.googleapis.com/" + BLOB_ARGS


def blob_args(kwargs: dict[str, Any]) -> pb.Payload | None:
    """Call arguments with their long top-level strings as blobs, marked as `BlobArgs` (which
    servers that predate blobs refuse unrun); None when no argument is that long.

    >>> packed = blob_args({"n": 1, "body": "x" * BLOB_CHARS})
    >>> packed.message.TypeName(), payload_to_python(packed) == {"n": 1, "body": "x" * BLOB_CHARS}
    ('grpcrpc.v1.BlobArgs', True)
    >>> blob_args({"n": 1}) is None
    True
    """
    for v in kwargs.values():
        if type(v) is str and len(v) >= BLOB_CHARS:
            break
    else:
        return None
    payload = pb.Payload()
    rest = {}
    try:
        for k, v in kwargs.items():
            if type(v) is str and type(k) is str and len(v) >= BLOB_CHARS:
                blob = payload.blobs.add()
                blob.key, blob.utf8 = k, v.encode()
            else:
                rest[k] = v
    except UnicodeEncodeError as err:  # a lone surrogate: not valid UTF-8, nor JSON
        raise exc.SerializationError(f"value is not JSON-serialisable: {err}") from None
    if not payload.blobs:
        return None
    packed = payload.message
    packed.type_url = _BLOB_ARGS_URL
    packed.value = pb.BlobArgs(json=encode_json(rest)).SerializeToString()
    return payload


def refused_blob_args(failure: pb.Failure) -> bool:
    """Whether a failure is a server that predates blobs refusing `BlobArgs` (so it did not run
    the call: safe to send again as plain JSON)."""
    return failure.code == pb.INVALID_ENVELOPE and BLOB_ARGS in failure.message


def plain_args(payload: pb.Payload) -> pb.Payload:
    """`BlobArgs` as the plain JSON payload a server that predates blobs reads."""
    return pb.Payload(json=encode_json(_blob_args_value(payload, "args")))


def _blob_args_value(payload: pb.Payload, what: str) -> dict[str, Any]:
    try:
        rest = pb.BlobArgs.FromString(payload.message.value).json
    except DecodeError as err:
        raise exc.InvalidEnvelope(f"{what} does not decode: {err}") from None
    return _put_blobs(decode_json(rest, what) if rest else {}, payload.blobs, what)


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as err:
        raise exc.InvalidEnvelope(f"{what} has a blob that is not UTF-8: {err}") from None


def pack_message(message: Message) -> pb.Payload:
    """A typed payload: the message packed in a `google.protobuf.Any`."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return pb.Payload(message=packed)


def message_class(type_name: str) -> type[Message]:
    """The generated class for a full message name (its module must have been imported)."""
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name)
    except KeyError:
        raise exc.InvalidEnvelope(f"unknown message type {type_name!r}") from None
    return message_factory.GetMessageClass(descriptor)


def payload_to_message(payload: pb.Payload, cls: type[Message], what: str = "payload") -> Message:
    """The payload as a `cls` message, whether it came typed (Any) or as JSON (dict-style peer)."""
    result = cls()
    if payload.WhichOneof("body") == "message" and payload.message.TypeName() != BLOB_ARGS:
        if payload.message.TypeName() != cls.DESCRIPTOR.full_name:
            raise exc.InvalidEnvelope(
                f"{what} is a {payload.message.TypeName()}, expected {cls.DESCRIPTOR.full_name}"
            )
        try:
            payload.message.Unpack(result)
        except DecodeError as err:
            raise exc.InvalidEnvelope(f"{what} does not decode: {err}") from None
        return result
    if payload.WhichOneof("body") == "message":  # BlobArgs from a dict-style caller
        data = _blob_args_value(payload, what)
    else:
        data = payload_value(payload, what)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise exc.InvalidEnvelope(f"{what} must be a JSON object for {cls.DESCRIPTOR.full_name}")
    try:
        json_format.ParseDict(data, result, ignore_unknown_fields=True)
    except json_format.ParseError as err:
        raise exc.InvalidEnvelope(f"{what} does not fit {cls.DESCRIPTOR.full_name}: {err}") from None
    return result


def message_to_python(message: Message) -> Any:
    """A message as plain JSON-able values (field names as in the .proto)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def payload_to_python(payload: pb.Payload, what: str = "payload") -> Any:
    """The payload as plain values, whether it came as JSON or typed (for dict-style code)."""
    if payload.WhichOneof("body") == "message":
        if payload.message.TypeName() == BLOB_ARGS:
            return _blob_args_value(payload, what)
        cls = message_class(payload.message.TypeName())
        return message_to_python(payload_to_message(payload, cls, what))
    return payload_value(payload, what)


def wire_target(target: Target, exchange: str = "", az: str = "") -> pb.Target:
    """A target as the envelope carries it; `exchange`/`az` fill in what `target` leaves unset."""
    return pb.Target(
        exchange=target.exchange or exchange,
        topic=target.topic or "",
        server=target.server or "",
        namespace=target.namespace or "",
        version=target.version or "",
        az=target.az or az,
    )


def timeout_ms(seconds: float) -> int:
    """A timeout as the envelope's uint32 milliseconds (clamped). Rounded down, so a chain of
    hops never adds to its budget, but never to 0 (which means "no deadline") while any remains.

    >>> timeout_ms(1.5), timeout_ms(0.0004), timeout_ms(0)
    (1500, 1, 0)
    """
    if seconds <= 0:
        return 0
    return max(1, min(int(seconds * 1000), 2**32 - 1))


def build_envelope(
    msg_id: str,
    target: Target,
    method: str,
    args: bytes | pb.Payload,
    context_json: bytes,
    *,
    cast: bool = False,
    fanout: bool = False,
    headers: Mapping[str, str] | None = None,
    timeout_ms: int = 0,
    exchange: str = "",
    az: str = "",
) -> pb.Envelope:
    """An envelope ready to send. `exchange`/`az` fill in what the target leaves unset."""
    env = pb.Envelope(
        id=msg_id,
        target=wire_target(target, exchange, az),
        method=method,
        cast=cast,
        fanout=fanout,
        context=context_json,
        timeout_ms=max(0, min(timeout_ms, 2**32 - 1)),
    )
    # Copied in, not passed to the constructor (which copies a large payload ~10x slower).
    if isinstance(args, pb.Payload):
        env.args.CopyFrom(args)
    else:
        env.args.json = args
    if headers:
        env.headers.update(headers)
    return env


def parse_envelope(data: bytes) -> pb.Envelope:
    """Bytes from the wire → a validated envelope, or `InvalidEnvelope` saying what is wrong."""
    try:
        env = pb.Envelope.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise exc.InvalidEnvelope(f"not a grpcrpc envelope: {err}") from None
    validate_envelope(env)
    return env


def validate_envelope(
    env: pb.Envelope, *, max_name: int = MAX_NAME, max_header_value: int = MAX_HEADER_VALUE,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> None:
    """Check what a peer controls before anything acts on it; `InvalidEnvelope` says what is
    wrong. Every string field is bounded (so an error echoing one stays small), the headers are
    bounded in number and size, and a fanout must be a cast (it would otherwise run as a call).

    >>> validate_envelope(Envelope(id="1", method="m", target=WireTarget(topic="t"),
    ...                            fanout=True))
    Traceback (most recent call last):
      ...
    grpcrpc.exceptions.InvalidEnvelope: a fanout envelope must be a cast
    """
    msg_id = env.id
    if not msg_id:
        raise exc.InvalidEnvelope("envelope has no id")
    if len(msg_id) > max_name:
        raise exc.InvalidEnvelope("envelope id too long")
    if env.cancel:
        return
    method, target = env.method, env.target
    if not method:
        raise exc.InvalidEnvelope("envelope has no method")
    topic, version = target.topic, target.version
    if not topic:
        raise exc.InvalidEnvelope("envelope has no target topic")
    if len(method) > max_name or len(topic) > max_name:
        raise exc.InvalidEnvelope("envelope method or topic too long")
    if (len(target.exchange) > max_name or len(target.server) > max_name
            or len(target.az) > max_name or len(target.namespace) > max_name
            or len(version) > max_name):
        raise exc.InvalidEnvelope(
            f"envelope target field too long (exchange, server, az, namespace and version "
            f"are at most {max_name} characters)")
    if env.fanout and not env.cast:
        raise exc.InvalidEnvelope("a fanout envelope must be a cast")
    headers = env.headers
    if headers:
        _validate_headers(headers, max_name, max_header_value, max_header_bytes)
    if version:
        try:
            parse_version(version)
        except ValueError as err:
            raise exc.InvalidEnvelope(str(err)) from None


def _validate_headers(headers: Mapping[str, str], max_name: int, max_value: int,
                      max_total: int) -> None:
    if len(headers) > MAX_HEADERS:
        raise exc.InvalidEnvelope(f"envelope has more than {MAX_HEADERS} headers")
    total = 0
    for key, value in headers.items():
        if len(key) > max_name:
            raise exc.InvalidEnvelope(f"envelope header name longer than {max_name} characters")
        if len(value) > max_value:
            raise exc.InvalidEnvelope(
                f"envelope header {key!r} longer than {max_value} characters")
        total += len(key) + len(value)
        if (key in _TRACE_HEADERS and ("  " in value or "\t" in value)
                and _BLANK_RUN.search(value)):
            raise exc.InvalidEnvelope(f"envelope header {key!r} is not a W3C trace header")
    if total > max_total:
        raise exc.InvalidEnvelope(f"envelope headers longer than {max_total} characters in all")


def operation(env: pb.Envelope) -> str:
    """What a validated envelope will run as, for access control: `call` unless it is a cast;
    a cast that is part of a fanout is a `fanout`.

    >>> operation(Envelope(cast=True, fanout=True)), operation(Envelope())
    ('fanout', 'call')
    """
    if not env.cast:
        return "call"
    return "fanout" if env.fanout else "cast"


def parse_reply(data: bytes) -> pb.Reply:
    try:
        return pb.Reply.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise exc.InvalidEnvelope(f"not a grpcrpc reply: {err}") from None


# --- failures -------------------------------------------------------------------------------

_CODE_FOR: dict[type[BaseException], int] = {
    exc.NoSuchMethod: pb.NO_SUCH_METHOD,
    exc.UnsupportedVersion: pb.UNSUPPORTED_VERSION,
    exc.InvalidEnvelope: pb.INVALID_ENVELOPE,
    exc.Overloaded: pb.OVERLOADED,
    exc.Unauthorized: pb.UNAUTHORIZED,
    exc.SerializationError: pb.SERIALIZATION,
}


def reply_failure(msg_id: str, code: int, message: str) -> pb.Reply:
    """A reply carrying one of grpcrpc's own errors."""
    return pb.Reply(id=msg_id, failure=pb.Failure(code=code, message=message))  # type: ignore[arg-type]


def failure_from_exception(
    error: BaseException, *, with_traceback: bool = True
) -> pb.Failure:
    """Describe an exception raised by an endpoint (or by grpcrpc while dispatching)."""
    code = _CODE_FOR.get(type(error), pb.REMOTE)
    cls = type(error)
    try:
        args_json = _dumps(list(error.args)).encode()
    except (TypeError, ValueError, RecursionError):
        args_json = b""
    kwargs = getattr(error, "kwargs", None)
    kwargs_json = b""
    if isinstance(kwargs, dict) and kwargs:
        try:
            kwargs_json = _dumps(kwargs).encode()
        except (TypeError, ValueError, RecursionError):
            kwargs_json = b""  # the caller then rebuilds it from its args alone
    tb: Iterable[str] = ()
    if with_traceback and code == pb.REMOTE:
        tb = traceback.format_exception(cls, error, error.__traceback__)
    return pb.Failure(
        code=code,  # type: ignore[arg-type]
        exc_type=cls.__name__,
        module=cls.__module__,
        message=str(error),
        traceback=[line.rstrip("\n") for line in tb],
        args_json=args_json,
        kwargs_json=kwargs_json,
    )


def _rebuild(failure: pb.Failure, allowed: frozenset[str]) -> BaseException | None:
    """The remote exception as its own type, when its module is allowed and it is safe."""
    if failure.module not in allowed:
        return None
    try:
        module = importlib.import_module(failure.module)
    except ImportError:
        return None
    cls = getattr(module, failure.exc_type, None)
    # Only Exception subclasses: never SystemExit, KeyboardInterrupt or a non-exception.
    if not isinstance(cls, type) or not issubclass(cls, Exception):
        return None
    args = decode_json(failure.args_json) if failure.args_json else [failure.message]
    kwargs = decode_json(failure.kwargs_json) if failure.kwargs_json else {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return None
    try:
        error = cls(*args, **kwargs)
    except Exception:  # a constructor that wants other arguments: fall back to RemoteError
        return None
    # Some exception types refuse new attributes; the traceback is then only in RemoteError.
    with contextlib.suppress(AttributeError, TypeError):
        error.remote_traceback = list(failure.traceback)  # type: ignore[attr-defined]
    return error


_BUILTIN_MODULES = frozenset({"builtins"})


def exception_from_failure(
    failure: pb.Failure, method: str, version: str, allowed_exmods: frozenset[str]
) -> BaseException:
    """The exception a caller sees for a failed reply.

    grpcrpc's own codes map to their named errors; a remote exception whose module is allowed
    (builtins always are, as in oslo.messaging) is re-raised as its own type; anything else is a
    `RemoteError` with the remote type, message and traceback.
    """
    code = failure.code
    if code == pb.REMOTE:
        rebuilt = _rebuild(failure, allowed_exmods | _BUILTIN_MODULES)
        if rebuilt is not None:
            return rebuilt
        return exc.RemoteError(failure.exc_type, failure.message, failure.traceback)
    if code == pb.NO_SUCH_METHOD:
        return exc.NoSuchMethod(method)
    if code == pb.UNSUPPORTED_VERSION:
        return exc.UnsupportedVersion(version or "1.0", method)
    if code == pb.OVERLOADED:
        return exc.Overloaded(failure.message or "server overloaded")
    if code == pb.UNAUTHORIZED:
        return exc.Unauthorized("not authorized")
    if code == pb.INVALID_ENVELOPE:
        return exc.InvalidEnvelope(failure.message)
    if code == pb.EXPIRED:
        return exc.MessagingTimeout(f"{method}: deadline passed before the server could run it")
    if code == pb.SERIALIZATION:
        return exc.SerializationError(failure.message)
    if code == pb.STOPPING:
        return exc.DeliveryError(f"{method}: server is stopping")
    return exc.RemoteError("UnknownError", f"unknown failure code {code}: {failure.message}")
