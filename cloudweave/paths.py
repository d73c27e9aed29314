"""Where cloudweave keeps what it writes beside a configuration file, and where a replica without one keeps it.

One controller per file: each file's learned matrix, flow log, quarantine list and flow-log key sit beside it,
named after it, so the CLI and the controller find the same files without asking each other.
"""

from __future__ import annotations

import os


def beside(config: str, suffix: str) -> str:
    """`DIR/.NAME.SUFFIX` for the configuration `DIR/NAME`."""
    config = os.path.abspath(config)
    return os.path.join(os.path.dirname(config), f".{os.path.basename(config)}.{suffix}")


def default_state_path(config: str) -> str:
    """The traffic engineer's state: the learned matrix and the weights in force."""
    return beside(config, "te-state.json")


def default_flowlog_path(config: str) -> str:
    return beside(config, "flowlog.jsonl")


def default_quarantine_path(config: str) -> str:
    return beside(config, "quarantine.json")


def default_key_path(config: str) -> str:
    """The flow-log key (cloudweave.flowlog.key)."""
    return beside(config, "flowlog-key")


def default_state_dir() -> str:
    """Where a replica started without a file keeps what it writes (the stored policy written out, its lists)."""
    if os.geteuid() == 0:
        return "/var/lib/cloudweave"
    return os.path.join(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "cloudweave")
