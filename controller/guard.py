"""No handler can kill the event loop, and no peer can flood the log.

`guarded(event)` wraps each os-ken handler of controller.app: an exception is logged with its traceback (at
most once a minute per event kind; repeats at debug level) and counted in
`cloudweave_handler_errors_total{event}`, the event is dropped, and the loop goes on. Without it, under the
native hub, any exception in any handler ends os-ken's event loop thread for every switch (research:
security finding 4a).

`RepeatFilter` does the same for os-ken's own log lines: a malformed message makes os-ken's parser log a
traceback of about nine lines, once per message; with the filter each kind of line is said at most once a
minute, with how many were held back.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

LOG = logging.getLogger("cloudweave")
REPEAT_S = 60.0
MAX_KINDS = 1024  # kinds of line remembered (oldest forgotten first): a peer cannot grow this


class Repeats:
    """When a kind of thing was last said, and how many since: bounded, thread-safe."""

    def __init__(self, every_s: float = REPEAT_S, max_kinds: int = MAX_KINDS):
        self.every_s, self.max_kinds = every_s, max_kinds
        self._said: OrderedDict[Any, list] = OrderedDict()  # kind -> [when said, held back since]
        self._lock = threading.Lock()

    def check(self, kind: Any, now: float | None = None) -> int | None:
        """None: a repeat, hold it back; else say it now, with this many held back since the last time."""
        now = time.monotonic() if now is None else now
        with self._lock:
            entry = self._said.get(kind)
            if entry is not None and now - entry[0] < self.every_s:
                entry[1] += 1
                return None
            held = entry[1] if entry is not None else 0
            self._said[kind] = [now, 0]
            self._said.move_to_end(kind)
            while len(self._said) > self.max_kinds:
                self._said.popitem(last=False)
            return held

    def __len__(self) -> int:
        return len(self._said)


def guarded(event: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Wrap an os-ken handler method `f(self, ev)`; `self.metrics.handler_errors` counts what it raised."""
    repeats = Repeats()

    def wrap(handler: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(handler)
        def run(self: Any, ev: Any) -> None:
            try:
                handler(self, ev)
            except Exception as exc:  # noqa: BLE001 - the point: nothing reaches os-ken's loop
                metrics = getattr(self, "metrics", None)
                if metrics is not None:
                    metrics.handler_errors.labels(event).inc()
                held = repeats.check(type(exc).__name__)
                if held is None:
                    LOG.debug("handler %s: %s: %s (dropped; said once a minute)", event, type(exc).__name__, exc)
                else:
                    dpid = getattr(getattr(getattr(ev, "msg", None), "datapath", None), "id", None)
                    LOG.exception("handler %s: an event%s raised; it is dropped and the controller goes on%s",
                                  event, f" from switch {dpid:#x}" if isinstance(dpid, int) else "",
                                  f" ({held} more since the last such line)" if held else "")
        return run
    return wrap


class RepeatFilter(logging.Filter):
    """Each (logger, message template) at most once per REPEAT_S; the line that passes says how many were held
    back. For os-ken's loggers, which a peer can make speak once per message it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.repeats = Repeats()

    def filter(self, record: logging.LogRecord) -> bool:
        held = self.repeats.check((record.name, record.levelno, str(record.msg)[:200]))
        if held is None:
            return False
        if record.exc_info and record.exc_info[1] is not None:
            # What a peer sent is not our bug: the exception in one line, no traceback.
            exc = record.exc_info[1]
            said = f"{type(exc).__name__}: {exc}".replace("%", "%%")
            record.msg = f"{record.msg} ({said[:300]})"
            record.exc_info, record.exc_text = None, None
        if held:
            record.msg = f"{record.msg} ({held} such lines held back in the last minute)"
        return True


OSKEN_LOGGERS = ("os_ken.ofproto.ofproto_parser", "os_ken.controller.controller", "os_ken.base.app_manager",
                 "os_ken.lib.hub", "os_ken.controller.ofp_handler", "ofp_event")


def limit_osken_logs() -> None:
    for name in OSKEN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter())


class Budget:
    """At most `n` of something per `window_s` for each key (keys bounded as in Repeats)."""

    def __init__(self, n: int, window_s: float, max_kinds: int = MAX_KINDS):
        self.n, self.window_s, self.max_kinds = n, window_s, max_kinds
        self._used: OrderedDict[Any, list] = OrderedDict()  # key -> [window start, used]
        self._lock = threading.Lock()

    def allow(self, key: Any, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            entry = self._used.get(key)
            if entry is None or now - entry[0] >= self.window_s:
                entry = self._used[key] = [now, 0]
            self._used.move_to_end(key)
            while len(self._used) > self.max_kinds:
                self._used.popitem(last=False)
            if entry[1] >= self.n:
                return False
            entry[1] += 1
            return True
