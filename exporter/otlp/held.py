"""Spans waiting for their request's root span (pure logic, no I/O).

Triton exports a request's spans as they end and its root last, so a request is complete
when its root arrives; until then its spans are held. A root that comes before any of its
children (a sender that batches out of order) is held too, so the children are counted
with its frontend events, hence its protocol, the moment they arrive.

Every held span counts against one budget in bytes shared by every connection: past it
the oldest requests are counted as they are (as after hold_seconds, protocol `none`).
A change is planned first (`plan`, `plan_expiry`), committed by the caller as section
edits, and applied (`apply`) only once it is durable.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..traces.store import Section, SectionChange
from .spans import Span, Tree

MAX_HELD_BYTES = 16 << 20  # all held spans together, as estimated by span_bytes (Python holds several times that)

def span_bytes(s: Span) -> int:
    """About what a span costs held in memory and in the state (its parts' lengths, plus a constant)."""
    return (120 + len(s.name) + sum(len(k) + len(v) + 16 for k, v in s.attrs.items())
            + sum(len(n) + 40 for n, _ in s.events))


@dataclass
class Entry:
    tree: Tree
    since: float  # first arrival
    size: int  # bytes, by span_bytes
    root_only: bool = False  # the root came alone: waiting for its children


@dataclass
class HoldPlan:
    """What one post (or one expiry) does to the held spans."""

    ready: list[Tree] = field(default_factory=list)  # to count now (rootless ones as protocol `none`)
    held: dict[bytes, Entry] = field(default_factory=dict)  # new or changed entries, set at the end
    gone: list[bytes] = field(default_factory=list)  # trace ids held before, no longer

    def sections(self) -> dict[str, SectionChange]:
        if not self.held and not self.gone:
            return {}
        return {"held": SectionChange([t.hex() for t in self.gone],
                                      [(t.hex(), _entry_json(e)) for t, e in self.held.items()])}


def _entry_json(e: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"spans": [s.to_json() for s in e.tree.values()], "since": e.since}
    if e.root_only:
        out["root_only"] = True
    return out


class HeldSpans:
    def __init__(self, hold_seconds: float, max_bytes: int = MAX_HELD_BYTES) -> None:
        self.hold_seconds = hold_seconds
        self.max_bytes = max_bytes
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()  # oldest change first
        self.bytes = 0

    @property
    def waiting(self) -> OrderedDict[bytes, tuple[Tree, float]]:
        """The requests whose root has not come: trace id -> (spans, first arrival)."""
        return OrderedDict((t, (e.tree, e.since)) for t, e in self.entries.items() if not e.root_only)

    def plan(self, spans: Iterable[Span], now: float) -> HoldPlan:
        """The new spans placed: requests whose root came are ready, with a root that came before
        them too; the rest held, and the oldest past the budget or hold_seconds ready as they are."""
        p = HoldPlan()
        added: dict[bytes, list[Span]] = {}  # the spans new to each entry: sized only if it stays held
        rooted: set[bytes] = set()
        for s in spans:
            e = p.held.get(s.trace_id)
            if e is None:
                old = self.entries.get(s.trace_id)
                e = Entry({}, now, 0) if old is None else Entry(dict(old.tree), old.since, old.size, old.root_only)
                p.held[s.trace_id] = e
                added[s.trace_id] = []
            if s.span_id not in e.tree:
                added[s.trace_id].append(s)
            e.tree[s.span_id] = s
            if not s.parent_id:
                rooted.add(s.trace_id)
        for tid, e in list(p.held.items()):
            if (tid in rooted or e.root_only) and len(e.tree) > 1:  # the root and more: complete
                p.ready.append(e.tree)
                del p.held[tid]
                if tid in self.entries:
                    p.gone.append(tid)
                continue
            e.root_only = tid in rooted  # the root alone: its children are still to come
            e.size += sum(span_bytes(s) for s in added[tid])
        self._bound(p, now)
        return p

    def plan_expiry(self, now: float) -> HoldPlan:
        p = HoldPlan()
        self._bound(p, now)
        return p

    def _bound(self, p: HoldPlan, now: float) -> None:
        """The oldest entries go while they waited hold_seconds or the held bytes pass the budget."""
        total = self.bytes + sum(e.size for e in p.held.values())
        total -= sum(self.entries[t].size for t in p.held if t in self.entries)
        total -= sum(self.entries[t].size for t in p.gone)
        gone = set(p.gone)
        # the held entries lazily (a POST looks at the oldest only), then this POST's new ones (popped below)
        order = itertools.chain((t for t in self.entries if t not in gone), [t for t in p.held if t not in self.entries])
        for tid in order:
            e = p.held.get(tid) or self.entries[tid]
            if now - e.since < self.hold_seconds and total <= self.max_bytes:
                break
            total -= e.size
            p.ready.append(e.tree)  # a root that waited in vain is counted as an orphan span
            p.held.pop(tid, None)
            if tid in self.entries:
                p.gone.append(tid)

    def apply(self, p: HoldPlan) -> None:
        """The plan, once committed."""
        for tid in p.gone:
            self.bytes -= self.entries.pop(tid).size
        for tid, e in p.held.items():
            old = self.entries.pop(tid, None)
            self.bytes += e.size - (old.size if old is not None else 0)
            self.entries[tid] = e

    # --- the state section ---------------------------------------------------------
    @classmethod
    def from_section(cls, section: Section, hold_seconds: float, max_bytes: int = MAX_HELD_BYTES
                     ) -> tuple[HeldSpans, bool]:
        """(the held spans, whether the section must be written again in today's form): a state of
        an earlier version kept them as a list of [spans, since]."""
        held = cls(hold_seconds, max_bytes)
        rewrite = False
        for key, v in section.items():
            if isinstance(v, list):  # [spans, since], under the list index
                spans, since, root_only = v[0], v[1], False
                rewrite = True
            else:
                spans, since, root_only = v["spans"], v["since"], bool(v.get("root_only", False))
            tree = {s.span_id: s for s in map(Span.from_json, spans)}
            if not tree:
                continue
            tid = next(iter(tree.values())).trace_id
            rewrite = rewrite or key != tid.hex()
            e = Entry(tree, float(since), sum(span_bytes(s) for s in tree.values()), root_only)
            held.entries[tid] = e
            held.bytes += e.size
        return held, rewrite

    def section(self) -> SectionChange:
        """The whole section, replacing what the state holds."""
        return SectionChange(0, [(t.hex(), _entry_json(e)) for t, e in self.entries.items()], replace=True)
