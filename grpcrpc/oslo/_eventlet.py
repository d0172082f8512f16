"""Running grpcrpc inside a process that eventlet has monkey-patched.

grpcio's C core blocks the thread that waits on it, and grpc's, pyetcd's and grpcrpc's Python
code starts threads and takes locks through `threading`. After `eventlet.monkey_patch()` those
would be green threads and green locks: one blocking gRPC wait would freeze every green thread
of the process, and a green lock shared by two native threads can deadlock. So here:

1. `nativize()` points the `threading`, `_thread`, `queue`, `time`, `socket`, `select` and
   `selectors` globals (and names imported from them) of grpcrpc's core, grpc and pyetcd back at
   the original modules (eventlet's `patcher.original`): their threads and locks are native
   again. Only those packages are touched; the application keeps its green modules.
2. The driver's loop runs in a native thread with an original epoll selector and a default
   executor of native threads (`asyncio.to_thread` would otherwise start green threads that
   never run, since the loop thread never enters the hub).
3. Results and incoming messages reach green threads through a `Pump`: a socket pair whose
   native end the loop thread writes to and whose green end a green thread reads, running the
   queued callbacks (setting green events) inside the hub.
4. Log records emitted by native threads under `grpcrpc`, `grpc`, `pyetcd` and `asyncio` reach
   the application's handlers through the pump too: those handlers hold green locks that a
   native thread must never wait on.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import importlib
import logging
import os
import sys
import threading
import types
from collections.abc import Callable
from typing import Any, ClassVar, ParamSpec, TypeVar

import eventlet
import eventlet.event
from eventlet import greenio, patcher

from grpcrpc.oslo._bridge import Waiter, _EventWaiter

__all__ = ["GreenWorld", "nativize"]

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("grpcrpc.oslo")

_NAMES = ("threading", "_thread", "queue", "time", "socket", "select", "selectors")
_PACKAGES = ("grpcrpc", "grpc", "grpc_health", "pyetcd")
# The driver itself lives with the application (it runs in green threads); the test helpers
# and generated code hold nothing that blocks.
_EXCLUDED = ("grpcrpc.oslo", "grpcrpc.testing", "grpcrpc.generated", "grpcrpc.examples")
# Imported before rebinding, because grpc and pyetcd import some of them lazily (in a native
# thread, too late to be fixed there).
_PRELOAD = ("grpc._channel", "grpc._simple_stubs", "grpc._interceptor", "grpc.aio",
            "grpc.experimental", "grpc_health.v1._async", "pyetcd", "pyetcd.client",
            "pyetcd.watch", "pyetcd.leases", "pyetcd.locks")
_BRIDGED_LOGGERS = ("grpcrpc", "grpc", "pyetcd", "asyncio")


def _original_modules() -> dict[str, types.ModuleType]:
    originals = {name: patcher.original(name) for name in _NAMES if name != "selectors"}
    # patcher.original("selectors") would import it beside the green `select` (which lacks
    # epoll): import it against the original one.
    saved = sys.modules.get("select"), sys.modules.get("selectors")
    sys.modules["select"] = originals["select"]
    sys.modules.pop("selectors", None)
    try:
        originals["selectors"] = importlib.import_module("selectors")
    finally:
        for name, module in zip(("select", "selectors"), saved, strict=True):
            if module is not None:
                sys.modules[name] = module
    return originals


def _in_scope(name: str) -> bool:
    top = name.partition(".")[0]
    return top in _PACKAGES and not any(name == e or name.startswith(e + ".") for e in _EXCLUDED)


def nativize(originals: dict[str, types.ModuleType]) -> int:
    """Rebind green modules and functions to the originals in grpcrpc, grpc and pyetcd;
    returns how many names changed (0 on a second call with nothing newly imported)."""
    for name in _PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    swap: dict[int, Any] = {}
    for name, original in originals.items():
        live = sys.modules.get(name)
        if live is None or live is original:
            continue
        swap[id(live)] = original
        for attr, value in vars(live).items():
            replacement = original.__dict__.get(attr)
            if replacement is not None and replacement is not value and callable(value):
                swap[id(value)] = replacement
    changed = 0
    for name, module in list(sys.modules.items()):
        if module is None or not _in_scope(name):
            continue
        for attr, value in list(vars(module).items()):
            if attr.startswith("__"):
                continue
            replacement = swap.get(id(value))
            if replacement is not None:
                setattr(module, attr, replacement)
                changed += 1
    return changed


class Pump:
    """Runs callbacks in the hub, on behalf of native threads (see the module docstring)."""

    def __init__(self, socket_module: types.ModuleType) -> None:
        self._reader, self._writer = socket_module.socketpair()
        self._writer.setblocking(False)
        self._green = greenio.GreenSocket(self._reader)
        self._calls: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = (
            collections.deque())
        eventlet.spawn_n(self._run)

    def close(self) -> None:
        """Close this process's ends (a forked child must not read its parent's wake-ups)."""
        for sock in (self._writer, self._reader):
            with contextlib.suppress(OSError):
                sock.close()

    def call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` in the hub soon; from any thread, never blocks."""
        self._calls.append((fn, args))
        try:
            self._writer.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the socket is full of wake-ups already: the reader will see this call
        except OSError:
            log.debug("pump closed; dropping a callback")

    def _run(self) -> None:
        while True:
            try:
                if not self._green.recv(4096):
                    return
            except OSError:
                return
            while self._calls:
                fn, args = self._calls.popleft()
                try:
                    fn(*args)
                except Exception:
                    log.exception("callback handed to the hub failed")


class _GreenWaiter:
    __slots__ = ("_event", "_pump", "value")

    def __init__(self, pump: Pump) -> None:
        self._event = eventlet.event.Event()
        self._pump = pump
        self.value: Any = None

    def set(self, value: Any) -> None:
        self.value = value
        self._pump.call(self._fire)

    def _fire(self) -> None:
        if not self._event.ready():
            self._event.send(True)

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout) is True


class _NativeExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: a native thread per job. Jobs are rare (registering in
    etcd, starting and closing discovery), so no pool is kept."""

    def __init__(self, threading_module: types.ModuleType) -> None:
        super().__init__(max_workers=1)
        self._native = threading_module

    def submit(self, fn: Callable[P, R], /, *args: P.args,
               **kwargs: P.kwargs) -> concurrent.futures.Future[R]:
        future: concurrent.futures.Future[R] = concurrent.futures.Future()
        # The future's condition comes from the patched module (green): make it native, since
        # the job's thread and the loop's thread both take it.
        future._condition = self._native.Condition()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        self._native.Thread(target=run, name="grpcrpc-oslo-job", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass  # nothing pooled; running jobs end by themselves


class _HubLogHandler(logging.Handler):
    """Hands records from native threads to the hub, where the real handlers run."""

    def __init__(self, pump: Pump, on_hub: Callable[[], bool]) -> None:
        super().__init__()
        self._pump = pump
        self._on_hub = on_hub

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: forwarding takes the real handlers' locks, in the hub only.
        if not self.filter(record):
            return False
        if self._on_hub():
            self._forward(record)
        else:
            self._pump.call(self._forward, record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)

    def _forward(self, record: logging.LogRecord) -> None:
        # What Logger.callHandlers does, except that the bridged loggers (which no longer
        # propagate, so that records come here) are walked through.
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            for handler in logger.handlers:
                if handler is not self and record.levelno >= handler.level:
                    handler.handle(record)
            if not logger.propagate and logger.name not in _BRIDGED_LOGGERS:
                break
            logger = logger.parent


class GreenWorld:
    """The `World` of an eventlet process (see `grpcrpc.oslo._bridge`); one per process."""

    _instance: ClassVar[GreenWorld | None] = None
    _lock: ClassVar[Any] = None

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._originals = _original_modules()
        self._threading = self._originals["threading"]
        self._hub_ident = self._threading.main_thread().ident
        if self._threading.get_ident() != self._hub_ident:
            raise RuntimeError("create the first grpc:// transport in the main thread of an "
                               "eventlet process (where its hub runs)")
        self._pump = Pump(self._originals["socket"])
        self._handler = _HubLogHandler(self._pump, self.blocks_hub)
        for name in _BRIDGED_LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self._handler)
            logger.propagate = False

    def _retire(self) -> None:
        self._pump.close()
        for name in _BRIDGED_LOGGERS:
            logging.getLogger(name).removeHandler(self._handler)

    @classmethod
    def get(cls) -> GreenWorld:
        """The process's green world, set up on first use; every call also nativizes what
        was imported since."""
        if cls._lock is None:
            cls._lock = patcher.original("threading").Lock()
        with cls._lock:
            if cls._instance is not None and cls._instance.pid != os.getpid():
                cls._instance._retire()  # inherited through a fork: its pump is the parent's
                cls._instance = None
            if cls._instance is None:
                cls._instance = GreenWorld()
            world = cls._instance
        changed = nativize(world._originals)
        if changed:
            log.debug("eventlet: %d names in grpc, pyetcd and grpcrpc now native", changed)
        return world

    def start_thread(self, target: Callable[[], None], name: str) -> None:
        self._threading.Thread(target=target, name=name, daemon=True).start()

    def new_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.SelectorEventLoop(self._originals["selectors"].DefaultSelector())
        loop.set_default_executor(_NativeExecutor(self._threading))
        return loop

    def waiter(self) -> Waiter:
        if self.blocks_hub():
            return _GreenWaiter(self._pump)
        return _EventWaiter(self._threading.Event())

    def mailbox_signal(self) -> tuple[Any, Callable[[], None]]:
        if self.blocks_hub():
            event = threading.Event()  # the patched (green) one: its reader is a green thread
            return event, lambda: self._pump.call(event.set)
        native = self._threading.Event()
        return native, native.set

    def native_lock(self) -> Any:
        return self._threading.Lock()

    def blocks_hub(self) -> bool:
        return bool(self._threading.get_ident() == self._hub_ident)
