"""The ingestion checkpoint and the trace histograms' state, written together atomically.

One JSON file in --state-dir: which files (by identity) were ingested how far, the
per-stream assembly state, and the aggregate. Written to a temp file, fsynced and
renamed, so after any crash (SIGKILL too) the state on disk is a whole earlier one:
a file is either counted with its checkpoint entry or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("traces")

STATE_VERSION = 1
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


def atomic_write_json(path: str, value: Any) -> None:
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    text = json.dumps(value, separators=(",", ":"))  # dumps uses the C encoder, dump does not
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            v = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        # never silently start from zero over a damaged state: keep it aside for a human
        aside = f"{path}.corrupt"
        os.replace(path, aside)
        log.error("state file %s unreadable (%s); moved to %s, starting from empty state", path, e, aside)
        return None
    if not isinstance(v, dict) or v.get("version") != STATE_VERSION:
        log.error("state file %s has an unknown format; ignoring it", path)
        return None
    return v


def entries_to_json(entries: dict[str, FileEntry]) -> dict[str, Any]:
    return {p: asdict(e) for p, e in entries.items()}


def entries_from_json(v: dict[str, Any]) -> dict[str, FileEntry]:
    return {p: FileEntry(**e) for p, e in v.items()}
