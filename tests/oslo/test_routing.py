"""Bridge mode's routing decisions (pure logic: no sockets), and the registration field."""

from __future__ import annotations

import threading
import time
from typing import Any

import oslo_messaging
import pytest

from grpcrpc.discovery.base import Endpoint, InvalidEndpoint, RoutingTable
from grpcrpc.exceptions import NoEndpoints
from grpcrpc.oslo._routing import (
    GRPC,
    RABBIT,
    WAIT,
    BridgeSender,
    Presence,
    Router,
    grpc_only,
    last_path,
    queue_name,
)


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


# -- the send loop, with the transports replaced by recorders (pure logic) ----------------------

class FakeProbe:
    def __init__(self) -> None:
        self.consumers_by_queue: dict[str, int] = {}
        self.exchanges: set[str] = set()

    def consumers(self, queue: str) -> int:
        return self.consumers_by_queue.get(queue, 0)

    def exchange_exists(self, name: str) -> bool:
        return name in self.exchanges


class FakeRabbit:
    def __init__(self) -> None:
        self.probe = FakeProbe()
        self.sent: list[tuple[str, bool]] = []
        self.fail_with: Exception | None = None

    def send(self, target: Any, ctxt: Any, message: Any, call: bool, timeout: Any,
             monitor: Any, retry: Any, options: Any) -> Any:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append((target.topic, call))
        return "via rabbit" if call else None


def _sender(table: list[RoutingTable], rabbit: FakeRabbit, grpc_sent: list[Any],
            grpc_raises: list[Exception], restart_wait: float = 30.0) -> BridgeSender:
    presence = Presence()
    presence.update(table[0])

    def grpc_send(target: Any, ctxt: Any, message: Any, call: bool, *rest: Any) -> Any:
        if grpc_raises:
            raise grpc_raises.pop(0)
        grpc_sent.append((target.topic, target.server, bool(target.fanout)))
        return "via grpc" if call else None

    def current() -> RoutingTable:
        presence.update(table[0])
        return table[0]

    return BridgeSender(router=Router(own_az="default", fallback_azs=(), restart_wait=restart_wait),
                        rabbit=rabbit, table=current, presence=presence, grpc_send=grpc_send,
                        default_exchange="openstack", cast_timeout=5.0)


def test_send_goes_over_grpc_when_registered_else_rabbitmq() -> None:
    table = [RoutingTable.build([ep("c1", rabbit=True)])]
    rabbit, grpc_sent = FakeRabbit(), []
    sender = _sender(table, rabbit, grpc_sent, [])
    msg = {"method": "m", "args": {}}
    assert sender.send(oslo_messaging.Target(topic="compute", server="c1"), {}, msg, True, 5,
                       None, None, None) == "via grpc"
    assert last_path() == "grpc"
    assert sender.send(oslo_messaging.Target(topic="compute", server="r1"), {}, msg, True, 5,
                       None, None, None) == "via rabbit"
    assert last_path() == "rabbit"


def test_a_send_that_finds_nobody_after_all_decides_again() -> None:
    table = [RoutingTable.build([ep("c1", rabbit=True)])]
    rabbit, grpc_sent = FakeRabbit(), []
    # The first gRPC attempt finds the server gone (never sent); meanwhile it left etcd for
    # good and is heard consuming its queue again (back as rabbit-only): RabbitMQ it is.
    sender = _sender(table, rabbit, grpc_sent, [NoEndpoints("gone")])
    table[0] = RoutingTable.build([])
    rabbit.probe.consumers_by_queue["compute.c1"] = 1
    sender.send(oslo_messaging.Target(topic="compute", server="c1"), {}, {"method": "m"},
                False, None, None, None, None)
    assert rabbit.sent == [("compute", False)] and grpc_sent == []


def test_a_restarting_target_is_waited_for_not_queued_where_nobody_may_read() -> None:
    table = [RoutingTable.build([ep("c1", rabbit=True)])]
    rabbit, grpc_sent = FakeRabbit(), []
    sender = _sender(table, rabbit, grpc_sent, [])
    table[0] = RoutingTable.build([])  # c1 restarts
    sender._table()  # the presence sees it leave

    def comes_back() -> None:
        time.sleep(0.3)
        table[0] = RoutingTable.build([ep("c1", port=7)])  # back, gRPC-only

    threading.Thread(target=comes_back).start()
    sender.send(oslo_messaging.Target(topic="compute", server="c1"), {}, {"method": "m"},
                False, None, None, None, None)
    assert grpc_sent == [("compute", "c1", False)] and rabbit.sent == []


def test_a_call_whose_target_never_comes_back_times_out_at_its_deadline() -> None:
    table = [RoutingTable.build([ep("c1", rabbit=True)])]
    rabbit, grpc_sent = FakeRabbit(), []
    sender = _sender(table, rabbit, grpc_sent, [])
    table[0] = RoutingTable.build([])
    sender._table()
    start = time.monotonic()
    with pytest.raises(oslo_messaging.MessagingTimeout):
        sender.send(oslo_messaging.Target(topic="compute", server="c1"), {}, {"method": "m"},
                    True, 0.5, None, None, None)
    assert 0.4 < time.monotonic() - start < 5.0
    assert rabbit.sent == [] and grpc_sent == []


def test_a_fanout_goes_both_ways_and_a_missing_rabbit_exchange_is_nobody_there() -> None:
    table = [RoutingTable.build([ep("c1", rabbit=True), ep("g1", port=2)])]
    rabbit, grpc_sent = FakeRabbit(), []
    sender = _sender(table, rabbit, grpc_sent, [])
    target = oslo_messaging.Target(topic="compute", fanout=True)
    sender.send(target, {}, {"method": "m"}, False, None, None, None, None)
    assert rabbit.sent == [("compute", False)] and grpc_sent == [("compute", None, True)]
    assert last_path() == "both"
    rabbit.fail_with = oslo_messaging.MessageDeliveryFailure("NOT_FOUND - no exchange")
    sender.send(target, {}, {"method": "m"}, False, None, None, None, None)  # nobody on rabbit
    rabbit.probe.exchanges.add("compute_fanout")  # but if someone listens there, it fails
    with pytest.raises(oslo_messaging.MessageDeliveryFailure):
        sender.send(target, {}, {"method": "m"}, False, None, None, None, None)
    assert len(grpc_sent) == 3  # the gRPC half went out every time
