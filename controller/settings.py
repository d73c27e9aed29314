"""Controller settings from the environment, so that `osken-manager controller.app` and `cloudweave run` agree."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cloudweave.config.model import Site
from cloudweave.quarantine import default_quarantine_path


def default_flowlog_path(config: str) -> str:
    """Beside the configuration, named after it."""
    config = os.path.abspath(config)
    return os.path.join(os.path.dirname(config), f".{os.path.basename(config)}.flowlog.jsonl")


@dataclass(frozen=True)
class Settings:
    config: str
    switch_target: str
    metrics: tuple[str, int] | None
    bfd_ms: int = 100  # BFD interval on the tunnels; 0 turns BFD off (peers that cannot answer it)
    state: str | None = None  # the traffic engineer's state file (the learned matrix, the weights in force)
    quarantine: str | None = None  # the quarantine list (cloudweave.quarantine)
    flowlog: str | None = None  # the flow log (JSON lines; controller.flowlog_service)

    @staticmethod
    def from_env(listen_host: str, listen_port: int | None) -> Settings:
        config = os.environ.get("CLOUDWEAVE_CONFIG")
        if not config:
            raise SystemExit("cloudweave: set CLOUDWEAVE_CONFIG to the topology/policy file "
                             "(or start it with `cloudweave run FILE`)")
        target = os.environ.get("CLOUDWEAVE_SWITCH_TARGET") or default_switch_target(listen_host, listen_port)
        metrics_env = os.environ.get("CLOUDWEAVE_METRICS", "127.0.0.1:9108")
        metrics = None
        if metrics_env != "off":
            host, _, port = metrics_env.rpartition(":")
            metrics = (host or "127.0.0.1", int(port))
        bfd_ms = int(os.environ.get("CLOUDWEAVE_BFD_MS", "100"))
        state = os.environ.get("CLOUDWEAVE_STATE") or default_state_path(config)
        quarantine = os.environ.get("CLOUDWEAVE_QUARANTINE") or default_quarantine_path(config)
        flowlog = os.environ.get("CLOUDWEAVE_FLOWLOG") or default_flowlog_path(config)
        return Settings(config, target, metrics, bfd_ms, state, quarantine, flowlog)


def default_state_path(config: str) -> str:
    """Beside the configuration, named after it: one controller per file keeps its own learned matrix."""
    config = os.path.abspath(config)
    return os.path.join(os.path.dirname(config), f".{os.path.basename(config)}.te-state.json")


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
