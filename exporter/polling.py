"""The background loop of every polling source: poll, count a failure, wait, poll again."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

MIN_INTERVAL = 0.05  # seconds: an interval of 0 must not spin a core


class PollThread(threading.Thread):
    """Calls `poll` every `interval` seconds until `stop()`.

    A poll that raises is counted as `on_error("poll_failed")` and the loop goes on: a bug
    in one poll must not end collection for good. Each distinct failure is logged once
    with its traceback; errors_total says how often it recurs.
    """

    def __init__(self, name: str, poll: Callable[[], object], interval: float,
                 on_error: Callable[[str], None], log: logging.Logger) -> None:
        super().__init__(name=name, daemon=True)
        self.poll = poll
        self.interval = max(interval, MIN_INTERVAL)
        self.on_error = on_error
        self.log = log
        self.stopping = threading.Event()
        self.first_poll_done = threading.Event()
        self._logged: set[str] = set()

    def run(self) -> None:
        while True:
            try:
                self.poll()
            except Exception as e:
                self.on_error("poll_failed")
                what = f"{type(e).__name__}: {e}"
                if what not in self._logged:
                    self._logged.add(what)
                    self.log.exception("%s poll failed; retrying every %gs", self.name, self.interval)
            self.first_poll_done.set()
            if self.stopping.wait(self.interval):
                return

    def stop(self, timeout: float) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout)


class PolledSource:
    """The lifecycle of a source whose background work is one PollThread (set by the subclass)."""

    thread: PollThread
    stop_timeout = 10.0  # seconds a poll in progress may take to finish at shutdown

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.thread.stop(self.stop_timeout)

    def ready(self) -> bool:
        return self.thread.first_poll_done.is_set()
