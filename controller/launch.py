"""`cloudweave run`: start os-ken with controller.app, as osken-manager would, with our own options."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading


def run(config: str | None, listen: str, metrics: str, switch_target: str | None, log_level: str,
        state: str | None = None, quarantine: str | None = None, store: str | None = None,
        replica: str | None = None, import_policy: bool = False) -> int:
    os.environ.setdefault("OSKEN_HUB_TYPE", "native")
    if store:
        os.environ["CLOUDWEAVE_STORE"] = store
        if replica:
            os.environ["CLOUDWEAVE_REPLICA"] = replica
        if import_policy:
            os.environ["CLOUDWEAVE_IMPORT"] = "1"
    if state:
        os.environ["CLOUDWEAVE_STATE"] = os.path.abspath(state)
    if quarantine:
        os.environ["CLOUDWEAVE_QUARANTINE"] = os.path.abspath(quarantine)
    os.environ["CLOUDWEAVE_CONFIG"] = os.path.abspath(config) if config else ""
    os.environ["CLOUDWEAVE_METRICS"] = metrics
    if switch_target:
        os.environ["CLOUDWEAVE_SWITCH_TARGET"] = switch_target
    args = listen_args(listen)
    # os-ken warns at import that its native hub is "incomplete"; we run on it by choice (docs/design.md).
    logging.getLogger("os_ken.lib.hub").setLevel(logging.ERROR)
    from os_ken import cfg
    from os_ken.base.app_manager import AppManager

    cfg.CONF(args=args, project="os_ken")
    logging.basicConfig(level=getattr(logging, log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log_level != "debug":
        for noisy in ("os_ken", "ovsdbapp", "watchdog"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    manager = AppManager.get_instance()
    manager.load_apps(["controller.app"])
    manager.instantiate_apps(**manager.create_contexts())
    stop.wait()
    logging.getLogger("cloudweave").info("stopping")
    manager.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # os-ken's native hub has no way to end its server threads; the flows stay on the switches (fail_mode secure).
    os._exit(0)


def listen_args(listen: str) -> list[str]:
    """`unix:/path` or `tcp:HOST:PORT` (also `HOST:PORT`) -> os-ken's options."""
    if listen.startswith("unix:"):
        path = listen[len("unix:"):]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # a stale socket from an earlier run would make bind fail
        # os-ken listens on a unix socket when the host is a path; the port must be non-zero or it also
        # tries a second listener on the legacy port 6633 at the same path.
        return ["--ofp-listen-host", path, "--ofp-tcp-listen-port", "6653"]
    host, _, port = listen.removeprefix("tcp:").rpartition(":")
    return ["--ofp-listen-host", host or "127.0.0.1", "--ofp-tcp-listen-port", port]
