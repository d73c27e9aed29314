"""Whether a switch's connection has ended before its end reached the core (controller.core refuses a
second connection of a dpid only while the first lives)."""

from __future__ import annotations

import os
import select
import socket
from typing import Any


def peer_gone(dp: Any) -> bool:
    """Whether a switch's connection has ended, though its end may not have reached the core yet: closed on
    our side, or the peer's end of stream (or a reset) waiting to be read. Never blocks, consumes nothing: a
    socket with nothing or bytes to read is alive."""
    if not getattr(dp, "is_active", True):
        return True
    sock = getattr(dp, "socket", None)
    if sock is None:
        return False
    try:
        fd = sock.fileno()
        if fd < 0:
            return True  # closed on our side already
        readable, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    try:
        # Peeked at through a duplicate of the descriptor: the bytes on the wire, TLS records or not (an
        # SSLSocket refuses recv flags), none of them consumed.
        with socket.socket(fileno=os.dup(fd)) as raw:
            return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True  # reset
