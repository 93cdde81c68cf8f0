"""Reading Triton trace files as a stream of records, rejecting what is broken.

A file is one JSON array of small objects: headers `{"id","model_name","model_version"
[,"request_id"][,"parent_id"]}` and timestamps `{"id","timestamps":[{"name","ns"}]}`.
Objects are split at `{"id":` and decoded one by one, so a corrupt object costs only
itself; memory stays bounded (the read chunk plus one object of at most MAX_OBJECT)
whatever the file's size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..stages import CUSTOM_NAME, KNOWN_TIMESTAMPS

CHUNK = 1 << 20
MAX_NAME = 256  # longer model names, versions and request ids are rejected (label hygiene)
MAX_OBJECT = 8 << 20  # bytes of one object; a larger one is skipped as oversized_object (bounds memory)
START_OVERLAP = 64  # bytes searched again for an object start split across two reads

OBJECT_START = re.compile(rb"\{\s*\"id\"\s*:")
# Triton does not JSON-escape names: recover headers whose model name holds a quote.
LENIENT_HEADER = re.compile(
    rb'^\{"id":(\d+),"model_name":"(.*?)","model_version":"?(-?\d+)"?'
    rb'(?:,"request_id":"(.*?)")?(?:,"parent_id":(\d+))?\}$',
    re.DOTALL,
)

# Tensor records of trace level TENSORS: {"id":N,"activity":"TENSOR_...","tensor":{"name":..,"data":..,
# "shape":..,"dtype":..}}. Triton writes UINT8 and BYTES data unescaped (raw bytes, quotes, even
# '{"id":'), so such a record is delimited by its fixed tail, not decoded: counted, never a rejection.
TENSOR_START = re.compile(rb'\{\s*"id"\s*:\s*\d+\s*,\s*"activity"\s*:\s*"TENSOR_')
TENSOR_END = re.compile(rb'","shape":"[0-9,]*","dtype":"[A-Z0-9_]+"\}\s*\}')
TENSOR_RECORD = "tensor_record"  # the reason it is noted under (the collector serves it apart)

_decoder = json.JSONDecoder()


@dataclass(slots=True)
class Header:
    id: int
    model: str
    version: str
    request_id: str | None
    parent_id: int | None


@dataclass(slots=True)
class Stamps:
    id: int
    stamps: list[tuple[str, int]]


Record = Header | Stamps


class ChunkEnd:
    """Yielded by read_records(fast=...) after each chunk: a point to hand out finished traces."""


CHUNK_END = ChunkEnd()
RejectFn = Callable[[str], None]


@dataclass(slots=True)
class ReadResult:
    complete: bool = False  # the top-level array was closed
    array: bool = True  # the file starts like a JSON array
    end_offset: int = 0  # byte offset after the last whole object (resume point)
    objects: int = 0


INT64_MAX = (1 << 63) - 1


def _is_int(v: Any) -> bool:
    """A JSON integer that fits the int64 columns the stage math works on."""
    return isinstance(v, int) and not isinstance(v, bool) and -INT64_MAX <= v <= INT64_MAX


def to_record(obj: Any, reject: RejectFn) -> Record | None:
    """Validate one decoded object; None (and a counted reason) when it is unusable."""
    if not isinstance(obj, dict):
        reject("wrong_type")
        return None
    tid = obj.get("id")
    if tid is None:
        reject("missing_field")
        return None
    if not _is_int(tid) or tid < 0:
        reject("wrong_type")
        return None
    ts = obj.get("timestamps")
    if ts is not None:
        if not isinstance(ts, list):
            reject("wrong_type")
            return None
        stamps: list[tuple[str, int]] = []
        for t in ts:
            if not isinstance(t, dict) or "name" not in t or "ns" not in t:
                reject("missing_field" if isinstance(t, dict) else "wrong_type")
                continue
            name, ns = t["name"], t["ns"]
            if not isinstance(name, str) or not _is_int(ns) or ns < 0:
                reject("wrong_type")
                continue
            if name not in KNOWN_TIMESTAMPS and not CUSTOM_NAME.fullmatch(name):
                reject("unknown_timestamp")
                continue
            if ns:  # 0: not captured (HTTP sends of generate / generate_stream)
                stamps.append((name, ns))
        return Stamps(tid, stamps) if stamps else None
    if "model_name" in obj:
        model, version = obj.get("model_name"), obj.get("model_version")
        rid, pid = obj.get("request_id"), obj.get("parent_id")
        if version is None:
            reject("missing_field")
            return None
        if not isinstance(model, str) or not (_is_int(version) or isinstance(version, str)):
            reject("wrong_type")
            return None
        if (rid is not None and not isinstance(rid, (str, int))) or (pid is not None and (not _is_int(pid) or pid < 0)):
            reject("wrong_type")
            return None
        if not _label_ok(model) or (isinstance(version, str) and version and not _label_ok(version)):
            reject("bad_label")
            return None
        if isinstance(rid, str) and rid and not _label_ok(rid):
            reject("bad_label")  # only the exemplar's request id is lost: the trace still counts
            rid = None
        return Header(tid, model, str(version), None if rid is None or rid == "" else str(rid), pid)
    if "activity" in obj:
        reject(TENSOR_RECORD)  # a tensor record Triton wrote as valid JSON: not timing data
        return None
    reject("missing_field")
    return None


def _label_ok(value: str) -> bool:
    """Non-empty, at most MAX_NAME characters, and encodable as UTF-8 (no lone surrogates)."""
    if not value or len(value) > MAX_NAME:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # "\ud800" is a valid JSON escape but no exposition format can carry it
        return False
    return True


def _lenient_header(raw: bytes) -> Header | None:
    m = LENIENT_HEADER.match(raw)
    if m is None:
        return None
    try:
        model = m.group(2).decode("utf-8")
        rid = m.group(4).decode("utf-8") if m.group(4) is not None else None
    except UnicodeDecodeError:
        return None
    if not _label_ok(model):
        return None
    if rid and not _label_ok(rid):
        rid = None
    pid = int(m.group(5)) if m.group(5) is not None else None
    return Header(int(m.group(1)), model, m.group(3).decode(), rid or None, pid)


def decode_object(raw: bytes, reject: RejectFn) -> Record | None:
    """One object's bytes (trailing separators allowed) -> a record, or a counted reject."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        reject("not_utf8")
        return None
    try:
        obj, end = _decoder.raw_decode(text)
    except RecursionError:
        reject("malformed_json")  # nested deeper than the interpreter's stack: no trace is that deep
        return None
    except json.JSONDecodeError:
        header = _lenient_header(raw.rstrip(b" \t\r\n,"))
        if header is None:
            reject("malformed_json")
        return header
    if text[end:].strip(" \t\r\n,"):
        reject("malformed_json")  # garbage after a good object: keep the object
    return to_record(obj, reject)


TensorFn = Callable[[bytes], None]  # a tensor record's bytes


def _skip(_: bytes) -> None:
    """Tensor records are counted, not kept, unless the caller asks for them."""


# (buf, pos) -> (pos, status, end): consumes whole objects from pos on; status 1 stops at an
# object [pos, end) it leaves to Python; status 0 stops at the last object start (or len(buf))
FastPath = Callable[[bytes, int], tuple[int, int, int]]


def read_records(
    fp: BinaryIO,
    reject: RejectFn,
    result: ReadResult,
    start: int = 0,
    chunk: int = CHUNK,
    salvage_tail: bool = False,
    fast: FastPath | None = None,
    on_tensor: TensorFn | None = None,
) -> Iterator[Record | ChunkEnd]:
    """Stream the records of one trace file from byte `start` (0 or a past end_offset).

    Fills `result` as it goes: `complete` once the closing `]` is seen after a whole
    object, `end_offset` after each whole object. A record is yielded only once the
    start of the next object (or the closing bracket) proves it whole. With `fast`,
    the objects it handles are consumed there and only the others are yielded, in order
    (then a CHUNK_END follows each chunk). `on_tensor` gets each tensor record's bytes, in order
    with the records (the `Data Flow:` block of `summary --format trace_summary` reads them).
    """
    tensor: TensorFn = on_tensor or _skip
    fp.seek(start)
    result.end_offset = start
    buf, base = b"", start  # base: file offset of buf[0]
    seen_open = start > 0
    searched = 0  # buf[:searched] was searched for object starts already: search only what is new
    skipping = False  # inside an oversized object or a run with no object: already counted
    while True:
        data = fp.read(chunk)
        eof = not data
        buf += data
        at_start = OBJECT_START.match(buf) is not None  # the last object, carried over
        m = None if at_start else OBJECT_START.search(buf, max(searched - START_OVERLAP, 0))
        first = 0 if at_start else (m.start() if m else None)
        skipping = skipping and first is None
        if not seen_open and (first is not None or eof):
            seen_open = True
            _check_head(buf, first, reject, result)
        if fast is None:
            last = yield from _python_objects(buf, base, first, reject, result, searched, tensor)
        else:
            last = yield from _fast_objects(fast, buf, base, first, reject, result, tensor)
        if eof:
            if skipping and last is None:
                # the file ends inside what was skipped: whole if the array's bracket closes it
                result.complete = buf.rstrip(b" \t\r\n").endswith(b"]")
                return
            yield from _tail(buf, base, last, start, salvage_tail, reject, result, tensor)
            return
        if not seen_open and last is None and len(buf) > MAX_OBJECT:
            seen_open = True  # a head that never reaches an object: judged by its first bytes
            result.array = buf.lstrip(b" \t\r\n").startswith(b"[")
        buf, base, skipping = _keep_last(buf, base, last, reject, skipping)
        searched = len(buf)


def _check_head(buf: bytes, first: int | None, reject: RejectFn, result: ReadResult) -> None:
    """The bytes before the first object must be the array's '['."""
    head = (buf[:first] if first is not None else buf).strip(b" \t\r\n")
    result.array = head.startswith(b"[")
    if first is not None and head != b"[":
        reject("malformed_json")  # bytes before the first object that are not '['
    elif first is None and head.strip(b"[] \t\r\n"):
        reject("malformed_json")


def _python_objects(buf: bytes, base: int, first: int | None, reject: RejectFn, result: ReadResult,
                    searched: int = 0, tensor: TensorFn | None = None) -> Generator[Record, None, int | None]:
    """Every object of buf but the last (which may be incomplete) decoded in Python; returns
    where the last begins. Starts before `searched` (but first) were looked for already."""
    if first is None:
        return None
    a = first
    frm = max(first + 1, searched - START_OVERLAP)
    while True:
        b = object_end(buf, a, frm)
        if b is None:
            return a
        if TENSOR_START.match(buf, a):
            reject(TENSOR_RECORD)
            if tensor is not None:
                tensor(buf[a:b])
            rec = None
        else:
            rec = decode_object(buf[a:b], reject) if b - a <= MAX_OBJECT else _oversized(reject)
        result.objects += 1
        result.end_offset = base + b
        if rec is not None:
            yield rec
        a = b


def object_end(buf: bytes, a: int, frm: int = 0) -> int | None:
    """Where the object starting at `a` ends: the next object's start (searched from `frm` on at
    the earliest), past a tensor record's tail; None where buf does not show it yet."""
    if TENSOR_START.match(buf, a):
        tail = TENSOR_END.search(buf, a)
        if tail is None:
            return None
        frm = tail.end()
    m = OBJECT_START.search(buf, max(a + 1, frm))
    return m.start() if m else None


def _fast_objects(fast: FastPath, buf: bytes, base: int, first: int | None, reject: RejectFn,
                  result: ReadResult, tensor: TensorFn) -> Generator[Record | ChunkEnd, None, int | None]:
    """The fast path consumes what it can; the objects it hands back are decoded here."""
    pos = first if first is not None else len(buf)
    while True:
        pos, status, end = fast(buf, pos)
        if status != 1:
            break
        if TENSOR_START.match(buf, pos):  # the fast path split it at the first '{"id":' in its data
            tensor_end = object_end(buf, pos)
            if tensor_end is None:
                break  # the rest of it is in the next chunk
            reject(TENSOR_RECORD)
            tensor(buf[pos:tensor_end])
            result.objects += 1
            result.end_offset = base + tensor_end
            pos = tensor_end
            continue
        rec = decode_object(buf[pos:end], reject) if end - pos <= MAX_OBJECT else _oversized(reject)
        result.objects += 1
        result.end_offset = base + end
        if rec is not None:
            yield rec
        pos = end
    if first is not None and pos > first:
        result.end_offset = base + pos
    yield CHUNK_END
    return pos if first is not None else None


def _keep_last(buf: bytes, base: int, last: int | None, reject: RejectFn,
               skipping: bool) -> tuple[bytes, int, bool]:
    """What of buf the next chunk extends: from the last object's start on, at most MAX_OBJECT
    bytes. Past that, an object (or a run of bytes with no object) is counted once and skipped
    up to the next object start; returns whether it is skipping."""
    if last is not None:
        buf, base = buf[last:], base + last
    if len(buf) <= MAX_OBJECT:
        return buf, base, skipping
    if not skipping:
        reject("oversized_object" if OBJECT_START.match(buf) else "malformed_json")
    keep = buf[-START_OVERLAP:]  # a start may begin in the last bytes
    return keep, base + len(buf) - len(keep), True


def _tail(buf: bytes, base: int, last: int | None, start: int, salvage_tail: bool, reject: RejectFn,
          result: ReadResult, tensor: TensorFn) -> Iterator[Record]:
    """At end of file: the last piece must be an object followed by the closing bracket."""
    if last is None:
        whole = buf.strip(b" \t\r\n")
        result.complete = whole.endswith(b"]") and (start > 0 or result.array)
        return
    stripped = buf[last:].rstrip(b" \t\r\n")
    if stripped.endswith(b"]") and TENSOR_START.match(stripped) and TENSOR_END.search(stripped):
        reject(TENSOR_RECORD)  # the file's last object is a tensor record
        tensor(stripped[:-1])
        result.objects += 1
        result.end_offset = base + len(buf)
        result.complete = True
        return
    if stripped.endswith(b"]"):
        body = stripped[:-1]
        if _whole_object(body) or _lenient_header(body.rstrip(b" \t\r\n,")) is not None:
            rec = decode_object(body, reject)
            result.objects += 1
            result.end_offset = base + len(buf)
            result.complete = True
            if rec is not None:
                yield rec
            return
    # no closing bracket after a whole object: still being written, or truncated
    if salvage_tail and stripped and _whole_object(stripped):
        rec = decode_object(stripped, reject)
        result.objects += 1
        result.end_offset = base + len(buf)
        if rec is not None:
            yield rec


def _oversized(reject: RejectFn) -> Record | None:
    """An object past MAX_OBJECT is not decoded: counted, and no record."""
    reject("oversized_object")
    return None


def _whole_object(raw: bytes) -> bool:
    """raw is one JSON value followed by nothing but separators."""
    try:
        text = raw.decode("utf-8")
        _, end = _decoder.raw_decode(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return not text[end:].strip(" \t\r\n,")
