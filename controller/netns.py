"""A socket made in another process's network namespace: how one controller collects IPFIX from an
ovs-vswitchd that runs in a namespace of its own (the test bed runs one per site). A socket stays in the
namespace it was made in; setns() moves only the calling thread, so a short-lived thread makes it."""

from __future__ import annotations

import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def vswitchd_netns(rundir: str | None) -> str | None:
    """The network namespace of the ovs-vswitchd whose pidfile is in `rundir`, when it is not ours."""
    if not rundir:
        return None
    try:
        with open(os.path.join(rundir, "ovs-vswitchd.pid")) as fh:
            pid = int(fh.read().strip())
        theirs, ours = f"/proc/{pid}/ns/net", "/proc/self/ns/net"
        return theirs if os.stat(theirs).st_ino != os.stat(ours).st_ino else None
    except (OSError, ValueError):
        return None


def udp_socket(host: str, port: int, netns: str | None = None, rcvbuf: int = 8 << 20) -> socket.socket:
    """A bound UDP socket, made inside `netns` (a /proc/PID/ns/net path) when given."""
    box: dict = {}

    def make() -> None:
        try:
            if netns is not None:
                fd = os.open(netns, os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns {netns}: {os.strerror(ctypes.get_errno())}")
                finally:
                    os.close(fd)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)  # the kernel counts what the full buffer dropped
            s.bind((host, port))
            s.setblocking(False)
            box["sock"] = s
        except OSError as exc:
            box["error"] = exc

    t = threading.Thread(target=make, name="netns-socket")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["sock"]


SO_RXQ_OVFL = 40  # Linux: each datagram carries the socket's running count of drops
