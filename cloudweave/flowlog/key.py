"""The flow-log key: the secret behind each site's observation domain (flows.flowlog.site_domain).

OVS exports IPFIX over UDP only, and the collector's socket is reachable by any local process; a record is
believed only if it carries its site's domain, which is derived from this key. Alone, the controller keeps
the key in a file beside the configuration, readable by its owner only (0600), so that a restart keeps the
same domains (and so the same flows: a restart sends nothing); with replicas the store holds it
(controller.replica), so that every replica expects the same domains.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat

KEY_BYTES = 16


class KeyFileError(Exception):
    pass




def new_key() -> str:
    return secrets.token_hex(KEY_BYTES)


def parse(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise KeyFileError(f"{where}: not a flow-log key ({KEY_BYTES * 2} hexadecimal digits)") from None
    if len(key) < KEY_BYTES:
        raise KeyFileError(f"{where}: a flow-log key of {len(key)} bytes; {KEY_BYTES} at least")
    return key


def load_or_create(path: str) -> bytes:
    """The key in `path`, made (0600) if there is none; a file others may read is made private again."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(new_key() + "\n")
    st = os.stat(path)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
    with open(path) as fh:
        return parse(fh.read(4096), path)
