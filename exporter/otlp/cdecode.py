"""The compiled OTLP decoders (exporter/otlp/_otlp.c): protobuf and JSON bodies straight to the
receiver's span records, accepting and refusing what decode.py's Python decoders do. Those stay
the reference and serve where the module is not built, is older than its source, or
INFPROF_PURE_PYTHON_OTLP is set (benchmarks and debugging).

The protobuf walker checks every field of every message against a table built here from
opentelemetry-proto's descriptors, the definition of the messages; the fields it reads itself
(its FIELDS) are held to the same descriptors, and where they differ the Python decoders serve.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ..traces import compiled

ENV = "INFPROF_PURE_PYTHON_OTLP"
MAX_FIELD_NUMBER = 1024  # a message numbering its fields past this is not walked (the table is dense)

Records = Callable[[bytes], list[Any]]

_F = FieldDescriptor
_KIND_OF_TYPE = {
    _F.TYPE_MESSAGE: "message", _F.TYPE_STRING: "string", _F.TYPE_BYTES: "bytes",
    _F.TYPE_DOUBLE: "fixed64", _F.TYPE_FIXED64: "fixed64", _F.TYPE_SFIXED64: "fixed64",
    _F.TYPE_FLOAT: "fixed32", _F.TYPE_FIXED32: "fixed32", _F.TYPE_SFIXED32: "fixed32",
    **dict.fromkeys((_F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_SINT32,
                     _F.TYPE_SINT64, _F.TYPE_BOOL, _F.TYPE_ENUM), "varint"),
}


def _repeated(f: FieldDescriptor) -> bool:
    flag = getattr(f, "is_repeated", None)  # newer protobuf; `label` is deprecated there
    if flag is None:
        flag = getattr(f, "label", None) == FieldDescriptor.LABEL_REPEATED
    return bool(flag)


def _kind(f: FieldDescriptor, kinds: dict[str, int]) -> int:
    name = _KIND_OF_TYPE.get(f.type)
    if name is None:
        raise ValueError(f"{f.full_name} is a group")
    if name not in ("message", "string", "bytes") and _repeated(f):
        raise ValueError(f"{f.full_name} is a repeated number (packed on the wire)")
    return kinds[name] | (kinds["oneof"] if f.containing_oneof is not None else 0)


def tables(module: Any) -> tuple[bytes, ...]:
    """Per message reachable from ExportTraceServiceRequest (the walker's own messages first, in
    its ROLES order), two bytes per field number: the field's kind and the message it holds.
    ValueError where the walker's FIELDS disagree with the descriptors or a message is not walkable."""
    kinds: dict[str, int] = module.KINDS
    roles: list[Descriptor | None] = [ExportTraceServiceRequest.DESCRIPTOR] + [None] * (len(module.ROLES) - 1)
    for msg, name, number, kind, holds in module.FIELDS:
        d = roles[msg]
        f = d.fields_by_name.get(name) if d is not None else None
        if f is None or f.number != number or _kind(f, kinds) != kind:
            raise ValueError(f"{module.ROLES[msg]}.{name} is not field {number} of the kind the walker reads")
        if holds is not None:
            if f.message_type is None or f.message_type.name != holds:
                raise ValueError(f"{module.ROLES[msg]}.{name} does not hold a {holds}")
            roles[module.ROLES.index(holds)] = f.message_type
    order = [d for d in roles if d is not None]
    if len(order) != len(roles):
        raise ValueError("a message the walker reads is not reached from ExportTraceServiceRequest")
    seen = {d.full_name for d in order}
    for d in order:  # grows while it is walked: every message reachable, each once
        for f in d.fields:
            if f.message_type is not None and f.message_type.full_name not in seen:
                seen.add(f.message_type.full_name)
                order.append(f.message_type)
    index = {d.full_name: i for i, d in enumerate(order)}
    if len(order) > 255:
        raise ValueError("more than 255 messages")
    out = []
    for d in order:
        top = max((f.number for f in d.fields), default=0)
        if top > MAX_FIELD_NUMBER:
            raise ValueError(f"{d.full_name} numbers a field {top}")
        table = bytearray(2 * (top + 1))
        for f in d.fields:
            table[2 * f.number] = _kind(f, kinds)
            table[2 * f.number + 1] = index[f.message_type.full_name] if f.message_type is not None else 0
        out.append(bytes(table))
    return tuple(out)


def _load() -> tuple[ModuleType | None, tuple[bytes, ...], str]:
    if os.environ.get(ENV):
        return None, (), f"{ENV} is set"
    module, why = compiled.load(f"{__package__}._otlp")
    if module is None:
        return None, (), why or "no compiled _otlp module"
    try:
        return module, tables(module), ""
    except ValueError as e:
        return None, (), f"opentelemetry-proto's messages are not the ones the compiled walker reads ({e})"


_MODULE, _TABLES, WHY = _load()


def decoders(record_type: type) -> tuple[Records, Records] | None:
    """The compiled (json_records, protobuf_records) building `record_type` instances, or None
    (WHY says why): each takes the body's bytes and raises ValueError with a one-line message."""
    if _MODULE is None:
        return None
    _MODULE.setup(record_type, _TABLES)
    return _MODULE.json_records, _MODULE.protobuf_records


def decoder_name() -> str:
    """Which decoders read OTLP bodies here, for `check`."""
    return "C (compiled _otlp module)" if _MODULE is not None else f"pure Python ({WHY}; about 10x slower)"


def decoder_warning() -> bool:
    """Whether `check` warns: a build that is there but not used (stale, or another schema)."""
    return _MODULE is None and WHY != "" and not WHY.startswith(ENV) and not WHY.startswith("no compiled")
