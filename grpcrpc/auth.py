"""Who is calling, and what they may do: identities, tokens and access control lists.

A caller proves who it is with a client certificate (mTLS: its identity is the certificate's
first SAN, else its subject CN) or a bearer token (`authorization: Bearer <token>` metadata,
looked up in constant time; tokens never appear in logs or spans). An `ACL` then says which
identities may `call`, `cast` or `fanout` which topics and methods; once an ACL is set, anything
it does not allow is denied.

One more operation marks peer broadcasters: `relay`, handing a broadcaster the very servers to
deliver a fanout to (`FanoutRequest.targets`: what a broadcaster does when it splits a large
topic among its peers). A broadcaster honours a target list only from an identity allowed to
`relay` the topic (and still delivers only to servers of that topic in its own routing table).
A rule grants `relay` only when it names it: a rule without `ops` means the three message
operations.

>>> acl = ACL.from_rules([{"identity": "conductor", "topics": ["scheduler"], "ops": ["call"]}])
>>> acl.allows("conductor", "call", "scheduler", "select_destinations")
True
>>> acl.allows("conductor", "cast", "scheduler", "select_destinations")
False
>>> peers = ACL.from_rules([{"identity": "broadcaster", "ops": ["fanout", "relay"]}])
>>> peers.allows("broadcaster", "relay", "compute", "*")
True
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ACL", "ALL_OPS", "OPS", "RELAY", "Rule", "ServerAuth", "Tokens", "identity_from_peer"]

OPS = ("call", "cast", "fanout")  # what a message does: a rule's default
RELAY = "relay"  # a peer broadcaster's right to name a fanout's servers; granted only by name
ALL_OPS = (*OPS, RELAY)
ANONYMOUS = None


class Tokens:
    """Static bearer tokens from a file, one `identity token` pair per line (`#` comments), or
    a JSON object `{"token": "identity"}`. Looked up by SHA-256 digest and compared with
    `hmac.compare_digest`, so timing tells nothing about how close a guess came.

    >>> t = Tokens({"s3cret-token-0123456789": "conductor"})
    >>> t.identity("s3cret-token-0123456789"), t.identity("guess")
    ('conductor', None)
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        for token in tokens:
            if len(token) < 16:
                raise ValueError("bearer tokens must be at least 16 characters")
        self._by_digest = {hashlib.sha256(t.encode()).digest(): (t, i) for t, i in tokens.items()}

    @classmethod
    def from_file(cls, path: str | pathlib.Path) -> Tokens:
        text = pathlib.Path(path).read_text()
        if text.lstrip().startswith("{"):
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a JSON object token -> identity")
            return cls({str(k): str(v) for k, v in data.items()})
        tokens = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected 'identity token'")
            tokens[parts[1]] = parts[0]
        return cls(tokens)

    def identity(self, presented: str) -> str | None:
        found = self._by_digest.get(hashlib.sha256(presented.encode()).digest())
        if found is None:
            return None
        token, identity = found
        return identity if hmac.compare_digest(token.encode(), presented.encode()) else None


@dataclass(frozen=True, slots=True)
class Rule:
    """Allow `identity` (a glob) to do `ops` on `topics` and `methods` (globs). `ops` defaults
    to the message operations; `relay` (peer broadcasters) must be named."""

    identity: str
    ops: tuple[str, ...] = OPS
    topics: tuple[str, ...] = ("*",)
    methods: tuple[str, ...] = ("*",)

    def __post_init__(self) -> None:
        bad = [op for op in self.ops if op not in ALL_OPS]
        if bad:
            raise ValueError(f"unknown operation(s) {bad}: expected {', '.join(ALL_OPS)}")

    def matches(self, identity: str, op: str, topic: str, method: str) -> bool:
        return (op in self.ops and fnmatch.fnmatchcase(identity, self.identity)
                and any(fnmatch.fnmatchcase(topic, t) for t in self.topics)
                and any(fnmatch.fnmatchcase(method, m) for m in self.methods))


@dataclass(frozen=True)
class ACL:
    """Deny by default: a request is allowed only if some rule matches it."""

    rules: tuple[Rule, ...] = ()

    @classmethod
    def from_rules(cls, rules: Iterable[Mapping[str, Any]]) -> ACL:
        """From plain data (TOML or JSON): `identity`, and optional `ops`, `topics`, `methods`."""
        built = []
        for i, raw in enumerate(rules):
            unknown = set(raw) - {"identity", "ops", "topics", "methods"}
            if unknown or "identity" not in raw:
                raise ValueError(f"ACL rule {i}: needs 'identity'; unknown keys {sorted(unknown)}")
            built.append(Rule(
                identity=str(raw["identity"]),
                ops=tuple(raw.get("ops", OPS)),
                topics=tuple(raw.get("topics", ("*",))),
                methods=tuple(raw.get("methods", ("*",))),
            ))
        return cls(tuple(built))

    def allows(self, identity: str | None, op: str, topic: str, method: str) -> bool:
        if identity is None:
            return False
        return any(r.matches(identity, op, topic, method) for r in self.rules)


def identity_from_peer(auth_context: Mapping[str, Sequence[bytes]]) -> str | None:
    """The identity in a verified client certificate: its first SAN, else its common name."""
    for key in ("x509_subject_alternative_name", "x509_common_name"):
        values = auth_context.get(key)
        if values:
            return values[0].decode(errors="replace")
    return None


@dataclass(frozen=True)
class ServerAuth:
    """How a server (or broadcaster) authenticates and authorises callers.

    `tokens`: accept bearer tokens. `mtls`: accept the identity of a verified client certificate
    (needs `ServerTLS(client_ca_file=...)`). `acl`: what each identity may do (None: any
    authenticated caller may do anything, `relay` included). A caller with no valid identity is
    refused.
    """

    tokens: Tokens | None = None
    mtls: bool = False
    acl: ACL | None = field(default=None)

    def __post_init__(self) -> None:
        if self.tokens is None and not self.mtls:
            raise ValueError("ServerAuth needs tokens, mtls, or both")

    def identify(self, metadata: Iterable[tuple[str, Any]],
                 auth_context: Mapping[str, Sequence[bytes]]) -> str | None:
        if self.tokens is not None:
            for key, value in metadata:
                if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                    identity = self.tokens.identity(value[7:])
                    if identity is not None:
                        return identity
        if self.mtls:
            return identity_from_peer(auth_context)
        return None

    def allows(self, identity: str | None, op: str, topic: str, method: str) -> bool:
        if identity is None:
            return False
        return self.acl is None or self.acl.allows(identity, op, topic, method)
