"""The uplink gateway's MAC, which NAT mode sends to: asked for with ARP from the site's NAT address, learned
from the reply that the switch hands up (flows/nat.py sends such replies to the controller)."""

from __future__ import annotations

from dataclasses import dataclass

from os_ken.lib.packet import arp, ethernet, packet

from cloudweave.config.model import Model, Site

ASK_UNKNOWN_S = 2.0   # while the MAC is unknown NAT traffic is dropped: ask often
ASK_KNOWN_S = 30.0    # refresh: a replaced gateway is found within this


@dataclass(frozen=True)
class Answer:
    ip: str
    mac: str


def needs_next_hop(model: Model, site: Site) -> bool:
    """Whether the site NATs for local endpoints and so must know its uplink gateway's MAC."""
    nat_segments = {s.name for s in model.segments if s.mode == "nat"}
    return (site.uplink is not None and site.nat_ip is not None and site.uplink_gateway is not None
            and any(e.segment in nat_segments for e in model.endpoints_at(site.name)))


def request(site: Site) -> bytes:
    """A broadcast ARP request for the uplink gateway, from the site's NAT address and MAC."""
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet("ff:ff:ff:ff:ff:ff", site.nat_mac, ethernet.ether.ETH_TYPE_ARP))
    pkt.add_protocol(arp.arp_ip(arp.ARP_REQUEST, site.nat_mac, str(site.nat_ip), "00:00:00:00:00:00",
                                str(site.uplink_gateway)))
    pkt.serialize()
    return bytes(pkt.data)


def parse_reply(data: bytes, site: Site) -> Answer | None:
    """The gateway's answer, if `data` is an ARP reply from the uplink gateway to the NAT address."""
    a = packet.Packet(data).get_protocol(arp.arp)
    if a is None or a.opcode != arp.ARP_REPLY or a.src_ip != str(site.uplink_gateway) \
            or a.dst_ip != str(site.nat_ip):
        return None
    return Answer(a.src_ip, a.src_mac.lower())
