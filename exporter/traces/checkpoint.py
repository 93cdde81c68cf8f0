"""The ingestion checkpoint and the trace histograms' state, written together atomically.

One JSON file in --state-dir: which files (by identity) were ingested how far, the
per-stream assembly state, and the aggregate. Written to a temp file, fsynced and
renamed, so after any crash (SIGKILL too) the state on disk is a whole earlier one:
a file is either counted with its checkpoint entry or not at all.
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


def atomic_write_json(path: str, value: dict[str, Any]) -> None:
    """Write value plus a checksum of it; never leaves a temp file behind, even on a full disk."""
    d = os.path.dirname(path) or "."
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(d, exist_ok=True)
        text = json.dumps(value, separators=(",", ":"))  # dumps uses the C encoder, dump does not
        digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        text = text[:-1] + f',"checksum":"{digest}"}}' if len(value) else f'{{"checksum":"{digest}"}}'
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
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StateWriteError(f"cannot write state file {path}: {e.strerror or e}") from None


def move_aside(path: str, why: str) -> None:
    """Keep a state file we cannot use for a human, and say so in one line."""
    aside = f"{path}.corrupt"
    try:
        os.replace(path, aside)
    except OSError as e:
        raise StateWriteError(f"state file {path} is unusable ({why}) and cannot be moved aside: "
                              f"{e.strerror or e}") from None
    log.error("state file %s unusable (%s); moved to %s, starting from empty state", path, why, aside)


def read_state(path: str) -> tuple[dict[str, Any] | None, str]:
    """(the state in path with its checksum verified, "") or (None, why it is unusable); (None, "")
    when there is none. Reads only: `check` asks this, serve's load_json acts on the answer."""
    try:
        with open(path, "rb") as f:
            v = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return None, ""
    except RecursionError:
        return None, "nested too deeply"
    except (OSError, ValueError) as e:
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__
    if not isinstance(v, dict):
        return None, "not a JSON object"
    if v.get("version") == 1 and "checksum" not in v:  # written before states carried a checksum
        log.info("state file %s is of an earlier version (no checksum); it is read and rewritten", path)
        v["version"] = STATE_VERSION
        return v, ""
    if v.get("version") != STATE_VERSION:
        return None, f"unknown version {v.get('version')!r}, this exporter writes {STATE_VERSION}"
    checksum = v.pop("checksum", None)
    if checksum != _digest(v):
        return None, "checksum mismatch: edited or damaged" if checksum else "no checksum"
    return v, ""


def load_json(path: str) -> dict[str, Any] | None:
    """The state in path with its checksum verified; None (and the file moved aside) when unusable."""
    v, unusable = read_state(path)
    if unusable:
        # never silently start from zero over a damaged state: keep it aside for a human
        move_aside(path, unusable)
    return v


def entries_to_json(entries: dict[str, FileEntry]) -> dict[str, Any]:
    return {p: asdict(e) for p, e in entries.items()}


def entries_from_json(v: dict[str, Any]) -> dict[str, FileEntry]:
    return {p: FileEntry(**e) for p, e in v.items()}
