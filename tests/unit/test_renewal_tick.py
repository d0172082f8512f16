"""Renewals of leases that share an `EtcdConnection` are moved back to the connection's ticks,
so that they travel together (pure arithmetic: no etcd is contacted)."""

from __future__ import annotations

import pytest

from grpcrpc.discovery.etcd import EtcdConfig, EtcdConnection


@pytest.mark.parametrize("now", [0.0, 12.34, 1_000_003.7])
def test_renewals_land_on_the_connections_ticks(now: float) -> None:
    connection = EtcdConnection(EtcdConfig(), renewal_tick=0.5)
    times = [connection.renewal_time(now + k * 0.013, 10.0) for k in range(100)]
    for k, t in enumerate(times):
        due = now + k * 0.013 + 10.0
        assert due - 0.5 < t <= due  # never later than due, never more than a tick early
    # Every one on the same grid: they are a whole number of ticks apart.
    assert all(abs(((t - times[0]) / 0.5) - round((t - times[0]) / 0.5)) < 1e-6 for t in times)
    assert len({round(t, 6) for t in times}) <= 4  # 1.3 s of renewals fall on 3-4 ticks


def test_no_tick_or_a_short_interval_renews_exactly_when_due() -> None:
    assert EtcdConnection(EtcdConfig(), renewal_tick=0).renewal_time(5.0, 10.0) == 15.0
    # A 1 s interval (TTL 3 s) is too short to move by up to a 0.5 s tick.
    assert EtcdConnection(EtcdConfig(), renewal_tick=0.5).renewal_time(5.0, 1.0) == 6.0
