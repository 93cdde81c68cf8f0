"""The ingestion checkpoint and the trace histograms' state, written together atomically.

One JSON file in --state-dir (the snapshot): which files (by identity) were ingested how
far, the per-stream assembly state, and the aggregate. Written to a temp file, fsynced
and renamed, so after any crash (SIGKILL too) it is a whole earlier one. Commits between
two snapshots go to the journal beside it (journal.py), one durable record each: a file
is either counted with its checkpoint entry or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from ..config import ConfigError
from ..stages import COLUMN
from .aggregate import RESPONSE_BOUNDS, TraceAggregate
from .assembly import StreamState

log = logging.getLogger("traces")

STATE_VERSION = 3  # 3: producers' sections; 2 (feeds) and 1 (no checksum) are still read
HEAD_BYTES = 4096


@dataclass
class FileEntry:
    inode: int
    size: int
    mtime_ns: int
    head: str  # hash of the first HEAD_BYTES: tells a rewritten file from a grown one
    offset: int  # bytes ingested (== size when complete)
    complete: bool

    def same_stat(self, st: os.stat_result) -> bool:
        return (st.st_ino, st.st_size, st.st_mtime_ns) == (self.inode, self.size, self.mtime_ns)


def head_hash(path: str, size: int) -> str:
    with open(path, "rb") as f:
        data = f.read(min(HEAD_BYTES, size))
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class StateWriteError(ConfigError):
    """The state could not be written (read-only mount, full disk): the reason is the message."""


def _digest(value: Any) -> str:
    return hashlib.blake2b(json.dumps(value, separators=(",", ":")).encode(), digest_size=16).hexdigest()


def write_durably(path: str, data: bytes) -> None:
    """Replace path with data all at once (temp file, fsync, rename, fsync of the directory);
    never leaves a temp file behind, even on a full disk."""
    d = os.path.dirname(path) or "."
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(d, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StateWriteError(f"cannot write state file {path}: {e.strerror or e}") from None


def atomic_write_json(path: str, value: dict[str, Any]) -> tuple[str, int]:
    """Write value plus a checksum of it; returns (the checksum, bytes written)."""
    text = json.dumps(value, separators=(",", ":"))  # dumps uses the C encoder, dump does not
    digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    text = text[:-1] + f',"checksum":"{digest}"}}' if len(value) else f'{{"checksum":"{digest}"}}'
    data = text.encode()
    write_durably(path, data)
    return digest, len(data)


def move_aside(path: str, why: str, also: tuple[str, ...] = ()) -> None:
    """Keep a state file we cannot use (and its journal, `also`) for a human, and say so in one line."""
    moved = []
    for p in (path, *also):
        if not os.path.lexists(p):
            continue
        try:
            os.replace(p, f"{p}.corrupt")
        except OSError as e:
            raise StateWriteError(f"state file {p} is unusable ({why}) and cannot be moved aside: "
                                  f"{e.strerror or e}") from None
        moved.append(f"{p}.corrupt")
    log.error("state file %s unusable (%s); moved to %s, starting from empty state", path, why,
              " and ".join(moved) or "nowhere (it is gone)")


def read_snapshot(path: str) -> tuple[dict[str, Any] | None, str, str]:
    """(the state in path with its checksum verified, "", the checksum, which names this snapshot: ""
    for a version-1 state) or (None, why it is unusable, ""); (None, "", "") when there is none.
    Reads only: `check` asks this, serve's start acts on the answer."""
    try:
        with open(path, "rb") as f:
            v = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None, "", ""
    except RecursionError:
        return None, "nested too deeply", ""
    except (OSError, ValueError) as e:
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__, ""
    if not isinstance(v, dict):
        return None, "not a JSON object", ""
    if v.get("version") == 1 and "checksum" not in v:  # written before states carried a checksum
        log.info("state file %s is of an earlier version (no checksum); it is read and rewritten", path)
        return v, "", ""
    if v.get("version") not in (2, STATE_VERSION):
        return None, f"unknown version {v.get('version')!r}, this exporter writes {STATE_VERSION}", ""
    checksum = v.pop("checksum", None)
    if checksum != _digest(v):
        return None, "checksum mismatch: edited or damaged" if checksum else "no checksum", ""
    return v, "", str(checksum)


def entries_to_json(entries: dict[str, FileEntry]) -> dict[str, Any]:
    return {p: asdict(e) for p, e in entries.items()}


def entries_from_json(v: dict[str, Any]) -> dict[str, FileEntry]:
    return {p: FileEntry(**e) for p, e in v.items()}


def check_state(agg: TraceAggregate, entries: dict[str, FileEntry], streams: dict[str, StreamState]) -> None:
    """What from_json let through must still be what scrapes and polls rely on; ValueError if not."""

    def label(v: object) -> None:
        if not isinstance(v, str):
            raise ValueError(f"label {v!r} is not a string")
        v.encode("utf-8")  # a lone surrogate would fail every scrape

    def count(v: object) -> None:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"count {v!r} is not a non-negative integer")

    def series(keys: Iterable[tuple[object, ...]], least: int) -> None:
        """model, version, protocol (after any extra labels), and the family's own last label"""
        for key in keys:
            if not isinstance(key, tuple) or len(key) < least:
                raise ValueError(f"series key {key!r} has fewer than {least} labels")
            for x in key:
                label(x)

    series(agg.histograms, 4)
    series(agg.responses, 3)
    series(agg.traces, 3)
    series(agg.outcomes, 4)
    series(agg.timeline, 4)
    series(agg.joins, 4)
    for n in (*agg.outcomes.values(), *agg.joins.values()):
        count(n)
    for hists, n_buckets in ((agg.histograms, len(agg.bounds_ns) + 1), (agg.responses, len(RESPONSE_BOUNDS) + 1)):
        for key, h in hists.items():
            if len(h.counts) != n_buckets:
                raise ValueError(f"histogram {key} has {len(h.counts)} buckets, not {n_buckets}")
            for c in h.counts:
                count(c)
            count(h.count)
            count(h.total)  # a negative _sum fails the scrape
            if sum(h.counts) != h.count:
                raise ValueError(f"histogram {key} counts do not add up")
    for n in (*agg.timeline.values(), *agg.traces.values()):
        count(n)
    for counter in (agg.files, agg.rejected):
        for k, n in counter.items():
            label(k)
            count(n)
    for pair in agg.models:
        for x in pair:
            label(x)
    for stage in agg.custom_stages:
        label(stage)
    if not math.isfinite(agg.last_ingest):
        raise ValueError("last_ingest is not finite")
    for p, e in entries.items():
        label(p)
        for number in (e.inode, e.size, e.mtime_ns, e.offset):
            count(number)
        if not isinstance(e.head, str) or not isinstance(e.complete, bool):
            raise ValueError(f"file entry {p} has wrong types")
    for s in streams.values():
        for tid, code in s.protocols.items():
            count(tid)
            if code not in (0, 1, 2) or isinstance(code, bool):
                raise ValueError(f"protocol code {code!r}")
        for t, since in s.pending.values():
            for text in (t.model, t.version, t.request_id):
                if text is not None:
                    label(text)
            if t.parent_id is not None:
                count(t.parent_id)
            for name, ns in t.stamps.items():
                if name not in COLUMN:
                    raise ValueError(f"pending trace timestamp {name!r}")
                count(ns)
            for name, ns in t.extra:
                label(name)
                count(ns)
            if not math.isfinite(since):
                raise ValueError("pending since is not finite")
