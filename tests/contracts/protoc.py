"""Running protoc with this checkout's plugin, for the contract tests."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import grpcrpc.plugin

ROOT = pathlib.Path(__file__).resolve().parents[2]


def plugin_wrapper(directory: pathlib.Path) -> pathlib.Path:
    """An executable `protoc-gen-grpcrpc` that runs `python -m grpcrpc.plugin` with this interpreter.

    (Until the console script is installed, protoc needs a path to an executable.)
    """
    path = directory / "protoc-gen-grpcrpc"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m grpcrpc.plugin "$@"\n')
    path.chmod(0o755)
    return path


def write_protos(root: pathlib.Path, files: dict[str, str]) -> list[str]:
    """Write {relative path: source} under `root`; returns the relative paths."""
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return sorted(files)


def protoc(src: pathlib.Path, out: pathlib.Path, protos: list[str], *, mypy: bool = True
           ) -> subprocess.CompletedProcess[str]:
    """protoc -I src -I <grpcrpc include> --python_out --grpcrpc_out [--mypy_out] protos (in `src`)."""
    out.mkdir(parents=True, exist_ok=True)
    tools = out.parent / f".{out.name}-plugin"
    tools.mkdir(exist_ok=True)
    args = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{src}", f"-I{grpcrpc.plugin.include_path()}",
        f"--plugin=protoc-gen-grpcrpc={plugin_wrapper(tools)}",
        f"--python_out={out}", f"--grpcrpc_out={out}",
        *([f"--mypy_out={out}"] if mypy else []),
        *protos,
    ]
    # PYTHONPATH: the plugin (and protoc-gen-mypy) run this checkout's grpcrpc, whatever is installed.
    env = {"PATH": f"{pathlib.Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, cwd=src, capture_output=True, text=True, env=env, timeout=120)
