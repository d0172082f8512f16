"""`protoc-gen-grpcrpc`: typed grpcrpc clients and servicers from ordinary .proto services.

A service declares its topic and API version with grpcrpc's options; the plugin writes
`<name>_grpcrpc.py` next to protoc's `<name>_pb2.py`, with per service a blocking and an asyncio
client, a fanout client when some method allows it, and a servicer base class. The messages on the
wire are grpcrpc's usual envelopes, so typed and dict-style peers talk to each other.

    GRPCRPC_INCLUDE=$(python -c 'import grpcrpc.plugin; print(grpcrpc.plugin.include_path())')
    python -m grpc_tools.protoc -Iproto -I"$GRPCRPC_INCLUDE" \\
        --python_out=. --mypy_out=. --grpcrpc_out=. proto/myservice/api.proto

Modules: `main` (the protoc plugin: reads the request, checks the options), `render` (writes the
module), `runtime` (what the generated code imports at run time). See docs/contracts.md.

>>> import pathlib
>>> (pathlib.Path(include_path()) / "grpcrpc" / "options.proto").is_file()
True
"""

from __future__ import annotations

import pathlib

__all__ = ["include_path"]


def include_path() -> str:
    """The directory to give protoc with `-I` so that `import "grpcrpc/options.proto";` resolves.

    >>> include_path().endswith("include")
    True
    """
    # A copy of proto/grpcrpc/options.proto made by scripts/gen_protos.sh, shipped as package data.
    return str(pathlib.Path(__file__).resolve().parent / "include")
