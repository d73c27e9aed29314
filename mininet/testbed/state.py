"""The test bed's state file: what runs where, written as each piece starts so that `down --force` finds it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

STATE_FILE = "testbed.json"


@dataclass
class State:
    workdir: str
    topology: str = ""
    status: str = "building"  # building | ready | failed | stopping
    error: str = ""
    keeper_pid: int = 0
    hosts: dict[str, int] = field(default_factory=dict)  # endpoint -> pid of its namespace's shell
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)  # site -> {"pid": ..., "rundir": ...}
    controller: dict[str, Any] = field(default_factory=dict)  # {"pid", "target", "log"} (pid 0: attached)
    others: dict[str, int] = field(default_factory=dict)  # other namespaces (the "internet") -> shell pid
    replicas: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"pid", "target", "log", "metrics"}
    store: dict[str, Any] = field(default_factory=dict)  # {"remotes", "members": [member directories]}
    tls: dict[str, Any] = field(default_factory=dict)  # --tls: {"pki", "addresses": {site: IP}, "host"}

    @property
    def path(self) -> str:
        return os.path.join(self.workdir, STATE_FILE)

    def save(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(asdict(self), fh, indent=2)
        os.replace(tmp, self.path)

    @staticmethod
    def load(workdir: str) -> State | None:
        try:
            with open(os.path.join(workdir, STATE_FILE)) as fh:
                return State(**json.load(fh))
        except (OSError, ValueError, TypeError):
            return None

    def namespace_pid(self, name: str) -> int | None:
        """The pid whose network namespace is the named endpoint's or site's."""
        if name in self.hosts:
            return self.hosts[name]
        if name in self.sites:
            return self.sites[name]["pid"]
        return self.others.get(name)
