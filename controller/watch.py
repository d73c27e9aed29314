"""Notice edits of the configuration files (watchdog) and SIGHUP, and raise one flag for the reload loop."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

LOG = logging.getLogger("cloudweave.watch")


class ReloadRequests(FileSystemEventHandler):
    """A flag set by file events or SIGHUP; `due()` answers once edits have settled (editors write in bursts)."""

    def __init__(self, settle_s: float = 0.3):
        self.settle_s = settle_s
        self._requested_at: float | None = None
        self._lock = threading.Lock()
        self._files: set[str] = set()
        self._observer: Observer | None = None

    def request(self, why: str) -> None:
        LOG.info("reload requested: %s", why)
        with self._lock:
            self._requested_at = time.monotonic()

    def due(self) -> bool:
        with self._lock:
            if self._requested_at is None or time.monotonic() - self._requested_at < self.settle_s:
                return False
            self._requested_at = None
            return True

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = {os.path.realpath(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p}
        if event.event_type in ("opened", "closed_no_write"):
            return
        if paths & self._files:
            self.request(f"{event.event_type} {sorted(paths & self._files)[0]}")

    def watch(self, files: tuple[str, ...]) -> None:
        """Watch these files (and nothing else); called again after a reload whose includes changed."""
        self._files = {os.path.realpath(f) for f in files}
        if self._observer is not None:
            self._observer.stop()
        self._observer = Observer()
        for directory in sorted({os.path.dirname(f) for f in self._files}):
            self._observer.schedule(self, directory, recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def install_sighup(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda *_: self.request("SIGHUP"))

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
