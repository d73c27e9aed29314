"""Let os-ken accept OpenFlow connections on a unix socket.

os-ken listens on a unix socket when its listen host is a path, but its Datapath sets TCP_NODELAY on every
accepted socket, which a unix socket refuses (EOPNOTSUPP), so the connection dies before the OpenFlow hello.
The test bed needs unix sockets (OVS instances in other network namespaces reach the controller through the
file system). controller.connections wraps accepted unix sockets in this, so that TCP-level options are
skipped; TCP is untouched.
"""

from __future__ import annotations

import socket
from typing import Any


class UnixStream:
    """A unix socket that ignores TCP-level socket options and is otherwise the socket itself."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        if level != socket.IPPROTO_TCP:
            self._sock.setsockopt(level, option, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)
