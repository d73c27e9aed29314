"""`cloudweave run`: start os-ken with controller.app, as osken-manager would, with our own options."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from cloudweave.pki import PkiError, tls_files


class ListenError(ValueError):
    """A listen address that cannot be served as given: the message says why."""


LOOPBACK = ("127.", "localhost", "::1", "[::1]")


def check_listen(listen: str, key: str | None = None, cert: str | None = None, ca: str | None = None,
                 store: str | None = None) -> None:
    """Refuse at start what would otherwise fail later or silently: an unknown scheme, `ssl:` (the listener
    or a store remote) without its key, certificate and CA, one or two of the three, or a file that cannot
    be read. The files are this controller's for every TLS peer (also sites' `ovsdb: ssl:`, which the core
    checks once the file is loaded). A cleartext `tcp:` listener off loopback is allowed, with a warning
    (anyone on that network could speak OpenFlow to it)."""
    scheme, sep, rest = listen.partition(":")
    if not sep or scheme not in ("tcp", "ssl", "unix"):
        raise ListenError(f"unknown scheme '{scheme if sep else listen}': use ssl:HOST:PORT, tcp:HOST:PORT or "
                          "unix:/path")
    try:
        files = tls_files(key, cert, ca)
    except PkiError as exc:
        raise ListenError(str(exc)) from None
    if files is None and (scheme == "ssl" or "ssl:" in (store or "")):
        what = "TLS" if scheme == "ssl" else "the store's ssl: remotes"
        raise ListenError(f"{what} needs --private-key, --certificate, --ca-cert (cloudweave pki issue DIR NAME "
                          "--kind replica)")
    if scheme in ("tcp", "ssl"):
        host, _, port = rest.rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ListenError(f"'{port}' is not a port (1..65535)")
        if scheme == "tcp" and not host.startswith(LOOPBACK):
            logging.getLogger("cloudweave").warning(
                "OpenFlow in cleartext on %s: anyone who reaches it can speak to this controller; use ssl: "
                "(docs/deploy.md)", listen)


def run(config: str | None, listen: str, metrics: str, switch_target: str | None, log_level: str,
        state: str | None = None, quarantine: str | None = None, store: str | None = None,
        replica: str | None = None, import_policy: bool = False,
        tls: tuple[str, str, str] | None = None) -> int:
    """`tls`: (key, certificate, CA) for an ssl: listener and ssl: store remotes (check_listen has checked
    them)."""
    os.environ.setdefault("OSKEN_HUB_TYPE", "native")
    if tls:
        from controller.settings import TLS_ENV

        os.environ.update(zip(TLS_ENV, (os.path.abspath(p) for p in tls), strict=True))
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
    elif listen.startswith("ssl:"):  # the switches connect back the way we listen
        host, _, port = listen.removeprefix("ssl:").rpartition(":")
        os.environ["CLOUDWEAVE_SWITCH_TARGET"] = f"ssl:{host if host not in ('', '0.0.0.0') else '127.0.0.1'}:{port}"
    args = listen_args(listen, tls if listen.startswith("ssl:") else None)
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


def listen_args(listen: str, tls: tuple[str, str, str] | None = None) -> list[str]:
    """`unix:/path`, `tcp:HOST:PORT` or `ssl:HOST:PORT` -> os-ken's options (os-ken does the TLS: it then
    listens on the ssl port only, and requires a client certificate signed by the CA)."""
    if listen.startswith("ssl:"):
        assert tls is not None, "check_listen refuses ssl: without its files"
        host, _, port = listen.removeprefix("ssl:").rpartition(":")
        key, cert, ca = tls
        return ["--ofp-listen-host", host or "127.0.0.1", "--ofp-ssl-listen-port", port, "--ctl-privkey", key,
                "--ctl-cert", cert, "--ca-certs", ca]
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
