"""Next hops: the MAC of each NAT site's uplink gateway. The site's master asks for it by ARP (often while
unknown, then now and then), learns it from a reply that came in on the uplink port, and shares it through
the store; another replica starts from the store's. The ARP itself is controller.next_hop's."""

from __future__ import annotations

import logging
import time
from typing import Any

from cloudweave.config.model import Model
from controller import next_hop, roles
from controller.guard import Repeats
from controller.keeper import NOTHING, Reply, Send, change
from controller.messages import NextHopsStored, PacketIn
from controller.roles import Duty

LOG = logging.getLogger("cloudweave")


def _masters(site: str, pub: Any) -> bool:
    return roles.acts_at(Duty.NEXT_HOP_ARP, site, pub.mastered)


class NextHopKeeper:
    def __init__(self, metrics: Any):
        self.metrics = metrics
        self.ask_due: dict[str, float] = {}  # site -> when to ask for its uplink gateway's MAC next
        self._asking: tuple[Model | None, frozenset[str]] = (None, frozenset())  # the sites of a model that ask
        self._mastered: frozenset[str] | None = None  # as last seen: a site newly mastered asks at once
        self._said = Repeats()  # lines said at most once a minute per kind

    def packet_in(self, msg: PacketIn, pub: Any) -> Reply:
        """Only ARP replies from an uplink gateway come up (flows/nat.py): learn its MAC, but only from a reply
        that came in on the site's uplink port (an endpoint, or anyone who speaks OpenFlow to us, could
        otherwise point NATed traffic at a MAC of its choosing)."""
        site = pub.state.model.site_by_dpid(msg.dpid)
        if site is None or site.uplink_gateway is None or not _masters(site.name, pub):
            return NOTHING
        switch = pub.switches.get(msg.dpid)
        uplink = switch.status().ports.get(site.uplink) if switch is not None and site.uplink else None
        if uplink is None or msg.in_port != uplink:
            if self._said.check((site.name, msg.in_port)) is not None:
                LOG.warning("site %s: a packet-in on port %s, not the uplink %s (port %s): not a next hop; "
                            "ignored", site.name, msg.in_port, site.uplink, uplink)
            self.metrics.next_hops_refused.labels(site.name).inc()
            return NOTHING
        answer = next_hop.parse_reply(msg.data, site)
        hops = dict(pub.state.next_hops)
        if answer is None or hops.get(site.name) == answer.mac:
            return NOTHING
        LOG.info("site %s: uplink gateway %s is at %s%s", site.name, answer.ip, answer.mac,
                 f" (was {hops[site.name]})" if site.name in hops else "")
        hops[site.name] = answer.mac

        def learned(committed: bool) -> None:
            if committed:
                self.metrics.next_hops_learned.labels(site.name).inc()

        return change(f"next hop of {site.name}", learned, next_hops=tuple(sorted(hops.items())))

    def stored(self, msg: NextHopsStored, pub: Any) -> Reply:
        """Next hops learned by other sites' masters: a new master starts from them instead of a drop."""
        hops = dict(pub.state.next_hops)
        for site, mac in msg.hops:
            if site not in hops or not _masters(site, pub):
                hops[site] = mac
        merged = tuple(sorted(hops.items()))
        return NOTHING if merged == pub.state.next_hops else change("next hops from the store", next_hops=merged)

    def tick(self, pub: Any, now: float | None = None) -> Reply:
        """ARP for each NAT site's uplink gateway: often while unknown, then now and then to notice a change."""
        now = time.monotonic() if now is None else now
        model = pub.state.model
        if self._asking[0] is not model:  # a new model: every site asks afresh
            self._asking = (model, frozenset(s.name for s in model.sites if next_hop.needs_next_hop(model, s)))
            self.ask_due.clear()
        if pub.mastered != self._mastered:
            for site in (pub.mastered or frozenset()) - (self._mastered or frozenset()):
                self.ask_due.pop(site, None)  # a new master asks for its uplink gateway at once
            self._mastered = pub.mastered
        hops = dict(pub.state.next_hops)
        sends = []
        for switch in pub.switches.values():
            site = model.site_by_dpid(switch.dpid)
            if site is None or site.name not in self._asking[1] or self.ask_due.get(site.name, 0.0) > now or \
                    not _masters(site.name, pub):
                continue
            status = switch.status()
            port = status.ports.get(site.uplink)
            # Only the site's master asks (a replica's session holds EQUAL until its role is confirmed).
            if port is None or not status.role.writes:
                continue
            self.ask_due[site.name] = now + (next_hop.ASK_KNOWN_S if site.name in hops else next_hop.ASK_UNKNOWN_S)
            sends.append(Send(switch.dpid, _arp_request(site, port)))
        return Reply(sends=tuple(sends)) if sends else NOTHING


def _arp_request(site: Any, port: int) -> Any:
    data = next_hop.request(site)

    def build(dp: Any) -> Any:
        ofp, parser = dp.ofproto, dp.ofproto_parser
        return parser.OFPPacketOut(dp, ofp.OFP_NO_BUFFER, parser.OFPMatch(in_port=ofp.OFPP_CONTROLLER),
                                   [parser.OFPActionOutput(port, 0)], data)

    return build
