"""Bridge mode's routing decisions (pure logic: no sockets), and the registration field."""

from __future__ import annotations

import pytest

from grpcrpc.discovery.base import Endpoint, InvalidEndpoint, RoutingTable
from grpcrpc.oslo._routing import GRPC, RABBIT, WAIT, Presence, Router, grpc_only, queue_name


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ep(server: str, topic: str = "compute", rabbit: bool = False, port: int = 1) -> Endpoint:
    return Endpoint(f"127.0.0.1:{port}", topic, server, rabbit=rabbit)


def test_registration_says_whether_a_server_also_listens_on_rabbitmq() -> None:
    bridged = ep("c1", rabbit=True)
    assert b'"rabbit":true' in bridged.to_json()
    assert Endpoint.from_json(bridged.to_json()).rabbit is True
    # Registrations written before the field existed read as gRPC-only.
    old = b'{"address":"127.0.0.1:1","topic":"compute","server":"c1"}'
    assert Endpoint.from_json(old).rabbit is False
    with pytest.raises(InvalidEndpoint):
        Endpoint.from_json(b'{"address":"127.0.0.1:1","topic":"t","server":"s","rabbit":"yes"}')


def test_a_registered_target_goes_over_grpc_an_unknown_one_over_rabbitmq() -> None:
    clock = Clock()
    table = RoutingTable.build([ep("c1", rabbit=True), ep("c2", port=2)])
    presence = Presence(clock)
    presence.update(table)
    router = Router(own_az="default", fallback_azs=(), restart_wait=30.0, clock=clock)
    assert router.decide(table, presence, "openstack", "compute", "c1") == GRPC
    assert router.decide(table, presence, "openstack", "compute", "c2") == GRPC
    assert router.decide(table, presence, "openstack", "compute", None) == GRPC
    # Never registered: a rabbit-only server, reached through its queue.
    assert router.decide(table, presence, "openstack", "compute", "c9") == RABBIT
    assert router.decide(table, presence, "openstack", "scheduler", None) == RABBIT
    # Another exchange is another target.
    assert router.decide(table, presence, "nova", "compute", "c1") == RABBIT


def test_a_target_that_just_left_is_waited_for_then_given_to_rabbitmq() -> None:
    clock = Clock()
    presence = Presence(clock)
    router = Router(own_az="default", fallback_azs=(), restart_wait=30.0, clock=clock)
    presence.update(RoutingTable.build([ep("c1", rabbit=True), ep("c2", port=2)]))
    table = RoutingTable.build([ep("c2", port=2)])  # c1 restarts
    presence.update(table)
    assert router.decide(table, presence, "openstack", "compute", "c1") == WAIT
    assert router.decide(table, presence, "openstack", "compute", None) == GRPC  # c2 is there
    clock.now += 29.9
    assert router.decide(table, presence, "openstack", "compute", "c1") == WAIT
    clock.now += 0.2
    assert router.decide(table, presence, "openstack", "compute", "c1") == RABBIT
    # Back (as anything registered): gRPC again, and no longer "gone".
    table = RoutingTable.build([ep("c1", port=3), ep("c2", port=2)])
    presence.update(table)
    assert router.decide(table, presence, "openstack", "compute", "c1") == GRPC
    assert presence.gone_for("openstack", "compute", "c1") is None


def test_the_whole_topic_leaving_is_waited_for_too() -> None:
    clock = Clock()
    presence = Presence(clock)
    router = Router(own_az="default", fallback_azs=(), restart_wait=5.0, clock=clock)
    presence.update(RoutingTable.build([ep("cond", topic="conductor")]))
    empty = RoutingTable.build([])
    presence.update(empty)
    assert router.decide(empty, presence, "openstack", "conductor", None) == WAIT


def test_presence_forgets_targets_gone_long_ago() -> None:
    clock = Clock()
    presence = Presence(clock, horizon=60.0)
    presence.update(RoutingTable.build([ep(f"c{i}", port=i + 1) for i in range(100)]))
    presence.update(RoutingTable.build([]))
    clock.now += 61
    presence.update(RoutingTable.build([]))
    assert presence.gone_for("openstack", "compute", "c1") is None


def test_a_bridge_senders_grpc_fanout_skips_servers_that_hear_it_on_rabbitmq() -> None:
    servers = [ep("bridged", rabbit=True), ep("grpc-only", port=2)]
    assert [e.server for e in grpc_only(servers)] == ["grpc-only"]
    assert queue_name("compute", "host1") == "compute.host1"
    assert queue_name("compute", None) == "compute"
