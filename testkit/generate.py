"""Generated topologies for the benchmarks and the scale tests, as typed models (and as YAML for tools)."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network

from cloudweave.config.model import Endpoint, Link, Model, Segment, Site


def site(i: int, rundir: str = "/run/cloudweave") -> Site:
    return Site(name=f"s{i}", dpid=i + 1, vtep=IPv4Address(0xAC100000 + i + 1), ovsdb=f"unix:{rundir}/s{i}/db.sock",
                bridge="br-int", datapath="netdev")


def to_yaml_doc(model: Model, rundir: str) -> dict:
    """The model as a document of the file format (what `cloudweave check` reads), sockets under `rundir`."""
    return {
        "version": 1,
        "sites": {s.name: {"dpid": s.dpid, "vtep": str(s.vtep), "ovsdb": f"unix:{rundir}/{s.name}/db.sock",
                           "datapath": s.datapath} for s in model.sites},
        "links": [{"between": list(link.sites), "capacity": f"{int(link.capacity_mbps)}Mbit"} for link in model.links],
        "segments": {g.name: {"vni": g.vni, "subnet": str(g.subnet)} for g in model.segments},
        "endpoints": {e.name: {"site": e.site, "port": e.port, "segment": e.segment, "mac": e.mac, "ip": str(e.ip)}
                      for e in model.endpoints},
    }


def mesh(n_sites: int, n_endpoints: int, n_segments: int, sites_per_segment: int = 8, seed: int = 1) -> Model:
    """A ring of sites with random chords (about 2 links per site), segments spread over a few sites each."""
    rng = random.Random(seed)
    sites = [site(i) for i in range(n_sites)]
    edges = {tuple(sorted((i, (i + 1) % n_sites))) for i in range(n_sites)} if n_sites > 1 else set()
    while n_sites > 3 and len(edges) < 2 * n_sites:
        a, b = rng.sample(range(n_sites), 2)
        edges.add(tuple(sorted((a, b))))
    links = [Link(sites=tuple(sorted((f"s{a}", f"s{b}"))), capacity_mbps=1000.0) for a, b in sorted(edges)]
    segments = [Segment(name=f"g{k}", vni=1000 + k, subnet=IPv4Network(f"10.{k // 256}.{k % 256}.0/24")
                        if n_endpoints // max(n_segments, 1) < 250 else IPv4Network(f"10.{k}.0.0/16"))
                for k in range(n_segments)]
    homes = {g.name: rng.sample(range(n_sites), min(sites_per_segment, n_sites)) for g in segments}
    endpoints = []
    for n in range(n_endpoints):
        g = segments[n % n_segments]
        s = homes[g.name][(n // n_segments) % len(homes[g.name])]
        ip = g.subnet.network_address + 1 + n // n_segments
        endpoints.append(Endpoint(name=f"e{n}", site=f"s{s}", port=f"p{n}", segment=g.name,
                                  mac="02:" + ":".join(f"{(n >> sh) & 0xFF:02x}" for sh in (32, 24, 16, 8, 0)),
                                  ip=ip))
    return Model(sites=tuple(sites), links=tuple(links), segments=tuple(segments), endpoints=tuple(endpoints))
