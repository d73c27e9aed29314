"""Reading a file that a user names: a regular file only, never blocking, never more than a bound."""

from __future__ import annotations

import os
import stat

MAX_FILE_BYTES = 32 << 20  # one configuration file; 100,000 endpoints take 10.5 MB
MAX_FILES = 256  # a configuration and everything it includes
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class Unreadable(Exception):
    """The file cannot be read as a configuration; the message says why, in words for the user."""


def read_text(path: str, limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of the regular file at `path`. A FIFO, a device (`/dev/zero`) or anything else that is
    not a regular file is refused before a byte is read; so is a file larger than `limit`, also one that
    grows while it is read (`/proc` files claim a size of 0)."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise Unreadable(f"cannot read file: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((what for test, what in _KINDS if test(st.st_mode)), "not a regular file")
            raise Unreadable(f"cannot read file: it is {kind}, not a regular file")
        if st.st_size > limit:
            raise Unreadable(f"file is {st.st_size} bytes, more than the {limit >> 20} MiB a configuration "
                             "file may have")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise Unreadable(f"file grew past the {limit >> 20} MiB a configuration file may have")
            chunks.append(chunk)
    except OSError as exc:
        raise Unreadable(f"cannot read file: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not a UTF-8 text file (byte {exc.start})") from None
