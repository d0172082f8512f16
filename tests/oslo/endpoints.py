"""Endpoints and exceptions shared by the oslo tests and their server processes.

`AppError` lives here so that a client can allow this module (`allowed_remote_exmods`) and get
it back as its own type; `Forbidden` lives in `tests.oslo.server_main`, which no client allows.
"""

from __future__ import annotations

import threading
import time
from typing import Any

MODULE = __name__


class AppError(Exception):
    """Shaped like nova's exceptions: a message format filled from keyword arguments, which
    are kept in `kwargs` (and must survive the trip)."""

    msg_fmt = "application failed with code %(code)s"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        self.kwargs = kwargs
        super().__init__(message or self.msg_fmt % kwargs)


class Endpoint:
    """What every test server serves; `name` says which server answered."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.recorded: list[Any] = []
        self._lock = threading.Lock()

    def whoami(self, ctxt: dict[str, Any]) -> str:
        return self.name

    def echo(self, ctxt: dict[str, Any], value: Any) -> Any:
        return value

    def context(self, ctxt: dict[str, Any]) -> dict[str, Any]:
        return ctxt

    def fail(self, ctxt: dict[str, Any], code: int) -> None:
        raise AppError(code=code, server=self.name)

    def sleep(self, ctxt: dict[str, Any], seconds: float) -> str:
        print("SLEEPING", flush=True)  # a server process's test watches its stdout for it
        time.sleep(seconds)
        return self.name

    def record(self, ctxt: dict[str, Any], value: Any) -> None:
        with self._lock:
            self.recorded.append(value)

    def get_recorded(self, ctxt: dict[str, Any]) -> list[Any]:
        with self._lock:
            return list(self.recorded)
