"""Notice edits of the configuration files and SIGHUP, and raise one flag for the reload loop.

A file edit asks for a reload; SIGHUP asks for a reload and for every switch to be read back and compared
(an operator's "make sure now"), which `take_resync()` answers once.

Files are watched with watchdog (inotify) on os-ken's native hub, which `cloudweave run` uses. Under
eventlet (plain `osken-manager`), eventlet's patched queue breaks watchdog's threads, so there the reload
loop calls `poll_mtimes()` instead: a stat of each file, once a second.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

LOG = logging.getLogger("cloudweave.watch")
# A write is whole when the writer closes the file (or renames it into place; a touch is `attrib`): then the
# reload follows within SETTLE_S, which only joins an editor's close-and-rename pair. A `modified` is a write
# still going on (a writer may truncate the file and take seconds to fill it): never read then.
SETTLE_S = float(os.environ.get("CLOUDWEAVE_RELOAD_SETTLE_S", "0.05"))
IGNORED = ("opened", "closed_no_write", "modified")


class ReloadRequests(FileSystemEventHandler):
    """A flag set by file events or SIGHUP; `due()` answers once edits have settled (editors write in bursts)."""

    def __init__(self, settle_s: float = SETTLE_S):
        self.settle_s = settle_s
        self._due_at: float | None = None
        self._resync = False
        self._lock = threading.Lock()
        self._files: set[str] = set()
        self._observer: Observer | None = None
        self._mtimes: dict[str, float | None] = {}
        self._polled_at = 0.0

    def request(self, why: str, resync: bool = False) -> None:
        """Reload once `settle_s` has passed without another request."""
        LOG.info("reload requested: %s", why)
        with self._lock:
            self._due_at = time.monotonic() + self.settle_s
            self._resync = self._resync or resync

    def take_resync(self) -> bool:
        """Whether a SIGHUP asked for the switches to be read back since the last call."""
        with self._lock:
            resync, self._resync = self._resync, False
        return resync

    def due(self) -> bool:
        with self._lock:
            if self._due_at is None or time.monotonic() < self._due_at:
                return False
            self._due_at = None
            return True

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = {os.path.realpath(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p}
        if event.event_type in IGNORED or not paths & self._files:
            return
        self.request(f"{event.event_type} {sorted(paths & self._files)[0]}")

    @property
    def files(self) -> set[str]:
        return set(self._files)

    def watch(self, files: tuple[str, ...], use_inotify: bool = True) -> None:
        """Watch these files (and nothing else); called again after a reload whose includes changed."""
        self._files = {os.path.realpath(f) for f in files}
        self._mtimes = {f: _mtime(f) for f in self._files}
        if self._observer is not None:
            self._observer.stop()
            self._observer = None
        if not use_inotify:
            return
        self._observer = Observer()
        for directory in sorted({os.path.dirname(f) for f in self._files}):
            self._observer.schedule(self, directory, recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def poll_mtimes(self, every_s: float = 1.0) -> None:
        now = time.monotonic()
        if now - self._polled_at < every_s:
            return
        self._polled_at = now
        for path, seen in self._mtimes.items():
            current = _mtime(path)
            if current != seen:
                self._mtimes[path] = current
                self.request(f"modified {path}")

    def install_sighup(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda *_: self.request("SIGHUP", resync=True))

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None
