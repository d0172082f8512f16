"""The protoc plugin: reads a `CodeGeneratorRequest`, checks grpcrpc's options, renders modules.

protoc runs it as `protoc-gen-grpcrpc` (or `--plugin=protoc-gen-grpcrpc=...`) for
`--grpcrpc_out=DIR`. For each .proto file with services it writes `<name>_grpcrpc.py` next to
protoc's `<name>_pb2.py`. A contract that cannot work (no topic, a cast that returns something, a
version that is not one) is reported through `CodeGeneratorResponse.error`: protoc prints the
message and exits non-zero, and nothing is written.

>>> snake_case("SelectDestinations"), snake_case("GetHTTPHeaders"), snake_case("ping")
('select_destinations', 'get_http_headers', 'ping')
"""

from __future__ import annotations

import keyword
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from google.protobuf.compiler.plugin_pb2 import CodeGeneratorRequest, CodeGeneratorResponse
from google.protobuf.descriptor_pb2 import DescriptorProto, FileDescriptorProto, ServiceDescriptorProto

from grpcrpc import options_pb2
from grpcrpc.plugin import render
from grpcrpc.plugin.contract import RESERVED_NAMES
from grpcrpc.target import parse_version

__all__ = ["Method", "Module", "PluginError", "Service", "generate", "main", "snake_case"]

EMPTY = ".google.protobuf.Empty"
_VERSION = re.compile(r"^\d+\.\d+$")
# FileDescriptorProto.service = 6, ServiceDescriptorProto.method = 2 (paths in SourceCodeInfo).
_SERVICE_FIELD, _METHOD_FIELD = 6, 2


class PluginError(Exception):
    """A contract the plugin refuses; its message is what protoc prints."""


class Method(NamedTuple):
    name: str  # the Python and wire name
    rpc: str  # the name in the .proto
    request: str  # a Python expression for the class, e.g. "scheduler_pb2.SelectRequest"
    response: str
    since: str
    cast: bool
    fanout_allowed: bool
    doc: str


class Service(NamedTuple):
    name: str
    full_name: str
    topic: str
    exchange: str
    namespace: str
    version: str
    methods: list[Method]
    doc: str


class Module(NamedTuple):
    proto: str  # the .proto file, as protoc names it
    filename: str  # the module to write, relative to --grpcrpc_out
    imports: list[tuple[str, str, str]]  # (package, module, alias): `from package import module as alias`
    services: list[Service]


def snake_case(name: str) -> str:
    """The Python (and wire) name of an rpc: oslo.messaging's methods are snake_case."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _module_path(proto_name: str) -> str:
    """protoc's Python module for a .proto file: grpcrpc/x/y.proto -> grpcrpc.x.y_pb2."""
    base = proto_name[: -len(".proto")] if proto_name.endswith(".proto") else proto_name
    return base.replace("-", "_").replace("/", ".") + "_pb2"


def _messages(prefix: str, messages: Iterable[DescriptorProto], parents: str = ""
              ) -> Iterator[tuple[str, str]]:
    for msg in messages:
        path = f"{parents}{msg.name}"
        yield f"{prefix}.{msg.name}", path
        yield from _messages(f"{prefix}.{msg.name}", msg.nested_type, f"{path}.")


def _type_index(request: CodeGeneratorRequest) -> dict[str, tuple[str, str]]:
    """Every message type protoc knows: '.pkg.Name' -> (python module, 'Name' or 'Outer.Inner')."""
    index: dict[str, tuple[str, str]] = {}
    for f in request.proto_file:
        prefix = f".{f.package}" if f.package else ""
        for full, path in _messages(prefix, f.message_type):
            index[full] = (_module_path(f.name), path)
    return index


def _comments(f: FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Leading comments by descriptor path, as written (render dedents them)."""
    return {tuple(loc.path): loc.leading_comments.rstrip()
            for loc in f.source_code_info.location if loc.leading_comments.strip()}


def _check_version(value: str, what: str) -> str:
    if not _VERSION.match(value):
        raise PluginError(f'{what} "{value}" is not a version: expected "major.minor", e.g. "1.3"')
    return value


class _Aliases:
    """Python names for the _pb2 modules a generated module imports (protoc's scheme on clashes)."""

    def __init__(self, modules: set[str]) -> None:
        short = [m.rpartition(".")[2] for m in modules]
        self.alias = {m: (m.rpartition(".")[2] if short.count(m.rpartition(".")[2]) == 1
                          else m.replace("_", "__").replace(".", "_dot_")) for m in modules}

    def imports(self) -> list[tuple[str, str, str]]:
        return sorted((m.rpartition(".")[0], m.rpartition(".")[2], a) for m, a in self.alias.items())


def _service(f: FileDescriptorProto, index: int, svc: ServiceDescriptorProto,
             python: Callable[[str], str], docs: dict[tuple[int, ...], str]) -> Service:
    """The service's description; `python` names a message type's class in the generated module."""
    where = f"{f.name}: service {svc.name}"
    opts = svc.options.Extensions[options_pb2.service]
    if not svc.options.HasExtension(options_pb2.service) or not opts.topic:
        raise PluginError(f'{where} has no topic: add option (grpcrpc.service) = {{ topic: "..." }}')
    if "/" in opts.topic or not opts.topic.isprintable() or " " in opts.topic:
        raise PluginError(f'{where}: topic "{opts.topic}" may not contain "/", spaces or controls')
    version = _check_version(opts.version or "1.0", f"{where}: version")
    major = parse_version(version)[0]
    methods: list[Method] = []
    for mi, m in enumerate(svc.method):
        mwhere = f"{where}: rpc {m.name}"
        mopts = m.options.Extensions[options_pb2.method]
        name = mopts.name or snake_case(m.name)
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise PluginError(f'{mwhere}: "{name}" is not a usable Python method name')
        if name in RESERVED_NAMES:
            raise PluginError(f'{mwhere}: "{name}" is reserved by the generated classes; '
                              'set option (grpcrpc.method) = { name: "..." }')
        if any(other.name == name for other in methods):
            raise PluginError(f'{mwhere}: another rpc of the service is also named "{name}"')
        if m.client_streaming or m.server_streaming:
            raise PluginError(f"{mwhere}: streaming rpcs are not grpcrpc methods (call, cast, fanout)")
        if mopts.cast and m.output_type != EMPTY:
            raise PluginError(f"{mwhere} is a cast, so it must return google.protobuf.Empty, "
                              f"not {m.output_type.lstrip('.')}")
        if mopts.fanout_allowed and not mopts.cast:
            raise PluginError(f"{mwhere}: fanout_allowed needs cast: true (a fanout is one-way)")
        since = _check_version(mopts.since or f"{major}.0", f"{mwhere}: since")
        if parse_version(since)[0] != major or parse_version(since) > parse_version(version):
            raise PluginError(f'{mwhere}: since "{since}" is not within the service version '
                              f'"{version}" (same major, not newer)')
        methods.append(Method(name, m.name, python(m.input_type), python(m.output_type), since,
                              mopts.cast, mopts.fanout_allowed,
                              docs.get((_SERVICE_FIELD, index, _METHOD_FIELD, mi), "")))
    full = f"{f.package}.{svc.name}" if f.package else svc.name
    return Service(svc.name, full, opts.topic, opts.exchange, opts.namespace, version, methods,
                   docs.get((_SERVICE_FIELD, index), ""))


def describe(f: FileDescriptorProto, types: dict[str, tuple[str, str]]) -> Module:
    """The module to generate for one .proto file (its services), or `PluginError`."""
    docs = _comments(f)
    aliases = _Aliases({types[t][0] for svc in f.service for m in svc.method
                        for t in (m.input_type, m.output_type)})

    def python(type_name: str) -> str:
        module, path = types[type_name]
        return f"{aliases.alias[module]}.{path}"

    services: list[Service] = []
    errors: list[str] = []
    for index, svc in enumerate(f.service):
        try:
            services.append(_service(f, index, svc, python, docs))
        except PluginError as err:  # go on: the author then fixes every service in one round
            errors.append(str(err))
    if errors:
        raise PluginError("\n".join(errors))
    filename = _module_path(f.name)[: -len("_pb2")].replace(".", "/") + "_grpcrpc.py"
    return Module(f.name, filename, aliases.imports(), services)


def generate(request: CodeGeneratorRequest) -> CodeGeneratorResponse:
    """The response to one protoc run: files, or an error naming every contract that is wrong."""
    response = CodeGeneratorResponse()
    response.supported_features = CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    if request.parameter:
        response.error = f"protoc-gen-grpcrpc takes no options, got {request.parameter!r}"
        return response
    types = _type_index(request)
    by_name = {f.name: f for f in request.proto_file}
    errors: list[str] = []
    for name in request.file_to_generate:
        proto = by_name[name]
        if not proto.service:
            continue
        try:
            module = describe(proto, types)
        except PluginError as err:
            errors.append(str(err))
            continue
        out = response.file.add()
        out.name = module.filename
        out.content = render.module(module)
    if errors:
        response.ClearField("file")
        response.error = "\n".join(errors)
    return response


def main() -> None:
    """Entry point of `protoc-gen-grpcrpc`: CodeGeneratorRequest on stdin, response on stdout."""
    data = sys.stdin.buffer.read()
    try:
        response = generate(CodeGeneratorRequest.FromString(data))
    except Exception as err:  # a bug here must still reach the user as protoc's error line
        response = CodeGeneratorResponse(
            error=f"protoc-gen-grpcrpc failed ({type(err).__name__}: {err}); please report this bug"
        )
    sys.stdout.buffer.write(response.SerializeToString())
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
