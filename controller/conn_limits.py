"""Per-segment connection limits: conntrack zone limits set and read through the site's ovs-vswitchd.

OVS 3.1 has no OVSDB column for zone limits, so this runs `ovs-appctl dpctl/ct-set-limits` against the
vswitchd whose run directory the site's unix OVSDB socket names: the controller must run on the switch's
host. The datapath enforces the limit; the pipeline drops what it refused (flows/nat.py)."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from cloudweave.config.model import Model, Site

LIMIT_LINE = re.compile(r"zone=(\d+),limit=(\d+),count=(\d+)")
APPCTL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ZoneUse:
    segment: str
    zone: int
    limit: int
    count: int

    @property
    def full(self) -> bool:
        return self.count >= self.limit


class LimitsUnavailable(RuntimeError):
    """The site's vswitchd cannot be reached with ovs-appctl (not a unix socket on this host)."""


def wanted(model: Model, site: str) -> dict[int, tuple[str, int]]:
    """zone -> (segment, limit) for the limited segments with endpoints at the site."""
    here = {e.segment for e in model.endpoints_at(site)}
    return {s.ct_zone: (s.name, s.max_connections) for s in model.segments
            if s.max_connections is not None and s.name in here}


def _appctl(site: Site, *args: str) -> str:
    if site.ovsdb_dir is None:
        raise LimitsUnavailable(f"site {site.name}: OVSDB is not a unix socket; connection limits need the "
                                "controller on the switch's host")
    env = dict(os.environ, OVS_RUNDIR=site.ovsdb_dir)
    # A vswitchd started with --unixctl has its socket under a fixed name; otherwise its pid names it.
    fixed = os.path.join(site.ovsdb_dir, "ovs-vswitchd.ctl")
    target = fixed if os.path.exists(fixed) else "ovs-vswitchd"
    run = subprocess.run(["ovs-appctl", "-t", target, *args], env=env, capture_output=True, text=True,
                         timeout=APPCTL_TIMEOUT_S)
    if run.returncode != 0:
        raise LimitsUnavailable(f"site {site.name}: ovs-appctl {args[0]}: {run.stderr.strip()}")
    return run.stdout


def datapath_name(site: Site) -> str:
    return f"{site.datapath}@ovs-{site.datapath}"


def apply_and_read(model: Model, site: Site) -> list[ZoneUse]:
    """Set the site's zone limits (idempotent) and return each limited zone's use."""
    want = wanted(model, site.name)
    if not want:
        return []
    _appctl(site, "dpctl/ct-set-limits", datapath_name(site),
            *(f"zone={z},limit={limit}" for z, (_, limit) in sorted(want.items())))
    out = _appctl(site, "dpctl/ct-get-limits", datapath_name(site), f"zone={','.join(str(z) for z in sorted(want))}")
    return parse_limits(out, want)


def parse_limits(text: str, want: dict[int, tuple[str, int]]) -> list[ZoneUse]:
    uses = []
    for m in LIMIT_LINE.finditer(text):
        zone, limit, count = (int(g) for g in m.groups())
        if zone in want:
            uses.append(ZoneUse(want[zone][0], zone, limit, count))
    return uses


def remove(site: Site, zones: set[int]) -> None:
    """Lift limits the configuration no longer asks for."""
    if zones:
        _appctl(site, "dpctl/ct-del-limits", datapath_name(site), f"zone={','.join(str(z) for z in sorted(zones))}")
