"""The registry's retry delay near the end of its lease (pure logic: no etcd is reached)."""

import time

from grpcrpc.discovery.etcd import EtcdConfig, EtcdRegistry


def registry_with(left: float | None) -> EtcdRegistry:
    registry = EtcdRegistry(EtcdConfig(["127.0.0.1:1"]), ttl=10)
    if left is not None:
        registry._lease = 0x1234
        registry._deadline = time.monotonic() + left
    return registry


def test_a_live_lease_is_retried_within_a_quarter_of_what_is_left() -> None:
    # 8 s left: a 5 s backoff draw would leave one more try at most; 2 s leaves several.
    assert 1.9 < registry_with(8.0)._before_the_lease_ends(5.0) <= 2.0
    assert registry_with(8.0)._before_the_lease_ends(0.3) == 0.3  # a short draw stands
    assert registry_with(0.2)._before_the_lease_ends(5.0) == 0.1  # never a busy loop


def test_past_the_lease_or_without_one_the_backoff_stands() -> None:
    # The storm after a cluster outage is spread by the plain jittered backoff.
    assert registry_with(-1.0)._before_the_lease_ends(5.0) == 5.0
    assert registry_with(None)._before_the_lease_ends(5.0) == 5.0
