import collections

import pytest

from grpcrpc.balancer import Balancer, Ejections
from grpcrpc.discovery.base import Endpoint

EPS = [Endpoint(f"127.0.0.1:{1000 + i}", "t", f"s{i}") for i in range(4)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_round_robin_cycles() -> None:
    b = Balancer("round_robin")
    assert [b.pick(EPS).server for _ in range(8)] == ["s0", "s1", "s2", "s3"] * 2


def test_p2c_prefers_less_loaded() -> None:
    b = Balancer("p2c")
    for _ in range(10):
        b.begin(EPS[0].address)
    picks = collections.Counter(b.pick(EPS[:2]).server for _ in range(200))
    assert picks == {"s1": 200}


def test_p2c_spreads_when_equal() -> None:
    b = Balancer("p2c")
    picks = collections.Counter(b.pick(EPS).server for _ in range(2000))
    assert set(picks) == {"s0", "s1", "s2", "s3"}


def test_p2c_takes_turns_among_equally_loaded() -> None:
    # Nothing in flight: every server gets one message per round, as RabbitMQ's consumers of
    # one queue do (oslo's CastTestCase.test_server_in_group counts on it).
    b = Balancer("p2c")
    picks = [b.pick(EPS).server for _ in range(12)]
    for i in range(0, 12, 4):
        assert sorted(picks[i:i + 4]) == ["s0", "s1", "s2", "s3"], picks


def test_p2c_takes_turns_per_topic() -> None:
    # Two topics picked in alternation: each still goes round its own servers.
    other = [Endpoint(f"127.0.0.1:{2000 + i}", "u", f"u{i}") for i in range(2)]
    b = Balancer("p2c")
    picks: dict[str, list[str]] = {"t": [], "u": []}
    for _ in range(4):
        picks["t"].append(b.pick(EPS[:2]).server)
        picks["u"].append(b.pick(other).server)
    assert collections.Counter(picks["t"]) == {"s0": 2, "s1": 2}
    assert collections.Counter(picks["u"]) == {"u0": 2, "u1": 2}


def test_p2c_passes_over_the_busy_one_whose_turn_it_is() -> None:
    # Turn-taking must not undo p2c: a server with work in flight is never chosen while a
    # less busy one is compared with it, whether it is the one in turn or the random one.
    b = Balancer("p2c")
    b.begin(EPS[2].address)
    b.begin(EPS[2].address)
    b.begin(EPS[1].address)
    picks = collections.Counter(b.pick(EPS).server for _ in range(400))
    assert "s2" not in picks, picks
    # s0 and s3 (idle) win every comparison they are in; s1 only beats s2.
    assert picks["s0"] > picks["s1"] and picks["s3"] > picks["s1"], picks


def test_p2c_follows_load_as_it_changes() -> None:
    b = Balancer("p2c")
    for _ in range(3):
        b.begin(EPS[0].address)
    assert all(b.pick(EPS[:2]).server == "s1" for _ in range(20))
    for _ in range(3):
        b.end(EPS[0].address)
    assert collections.Counter(b.pick(EPS[:2]).server for _ in range(20)) == {"s0": 10, "s1": 10}


def test_outstanding_counts() -> None:
    b = Balancer()
    b.begin("a")
    b.begin("a")
    b.end("a")
    assert b.outstanding("a") == 1
    b.end("a")
    assert b.outstanding("a") == 0


def test_ejected_endpoint_skipped_until_backoff_passes() -> None:
    clock = Clock()
    b = Balancer("round_robin", Ejections(base=1.0, cap=8.0, clock=clock))
    b.ejections.eject(EPS[0].address)
    assert all(b.pick(EPS[:2]).server == "s1" for _ in range(5))
    clock.now = 2.0  # past the jittered first backoff (≤ 1.2 s)
    assert {b.pick(EPS[:2]).server for _ in range(4)} == {"s0", "s1"}


def test_backoff_grows_and_is_capped_and_reset() -> None:
    e = Ejections(base=1.0, cap=4.0, clock=Clock())
    delays = [e.eject("a") for _ in range(6)]
    assert delays[0] <= 1.2 and delays[2] >= 3.2 and max(delays) <= 4.8
    e.restore("a")
    assert not e.is_ejected("a") and e.eject("a") <= 1.2


def test_all_ejected_still_picks_one() -> None:
    b = Balancer()
    for ep in EPS[:2]:
        b.ejections.eject(ep.address)
    assert b.pick(EPS[:2]) in EPS[:2]


def test_exclude_and_unknown_policy() -> None:
    b = Balancer("random")
    assert b.pick(EPS[:2], exclude=frozenset({EPS[0].address})) == EPS[1]
    with pytest.raises(ValueError, match="unknown balancing policy"):
        Balancer("fastest")  # type: ignore[arg-type]
