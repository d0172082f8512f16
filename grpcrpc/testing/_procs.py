"""What the test servers (`grpcrpc.testing.etcd`, `grpcrpc.testing.rabbit`) share: a free
loopback port, the end of a child's log, and ending a child process and its temp dir."""

from __future__ import annotations

import shutil
import socket
import subprocess

__all__ = ["end_process", "free_port", "log_tail"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def end_process(proc: subprocess.Popen[bytes] | None, workdir: str | None) -> None:
    """Kill `proc` if it still runs and remove `workdir`. Also run by weakref.finalize at exit,
    so it must not depend on the server object that started them."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


def log_tail(path: str, lines: int = 30) -> str:
    """The last `lines` lines of a child's log file, for an error message."""
    try:
        with open(path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return "(no log)"
