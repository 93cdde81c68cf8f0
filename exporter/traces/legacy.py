"""Reading the state of earlier versions: version-2 snapshots keep other producers' state as
opaque `feeds`, version-1 journals write one-letter keys and positional lists. Both are
turned into today's form as they are read; the next commit writes a version-3 state file."""

from __future__ import annotations

from typing import Any

Producers = dict[str, dict[str, dict[str, Any]]]


def upgrade_feeds(feeds: dict[str, Any]) -> Producers:
    """Each feed's keys become sections: a list one entry per item (keys "0", "1", ...), any other
    value one entry; the producer re-keys its sections when it reads them."""
    out: Producers = {}
    for name, state in feeds.items():
        if not isinstance(state, dict):
            raise ValueError(f"feed {name!r} is not a mapping")
        sections: dict[str, dict[str, Any]] = {}
        for key, value in state.items():
            items = value if isinstance(value, list) else [value]
            sections[str(key)] = {str(i): item for i, item in enumerate(items)}
        out[str(name)] = sections
    return out


def upgrade_record(rec: dict[str, Any], feeds: dict[str, Any]) -> dict[str, Any]:
    """A version-1 journal record in today's form; its feed changes are applied to feeds (the
    version-2 form, upgraded once the journal is read)."""
    if not set(rec) <= {"n", "a", "f", "s", "feeds"}:
        raise ValueError(f"journal record keys {sorted(rec)}")
    out: dict[str, Any] = {}
    if "a" in rec:
        out["aggregate"] = rec["a"]
    if "f" in rec:
        out["files"] = {p: None if e is None else dict(zip(("inode", "size", "mtime_ns", "head", "offset",
                                                               "complete"), e, strict=True))
                        for p, e in rec["f"].items()}
    if "s" in rec:
        streams: dict[str, Any] = {}
        for base, d in rec["s"].items():
            s: dict[str, Any] = {}
            if "p" in d:
                drop, ids, codes = d["p"]
                s["protocols"] = {"drop": drop, "add": [list(x) for x in zip(ids, codes, strict=True)]}
            if "q" in d:
                drop, items = d["q"]
                s["pending"] = {"drop": drop, "add": items}
            streams[base] = s
        out["streams"] = streams
    for name, d in rec.get("feeds", {}).items():
        if "=" in d:
            feeds[name] = d["="]
            continue
        state = feeds[name]
        for k, v in d.get("k", {}).items():
            state[k] = v
        for k, (drop, tail) in d.get("l", {}).items():
            state[k] = state[k][drop:] + tail
    return out
