"""The result of a fanout cast: how many servers there were, how many accepted, who failed.

>>> r = FanoutReport(targets=2, delivered=1, failures=(Failed("127.0.0.1:1", "host1", "refused"),))
>>> r.ok
False
"""

from __future__ import annotations

from dataclasses import dataclass

from grpcrpc.generated.v1 import envelope_pb2 as pb

__all__ = ["Failed", "FanoutReport", "failed_for", "report"]


@dataclass(frozen=True, slots=True)
class Failed:
    """One server a fanout did not reach (or that did not accept), and why."""

    address: str
    server: str
    reason: str


@dataclass(frozen=True, slots=True)
class FanoutReport:
    """What a fanout cast achieved; `delivered` counts servers that accepted the message."""

    targets: int
    delivered: int
    failures: tuple[Failed, ...] = ()

    @property
    def ok(self) -> bool:
        return self.delivered == self.targets

    def to_pb(self) -> pb.FanoutReport:
        return pb.FanoutReport(
            targets=self.targets,
            delivered=self.delivered,
            failures=[
                pb.DeliveryFailure(address=f.address, server=f.server, reason=f.reason)
                for f in self.failures
            ],
        )

    @classmethod
    def from_pb(cls, msg: pb.FanoutReport) -> FanoutReport:
        return cls(
            msg.targets,
            msg.delivered,
            tuple(Failed(f.address, f.server, f.reason) for f in msg.failures),
        )


def failed_for(address: str, server: str, reply: pb.Reply | None, error: str = "") -> Failed | None:
    """None when `reply` says the server accepted the fanout; otherwise why it did not."""
    if reply is not None and reply.WhichOneof("outcome") == "accepted":
        return None
    if reply is not None and reply.WhichOneof("outcome") == "failure":
        name = pb.ErrorCode.Name(reply.failure.code)
        error = f"{name}: {reply.failure.message}"
    return Failed(address, server, error or "no reply")


def report(targets: int, failures: list[Failed]) -> FanoutReport:
    return FanoutReport(targets, targets - len(failures), tuple(failures))
