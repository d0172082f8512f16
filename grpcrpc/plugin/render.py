"""Writes the Python module for one .proto file from the plugin's descriptions.

Per service: a `Contract` constant, `<S>Client` and `Async<S>Client`, `<S>FanoutClient` and
`Async<S>FanoutClient` when some method allows a fanout, and `<S>Servicer`. The module is fully
annotated (mypy strict checks its callers) and passes ruff at line length 110.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grpcrpc.plugin.main import Method, Module, Service

__all__ = ["module"]

LINE = 110
DOC_LINE = 100  # docstrings: a little narrower than code, for reading


class Buffer:
    """Indented lines (grpclib's plugin shape)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._indent = 0

    def add(self, line: str = "") -> None:
        self._lines.append(("    " * self._indent + line).rstrip())

    def call(self, head: str, args: Sequence[str], tail: str = ")") -> None:
        """`head(args)tail` on one line when it fits, else hanging, else one argument a line."""
        width = LINE - 4 * self._indent
        one = f"{head}{', '.join(args)}{tail}"
        if len(one) <= width:
            self.add(one)
            return
        self.add(head)
        with self.indent():
            joined = ", ".join(args)
            if len(joined) <= width - 4:
                self.add(joined)
            else:
                for arg in args:
                    self.add(arg + ",")
        self.add(tail)

    def doc(self, *paragraphs: str) -> None:
        """A docstring: paragraphs are wrapped to the line length, except indented (code) ones."""
        width = DOC_LINE - 4 * self._indent
        lines: list[str] = []
        for p in paragraphs:
            if not p:
                continue
            if lines:
                lines.append("")
            for line in _clean(p).splitlines():
                code = line.startswith("    ")
                lines += [line] if code or len(line) <= width else textwrap.wrap(line, width)
        # One line when it fits; a text ending in a quote must not touch the closing quotes.
        if len(lines) == 1 and len(lines[0]) + 6 <= width and not lines[0].endswith('"'):
            self.add(f'"""{lines[0]}"""')
            return
        self.add('"""' + lines[0])
        for line in lines[1:]:
            self.add(line)
        self.add('"""')

    @contextmanager
    def indent(self) -> Iterator[None]:
        self._indent += 1
        try:
            yield
        finally:
            self._indent -= 1

    def content(self) -> str:
        return "\n".join(self._lines) + "\n"


def _clean(text: str) -> str:
    """A .proto comment as docstring text: no closing quotes, no escapes, no trailing spaces."""
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return "\n".join(line.rstrip() for line in textwrap.dedent(text).strip("\n").splitlines())


def q(text: str) -> str:
    """A double-quoted Python string literal."""
    return json.dumps(text)


def constant(service: Service) -> str:
    """The module constant holding a service's `Contract`: Scheduler -> SCHEDULER_CONTRACT."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", service.name).upper() + "_CONTRACT"


def _has_fanout(s: Service) -> bool:
    return any(m.fanout_allowed for m in s.methods)


def _kind(m: Method, fanout: bool = False) -> str:
    if fanout:
        how = "Fanout cast: returns the delivery report once every server of the topic was tried"
    elif m.cast:
        how = "Cast: returns once a server has accepted it"
        how += " (fanout allowed)" if m.fanout_allowed else ""
    else:
        how = "Call: returns the response"
    return f"{how}. Added in API version {m.since}."


def _contract(buf: Buffer, s: Service) -> None:
    buf.add(f"{constant(s)} = _rt.Contract(")
    with buf.indent():
        buf.add(f"{q(s.full_name)},")
        buf.add(f"topic={q(s.topic)},")
        buf.add(f"exchange={q(s.exchange) if s.exchange else None},")
        buf.add(f"namespace={q(s.namespace) if s.namespace else None},")
        buf.add(f"version={q(s.version)},")
        buf.add("methods=(")
        with buf.indent():
            for m in s.methods:
                args = [q(m.name), m.request, m.response, f"since={q(m.since)}"]
                args += ["cast=True"] if m.cast else []
                args += ["fanout_allowed=True"] if m.fanout_allowed else []
                buf.call("_rt.MethodSpec(", args, "),")
        buf.add("),")
    buf.add(")")


def _signature(buf: Buffer, m: Method, returns: str, *, is_async: bool = False) -> None:
    prefix = "async def" if is_async else "def"
    buf.call(f"{prefix} {m.name}(", ["self", "ctxt: Any", f"request: {m.request}"], f") -> {returns}:")


def _client(buf: Buffer, s: Service, *, is_async: bool, fanout: bool) -> None:
    flavour = "asyncio" if is_async else "blocking"
    cls = f"{'Async' if is_async else ''}{s.name}{'Fanout' if fanout else ''}Client"
    base = "AsyncContractClient" if is_async else "ContractClient"
    aw = "await " if is_async else ""
    buf.add("")
    buf.add("")
    buf.add(f"class {cls}(_rt.{base}):")
    with buf.indent():
        if fanout:
            buf.doc(f"Typed {flavour} fanout client of `{s.full_name}`: casts to every server.",
                    f"Each method sends to every server of topic {q(s.topic)} and returns the "
                    f"`FanoutReport`. Get one with `{cls.replace('Fanout', '')}(...).prepare(fanout=True)`.")
        else:
            lines = [f"Typed {flavour} client of `{s.full_name}` (topic {q(s.topic)}, API {s.version}).",
                     s.doc,
                     f"Arguments: those of `grpcrpc.plugin.runtime.{base}`; `prepare(...)` returns a "
                     f"new `{cls}`" + (", and `prepare(fanout=True)` its fanout client." if _has_fanout(s)
                                       else ".")]
            example = next((m for m in s.methods if not m.cast), None)
            if example is not None:
                opening = "async with" if is_async else "with"
                lines.append(f"Example::\n\n    {opening} {cls}(resolver, timeout=10) as client:\n"
                             f"        reply = {aw}client.{example.name}(ctxt, {example.request}(...))")
            buf.doc(*lines)
        buf.add("")
        buf.add(f"contract = {constant(s)}")
        if fanout:
            buf.add("fanout = True")
        if not fanout and _has_fanout(s):
            _prepare(buf, f"{'Async' if is_async else ''}{s.name}FanoutClient")
        for m in s.methods:
            if fanout and not m.fanout_allowed:
                continue
            buf.add("")
            if fanout:
                returns, call = "FanoutReport", f"return {aw}self._fanout("
            elif m.cast:
                returns, call = "None", f"{aw}self._cast("
            else:
                returns, call = m.response, f"return {aw}self._call("
            _signature(buf, m, returns, is_async=is_async)
            with buf.indent():
                buf.doc(m.doc or f"`{m.rpc}`.", _kind(m, fanout))
                args = ["ctxt", q(m.name), "request"] + ([m.response] if returns == m.response else [])
                buf.call(call, args)


def _prepare(buf: Buffer, fanout_cls: str) -> None:
    # Overloads, so that mypy knows prepare(fanout=True) gives the fanout client.
    opts = "**changes: Unpack[_rt.PrepareOptions]"
    buf.add("")
    buf.add("@overload")
    buf.call("def prepare(", ["self", "*", "fanout: Literal[True]", opts], f") -> {fanout_cls}: ...")
    buf.add("")
    buf.add("@overload")
    buf.call("def prepare(", ["self", "*", "fanout: Literal[False] = ...", opts], ") -> Self: ...")
    buf.add("")
    buf.call("def prepare(", ["self", "*", "fanout: bool = False", opts], f") -> Self | {fanout_cls}:")
    with buf.indent():
        buf.doc("A new client with some settings changed; `fanout=True` gives the fanout client.")
        buf.add("if fanout:")
        with buf.indent():
            buf.add(f"return {fanout_cls}._wrap(self.rpc.prepare(fanout=True, **changes))")
        buf.add("return super().prepare(**changes)")


def _servicer(buf: Buffer, s: Service) -> None:
    buf.add("")
    buf.add("")
    buf.add(f"class {s.name}Servicer(_rt.ContractServicer):")
    with buf.indent():
        buf.doc(f"Base class of `{s.full_name}` servers (API {s.version}): override its methods.",
                s.doc,
                "Each method may be a plain function (run in the server's thread pool) or `async def` "
                "(run on its loop); one not overridden answers `NoSuchMethod`. Serve it with "
                "`grpcrpc.plugin.runtime.serve(servicer, server=..., registry=...)`.")
        buf.add("")
        c = constant(s)
        buf.add(f"contract = {c}")
        buf.add(f"target = {c}.endpoint_target")
        buf.add(f"grpcrpc_message_types = {c}.message_types")
        for m in s.methods:
            buf.add("")
            buf.add("@_rt.default")
            _signature(buf, m, f"_rt.MaybeAwaitable[{'None' if m.cast else m.response}]")
            with buf.indent():
                buf.doc(m.doc or f"`{m.rpc}`.", _kind(m))
                buf.add(f"raise _rt.unimplemented({q(m.name)})")


def _imports(buf: Buffer, mod: Module) -> None:
    fanout = any(_has_fanout(s) for s in mod.services)
    buf.add("from __future__ import annotations")
    buf.add("")
    buf.add("from typing import " + ", ".join(["Any"] + (["Literal", "Self", "Unpack", "overload"]
                                                          if fanout else [])))
    buf.add("")
    # isort's order, as ruff checks it: google's modules, then the project's (grpcrpc among them).
    third = [i for i in mod.imports if i[0].split(".")[0] == "google"]
    first = [i for i in mod.imports if i not in third] + [("grpcrpc.plugin", "runtime", "_rt")]
    first += [("grpcrpc.fanout", "FanoutReport", "FanoutReport")] if fanout else []
    for group in (third, first):
        for package, name, alias in sorted(group, key=lambda i: (bool(i[0]), i[0], i[1])):
            suffix = "" if alias == name else f" as {alias}"
            buf.add(f"from {package} import {name}{suffix}" if package else f"import {name}{suffix}")
        if group and group is third:
            buf.add("")


def module(mod: Module) -> str:
    """The source of `<name>_grpcrpc.py` for one .proto file."""
    buf = Buffer()
    buf.add(f"# Generated by protoc-gen-grpcrpc from {mod.proto}. DO NOT EDIT.")
    names = [n for s in mod.services for n in _names(s)]
    buf.doc(f"Typed grpcrpc contracts of {mod.proto}.",
            ", ".join(f"`{n}`" for n in names) + ": generated by protoc-gen-grpcrpc (grpcrpc.plugin); see "
            "grpcrpc's docs/contracts.md.")
    buf.add("")
    _imports(buf, mod)
    buf.add("")
    buf.add("__all__ = [")
    with buf.indent():
        for name in sorted(names, key=lambda n: (not n.isupper(), n)):
            buf.add(f"{q(name)},")
    buf.add("]")
    for s in mod.services:
        buf.add("")
        _contract(buf, s)
        for is_async in (False, True):
            if _has_fanout(s):
                _client(buf, s, is_async=is_async, fanout=True)
            _client(buf, s, is_async=is_async, fanout=False)
        _servicer(buf, s)
    return buf.content()


def _names(s: Service) -> list[str]:
    names = [constant(s), f"{s.name}Client", f"Async{s.name}Client", f"{s.name}Servicer"]
    return names + ([f"{s.name}FanoutClient", f"Async{s.name}FanoutClient"] if _has_fanout(s) else [])
