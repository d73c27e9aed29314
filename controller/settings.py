"""Controller settings from the environment, so that `osken-manager controller.app` and `cloudweave run` agree."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from cloudweave.config.model import Site
from cloudweave.paths import (
    default_flowlog_path,
    default_key_path,
    default_quarantine_path,
    default_state_dir,
    default_state_path,
)


@dataclass(frozen=True)
class Settings:
    config: str
    switch_target: str
    metrics: tuple[str, int] | None
    bfd_ms: int = 100  # BFD interval on the tunnels; 0 turns BFD off (peers that cannot answer it)
    state: str | None = None  # the traffic engineer's state file (the learned matrix, the weights in force)
    quarantine: str | None = None  # the quarantine list (cloudweave.secops.quarantine)
    flowlog: str | None = None  # the flow log (JSON lines; controller.flowlog_service)
    store: str | None = None  # with replicas: the store's remotes (tcp:IP:PORT,...); None: alone, from the file
    replica: str = ""  # with replicas: this replica's name
    policy_dir: str = ""  # with replicas: where the stored policy is written out to be compiled
    import_policy: bool = False  # with replicas: publish the file even if the store holds a policy
    flowlog_key: str | None = None  # alone: the file of the flow-log key (replicas: the store holds it)
    tls: tuple[str, str, str] | None = None  # this controller's key, certificate and CA, for every TLS it speaks

    @staticmethod
    def from_env(listen_host: str, listen_port: int | None) -> Settings:
        config = os.environ.get("CLOUDWEAVE_CONFIG", "")
        store = os.environ.get("CLOUDWEAVE_STORE") or None
        if not config and not store:
            raise SystemExit("cloudweave: set CLOUDWEAVE_CONFIG to the topology/policy file, or CLOUDWEAVE_STORE "
                             "to a store's remotes (or start it with `cloudweave run FILE`)")
        tls = _tls_from_env()
        replica = _replica_name(os.environ.get("CLOUDWEAVE_REPLICA") or "", tls, store)
        base = config or os.path.join(default_state_dir(), "cloudweave")
        policy_dir = os.environ.get("CLOUDWEAVE_POLICY_DIR") or os.path.join(
            os.path.dirname(os.path.abspath(base)), f".{os.path.basename(base)}.replica-{replica}")
        target = os.environ.get("CLOUDWEAVE_SWITCH_TARGET") or default_switch_target(listen_host, listen_port)
        metrics_env = os.environ.get("CLOUDWEAVE_METRICS", "127.0.0.1:9108")
        metrics = None
        if metrics_env != "off":
            host, _, port = metrics_env.rpartition(":")
            metrics = (host or "127.0.0.1", int(port))
        bfd_ms = int(os.environ.get("CLOUDWEAVE_BFD_MS", "100"))
        state = None if store else os.environ.get("CLOUDWEAVE_STATE") or default_state_path(config)
        quarantine = os.environ.get("CLOUDWEAVE_QUARANTINE") or default_quarantine_path(base)
        flowlog = os.environ.get("CLOUDWEAVE_FLOWLOG") or default_flowlog_path(base)
        key = None if store else os.environ.get("CLOUDWEAVE_FLOWLOG_KEY") or default_key_path(base)
        return Settings(config, target, metrics, bfd_ms, state, quarantine, flowlog, store, replica, policy_dir,
                        os.environ.get("CLOUDWEAVE_IMPORT") == "1", key, tls)


TLS_ENV = ("CLOUDWEAVE_TLS_KEY", "CLOUDWEAVE_TLS_CERT", "CLOUDWEAVE_TLS_CA")


def _tls_from_env() -> tuple[str, str, str] | None:
    key, cert, ca = (os.environ.get(v, "") for v in TLS_ENV)
    return (key, cert, ca) if key and cert and ca else None


def _replica_name(given: str, tls: tuple[str, str, str] | None, store: str | None) -> str:
    """Over a TLS store a replica is its certificate's name: the store lets it write only rows of that name."""
    if not (tls and store and "ssl:" in store):
        return given or socket.gethostname()
    from cloudweave.pki import PkiError, certificate_name

    try:
        name = certificate_name(tls[1])
    except PkiError as exc:
        raise SystemExit(f"cloudweave: {exc}") from None
    if given and given != name:
        raise SystemExit(f"cloudweave: --replica {given}: over a TLS store a replica is named by its certificate "
                         f"({tls[1]} names '{name}'); drop --replica or issue a certificate for '{given}'")
    return name






def switch_target_for(template: str, site: Site) -> str:
    """Fill in a per-site target template. OVS connects to a unix socket only inside its own run directory,
    so with one OVS per site the target is usually `unix:{ovsdb_dir}/controller.sock`."""
    return template.format(site=site.name, ovsdb_dir=site.ovsdb_dir or "")


def default_switch_target(listen_host: str, listen_port: int | None) -> str:
    """What OVS is told to connect to: the controller's own listen address."""
    if listen_host.startswith("/"):
        return f"unix:{listen_host}"
    host = listen_host if listen_host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    return f"tcp:{host}:{listen_port or 6653}"
