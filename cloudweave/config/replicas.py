"""The `replicas:` section: the replicas a fabric's policy allows, each with the controller target its
switches may be pointed at. A replica's name is its certificate's over a TLS store; a `Replica` row of a name
or target not listed here is never written into a bridge (controller.replica), so a certificate that can
write a row cannot make the switches connect to a controller of its own.

    replicas:
      r1: ssl:10.0.0.11:6653
      r2: ssl:10.0.0.12:6653

Without the section every replica's row is used (one host, a test bed).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cloudweave.config.errors import Loc
from cloudweave.config.yamlpos import LDict, show

Report = Callable[[Loc, str], None]
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # as cloudweave.pki names a certificate
TARGET = re.compile(r"^(ssl|tcp):[^:\s]+:\d{1,5}$|^unix:\S+$")


def read_replicas(raw: Any, loc: Loc, error: Report) -> tuple[tuple[str, str], ...] | None:
    """(name, target) pairs in name order; None where the section is bad (each problem reported)."""
    if not isinstance(raw, LDict) or not raw:
        error(loc, "replicas must be a mapping of replica name to its controller target (ssl:HOST:PORT)")
        return None
    out: list[tuple[str, str]] = []
    ok = True
    for name, target in raw.items():
        if not isinstance(name, str) or not NAME.match(name):
            error(raw.key_locs[name], f"replicas: '{show(name)}' is not a replica name (letters, digits, '_', '.', "
                                      "'-'; its certificate's name)")
            ok = False
        elif not isinstance(target, str) or not TARGET.match(target):
            error(raw.val_locs[name], f"replicas: {name}: '{show(target)}' is not a controller target "
                                      "(ssl:HOST:PORT, tcp:HOST:PORT or unix:/path)")
            ok = False
        else:
            out.append((name, target))
    return tuple(sorted(out)) if ok else None
