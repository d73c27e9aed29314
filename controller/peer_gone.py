"""Whether a switch's connection has ended before its end reached the core (controller.core refuses a
second connection of a dpid only while the first lives)."""

from __future__ import annotations

import select
import socket
from typing import Any


def peer_gone(dp: Any) -> bool:
    """Whether a switch's connection has ended, though its end may not have reached the core yet: closed on
    our side, or the peer's end of stream (or a reset) waiting to be read. Never blocks: a socket that has
    nothing to read is alive; one whose bytes cannot be peeked at (TLS) is taken as alive."""
    if not getattr(dp, "is_active", True):
        return True
    sock = getattr(dp, "socket", None)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError, ValueError, NotImplementedError):
        return False
    except (OSError, TypeError, AttributeError):
        return True
