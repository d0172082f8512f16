"""Generated typed clients and servicers (the Nova examples) over real servers, and their
interoperation with dict-style peers: the wire carries the same envelope either way."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import grpcrpc
from grpcrpc import MemoryDiscovery, RPCClient, RPCServer, ServerThread, Target
from grpcrpc.examples.nova import common_pb2, compute_pb2, scheduler_pb2
from grpcrpc.examples.nova.compute_grpcrpc import (
    AsyncComputeClient,
    ComputeClient,
    ComputeFanoutClient,
    ComputeServicer,
)
from grpcrpc.examples.nova.scheduler_grpcrpc import (
    SCHEDULER_CONTRACT,
    AsyncSchedulerClient,
    SchedulerClient,
    SchedulerFanoutClient,
    SchedulerServicer,
)
from grpcrpc.plugin.runtime import RESERVED_NAMES, ContractClient, ContractServicer, serve
from grpcrpc.testing import AsyncClientFor, ClientFor
from tests.conftest import wait_until


class Scheduler(SchedulerServicer):
    """A blocking implementation: runs in the server's thread pool."""

    def __init__(self) -> None:
        self.contexts: list[Any] = []
        self.aggregates: list[str] = []

    def select_destinations(self, ctxt: Any, request: scheduler_pb2.SelectDestinationsRequest
                            ) -> scheduler_pb2.SelectDestinationsResponse:
        self.contexts.append(ctxt)
        host = f"compute-{request.spec.flavor.vcpus}"
        return scheduler_pb2.SelectDestinationsResponse(destinations=[
            scheduler_pb2.Destinations(hosts=[scheduler_pb2.Selection(service_host=host, nodename=uuid)])
            for uuid in request.instance_uuids
        ])

    def update_aggregates(self, ctxt: Any, request: scheduler_pb2.UpdateAggregatesRequest) -> None:
        self.aggregates += [a.name for a in request.aggregates]


class Compute(ComputeServicer):
    """An asyncio implementation (coroutines run on the server's loop); console output is left
    unimplemented."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.built: list[str] = []
        self.refreshed = 0
        self.lock = threading.Lock()

    async def build_and_run_instance(self, ctxt: Any, request: compute_pb2.BuildAndRunInstanceRequest
                                     ) -> None:
        with self.lock:
            self.built.append(request.instance.uuid)

    async def update_available_resource(
        self, ctxt: Any, request: compute_pb2.UpdateAvailableResourceRequest
    ) -> None:
        with self.lock:
            self.refreshed += 1


@contextmanager
def running(*servers: RPCServer) -> Iterator[None]:
    threads = [ServerThread(server) for server in servers]
    try:
        for thread in threads:
            thread.start()
        yield
    finally:
        for thread in threads:
            thread.stop(grace=1.0)


def spec_request(vcpus: int, *uuids: str) -> scheduler_pb2.SelectDestinationsRequest:
    flavor = common_pb2.Flavor(name="m1.small", vcpus=vcpus, memory_mb=2048)
    return scheduler_pb2.SelectDestinationsRequest(
        spec=scheduler_pb2.RequestSpec(flavor=flavor, num_instances=len(uuids)), instance_uuids=uuids,
    )


def test_sync_call_cast_directed_and_fanout() -> None:
    discovery = MemoryDiscovery()
    scheduler = Scheduler()
    computes = {name: Compute(name) for name in ("c1", "c2", "c3")}
    servers = [serve(scheduler, server="sched1", registry=discovery)]
    servers += [serve(c, server=name, registry=discovery) for name, c in computes.items()]
    with running(*servers), SchedulerClient(discovery, timeout=10) as sched, \
            ComputeClient(discovery, timeout=10) as compute:
        reply = sched.select_destinations({"request_id": "req-1"}, spec_request(4, "i-1", "i-2"))
        assert isinstance(reply, scheduler_pb2.SelectDestinationsResponse)
        assert [d.hosts[0].nodename for d in reply.destinations] == ["i-1", "i-2"]
        assert reply.destinations[0].hosts[0].service_host == "compute-4"
        assert scheduler.contexts == [{"request_id": "req-1"}]

        # A cast directed to the host the scheduler chose; it returns once c2 accepted it.
        instance = common_pb2.Instance(uuid="i-1", flavor=common_pb2.Flavor(vcpus=4))
        on_c2 = compute.prepare(server="c2")
        assert isinstance(on_c2, ComputeClient)
        assert on_c2.build_and_run_instance({}, compute_pb2.BuildAndRunInstanceRequest(
            instance=instance, node="c2")) is None
        wait_until(lambda: computes["c2"].built == ["i-1"], what="the build on c2")
        assert computes["c1"].built == computes["c3"].built == []
        on_c2.close()  # a prepared client shares the transport: closing it leaves `compute` working

        # A fanout to every compute: the caller gets the delivery report.
        fanout = compute.prepare(fanout=True, timeout=5)
        assert isinstance(fanout, ComputeFanoutClient)
        report = fanout.update_available_resource({}, compute_pb2.UpdateAvailableResourceRequest())
        assert (report.targets, report.delivered, report.ok) == (3, 3, True)
        wait_until(lambda: all(c.refreshed == 1 for c in computes.values()), what="every refresh")

        # A method the servicer did not override answers NoSuchMethod.
        with pytest.raises(grpcrpc.NoSuchMethod, match="get_console_output"):
            compute.prepare(server="c1").get_console_output(
                {}, compute_pb2.GetConsoleOutputRequest(instance=instance))


async def test_async_call_cast_and_fanout() -> None:
    discovery = MemoryDiscovery()
    scheduler = Scheduler()
    computes = [Compute("c1"), Compute("c2")]
    servers = [serve(scheduler, server="sched1", registry=discovery)]
    servers += [serve(c, server=c.host, registry=discovery) for c in computes]
    for server in servers:
        await server.start()
    try:
        async with AsyncSchedulerClient(discovery, timeout=10) as sched, \
                AsyncComputeClient(discovery, timeout=10) as compute:
            reply = await sched.select_destinations({}, spec_request(2, "i-9"))
            assert reply.destinations[0].hosts[0].service_host == "compute-2"
            report = await sched.prepare(fanout=True).update_aggregates(
                {}, scheduler_pb2.UpdateAggregatesRequest(aggregates=[scheduler_pb2.Aggregate(name="ssd")]))
            assert (report.targets, report.delivered) == (1, 1)
            await compute.prepare(server="c1").build_and_run_instance(
                {}, compute_pb2.BuildAndRunInstanceRequest(instance=common_pb2.Instance(uuid="i-9")))
            report = await compute.prepare(fanout=True).update_available_resource(
                {}, compute_pb2.UpdateAvailableResourceRequest(force=True))
            assert (report.targets, report.delivered) == (2, 2)
        # Casts return on acceptance; wait for what they did, on the loop.
        await _until(lambda: computes[0].built == ["i-9"] and scheduler.aggregates == ["ssd"]
                     and [c.refreshed for c in computes] == [1, 1])
        assert computes[1].built == []
    finally:
        for server in servers:
            await server.stop(grace=1.0)


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_typed_client_against_a_dict_style_server() -> None:
    class DictScheduler:
        """An existing scheduler written against the dict-style API."""

        target = Target(version="4.5")

        def select_destinations(self, ctxt: Any, spec: dict[str, Any], instance_uuids: list[str],
                                return_alternates: bool = False) -> dict[str, Any]:
            host = f"dict-{spec['flavor']['vcpus']}"
            return {"destinations": [{"hosts": [{"service_host": host, "nodename": u}]}
                                     for u in instance_uuids]}

    discovery = MemoryDiscovery()
    server = RPCServer(SCHEDULER_CONTRACT.server_target("sched1"), [DictScheduler()], registry=discovery)
    with running(server), SchedulerClient(discovery, timeout=10) as client:
        reply = client.select_destinations({}, spec_request(8, "i-1"))
        assert isinstance(reply, scheduler_pb2.SelectDestinationsResponse)
        assert reply.destinations[0].hosts[0].service_host == "dict-8"


def test_dict_style_client_against_a_typed_server() -> None:
    discovery = MemoryDiscovery()
    scheduler = Scheduler()
    with running(serve(scheduler, server="sched1", registry=discovery)):
        # The version a dict-style nova client sends; exchange and topic from the contract.
        client = RPCClient(discovery, SCHEDULER_CONTRACT.client_target(version="4.0"), timeout=10)
        with client:
            reply = client.call({"user": "u1"}, "select_destinations",
                                spec={"flavor": {"vcpus": 3}}, instance_uuids=["i-1"])
            assert reply == {"destinations": [{"hosts": [{"service_host": "compute-3",
                                                          "nodename": "i-1"}]}]}
            assert scheduler.contexts == [{"user": "u1"}]
            client.prepare(version="4.1").cast({}, "update_aggregates",
                                               aggregates=[{"name": "gpu", "hosts": ["c1"]}])
            wait_until(lambda: scheduler.aggregates == ["gpu"], what="the dict-style cast")


def test_wrong_message_type_is_refused_before_sending() -> None:
    # No server at all: the check happens before any routing.
    with SchedulerClient(MemoryDiscovery(), timeout=1) as client, pytest.raises(
            grpcrpc.SerializationError, match=r"takes a nova\.v1\.SelectDestinationsRequest, got Instance"):
        client.select_destinations({}, common_pb2.Instance())  # type: ignore[arg-type]


def test_prepare_keeps_the_typed_class_and_the_contract() -> None:
    with SchedulerClient(MemoryDiscovery(), timeout=3, version_cap="4.3") as client:
        narrowed = client.prepare(server="sched2", timeout=1)
        assert type(narrowed) is SchedulerClient
        assert (narrowed.rpc.target.server, narrowed.rpc.timeout) == ("sched2", 1)
        assert (narrowed.rpc.target.topic, narrowed.rpc.target.exchange) == ("scheduler", "nova")
        assert client.rpc.target.server is None and client.rpc.timeout == 3
        assert narrowed.can_send_version("4.3") and not narrowed.can_send_version("4.4")
        fanout = client.prepare(fanout=True).prepare(timeout=2)
        assert type(fanout) is SchedulerFanoutClient and fanout.rpc.target.fanout
        assert fanout.rpc.timeout == 2



def test_a_renamed_topic_on_both_sides() -> None:
    discovery = MemoryDiscovery()
    with running(serve(Scheduler(), server="s1", registry=discovery, topic="scheduler-cell2")), \
            SchedulerClient(discovery, topic="scheduler-cell2", timeout=10) as client:
        assert client.rpc.target.topic == "scheduler-cell2"
        assert client.select_destinations({}, spec_request(1, "i")).destinations[0].hosts[0].nodename == "i"


def test_reserved_names_cover_the_generated_classes_attributes() -> None:
    public = {n for cls in (ContractClient, ContractServicer, SchedulerClient, SchedulerServicer)
              for n in dir(cls) if not n.startswith("_")}
    methods = set(SCHEDULER_CONTRACT.by_name)
    assert public - methods <= RESERVED_NAMES


def test_testing_helpers_join_typed_clients_through_their_transport() -> None:
    with ClientFor(SCHEDULER_CONTRACT.client_target(), [Scheduler()]) as rpc:
        client = SchedulerClient(rpc.transport, timeout=10)
        reply = client.select_destinations({}, spec_request(1, "i-1"))
        assert reply.destinations[0].hosts[0].service_host == "compute-1"
        client.close()  # the transport is ClientFor's: it stays open until the block ends
        assert rpc.prepare(version="4.0").call({}, "select_destinations", instance_uuids=[]) == {}


async def test_async_testing_helper() -> None:
    async with AsyncClientFor(SCHEDULER_CONTRACT.client_target(), [Scheduler()]) as rpc:
        client = AsyncSchedulerClient(rpc.transport, timeout=10)
        reply = await client.select_destinations({}, spec_request(2, "i-2"))
        assert reply.destinations[0].hosts[0].nodename == "i-2"
