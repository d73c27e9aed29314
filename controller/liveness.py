"""The watchdog: a controller whose event loop or listener has died exits loudly instead of running deaf.

Under os-ken's native hub a thread that raises ends without a word (`hub.TaskExit` is `Exception`, and
`HubThread.run` swallows it), so a dead OpenFlow event loop or listener leaves a process whose metrics and
OVSDB look alive while no switch is served (research: security finding 4a). Every thread that must live as
long as the controller registers here; one checker thread looks at them every CHECK_S and, if one has ended
while the controller is not stopping, logs why and exits with EXIT_CODE, so that a service manager restarts
it (Faucet's `kill_on_exception` and dead-thread check do the same). The flows stay on the switches
(fail_mode secure) meanwhile.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

LOG = logging.getLogger("cloudweave")
CHECK_S = 1.0
EXIT_CODE = 70  # EX_SOFTWARE: a service manager's Restart=on-failure restarts it

_lock = threading.Lock()
_watched: dict[str, Any] = {}
_stopping = threading.Event()
_started = False


def register(name: str, thread: Any) -> None:
    """Watch `thread` (threading.Thread, or os-ken's hub thread) under `name` until the controller stops."""
    global _started
    with _lock:
        _watched[f"{name} ({getattr(thread, 'name', id(thread))})"] = thread
        if not _started:
            _started = True
            threading.Thread(target=_check, name="cloudweave-watchdog", daemon=True).start()


def stopping() -> None:
    """The controller is stopping: threads that end now are meant to."""
    _stopping.set()


def dead() -> list[str]:
    with _lock:
        return sorted(name for name, t in _watched.items() if not _alive(t))


def die(reason: str) -> None:
    """Log and exit at once (no clean-up can be trusted now), unless the controller is stopping anyway."""
    if _stopping.is_set():
        return
    LOG.critical("%s: exiting (code %d) so that a service manager restarts the controller; the switches keep "
                 "their flows meanwhile", reason, EXIT_CODE)
    for h in logging.getLogger().handlers:
        try:
            h.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    sys.stderr.flush()
    os._exit(EXIT_CODE)


def _alive(thread: Any) -> bool:
    if hasattr(thread, "is_alive"):
        return thread.is_alive()
    return not getattr(thread, "dead", False)  # an eventlet green thread


def _check() -> None:
    while not _stopping.wait(CHECK_S):
        gone = dead()
        if gone:
            die(f"thread(s) ended: {', '.join(gone)}")
