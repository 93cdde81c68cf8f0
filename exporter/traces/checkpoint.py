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
import os
from dataclasses import asdict, dataclass
from typing import Any

from ..config import ConfigError

log = logging.getLogger("traces")

STATE_VERSION = 2  # 2: with a checksum; 1 (none) is still read
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
        v["version"] = STATE_VERSION
        return v, "", ""
    if v.get("version") != STATE_VERSION:
        return None, f"unknown version {v.get('version')!r}, this exporter writes {STATE_VERSION}", ""
    checksum = v.pop("checksum", None)
    if checksum != _digest(v):
        return None, "checksum mismatch: edited or damaged" if checksum else "no checksum", ""
    return v, "", str(checksum)


def entries_to_json(entries: dict[str, FileEntry]) -> dict[str, Any]:
    return {p: asdict(e) for p, e in entries.items()}


def entries_from_json(v: dict[str, Any]) -> dict[str, FileEntry]:
    return {p: FileEntry(**e) for p, e in v.items()}
