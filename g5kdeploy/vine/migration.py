"""A VR's live-migration support (thesis ch. 5 §5.5-5.6): nothing in a migration tells ViNe.

* The HWDT: the MAC -> IP of every host seen on the VR's LAN, from the ARP it captures (and
  a scan of its networks when it starts); and, per MAC, the addresses off the LAN it asked
  for (hosts on one subnet spanning the sites, §5.5.4, ask ARP for those too).
* Detection: a RARP (what QEMU sends for a guest resuming after an incoming migration) from a
  MAC the HWDT does not hold, or an ARP from an address of another VR's network (a guest's
  own announcement), makes the VR ask the other VRs which IP that MAC had.
* Reconfiguration, by the destination VR: the IP as a /32 in its record (the GNDT's most
  specific entry: every VR routes it here once the record reaches it) and in its LNDT; the
  source VR, learning that record, takes the IP out of its LNDT.
* ARP redirection: the source VR says on its LAN, by gratuitous ARP, that the IP is at its
  own MAC and answers ARP for it; the destination VR, told with the guest's IP the hosts it
  may hold in its ARP cache (the source's LAN, and what else it asked for), tells the guest by
  ARP replies addressed to it that each is at the destination VR's MAC, and answers the
  guest's ARP for them (its proxy ARP: they are routed off its LAN).
* Routing optimisation (§5.5.4): those of the guest's hosts that are on the destination's LAN
  are told to the guest at their own MAC, and the LAN is told, by gratuitous ARP, the guest's
  own MAC: where hosts are configured on one subnet spanning the sites, the guest and its new
  neighbours then talk directly at layer 2 (elsewhere the hosts hold no entry to update).
Events (`rarp`, `detected`, `arrived`, `left`, `redirected`) go to the VR's events.jsonl."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time

from g5kdeploy.vine import arp, dataplane

log = logging.getLogger("vine")
LOCKTIME_S = 1.1          # a Linux host ignores a second ARP update within 1 s: say it again after
SCAN_MAX_HOSTS = 1024     # networks up to this size are scanned when the VR starts
UNKNOWN_RETRY_S = 5.0     # a MAC no VR knew is not asked about again sooner
ASKED_MAX = 256           # addresses off the LAN remembered per MAC


class Support:
    """On `router` (a g5kdeploy.vine.router.Router), capturing on its LAN."""

    def __init__(self, router, lan_address: str):
        self.router, self.lan_address = router, lan_address
        self.lan = arp.Lan(router.lan)
        self.hwdt: dict[str, str] = {}          # MAC -> IP of the hosts seen on this LAN
        self.arrived: dict[str, str] = {}       # IP of a guest that migrated here -> the VR it came from
        self.away: set[str] = set()             # IPs of this VR's networks now served by another VR
        self.base = tuple(router.own.networks)  # the networks it serves, without the migrated guests
        self.pending: set[str] = set()          # MACs being asked about
        self.unknown: dict[str, float] = {}     # MAC no VR knew -> when
        self.asked: dict[str, set[str]] = {}    # MAC -> the addresses off this LAN it asked ARP for

    def start(self) -> None:
        threading.Thread(target=self._capture, daemon=True).start()
        threading.Thread(target=self._scan, daemon=True).start()

    def stop(self) -> None:
        self.lan.close()

    # what the LAN says --------------------------------------------------------------------
    def _capture(self) -> None:
        while True:
            try:
                frames = self.lan.receive()
            except (OSError, ValueError):
                return                                      # the sockets were closed
            for f in frames:
                self.seen(f)

    def seen(self, f: arp.Frame) -> None:
        """One frame captured on the LAN."""
        if f.ethertype == arp.ETH_P_RARP and f.op == arp.RARP_REQUEST:
            self.announced(f.sha)
        elif f.ethertype == arp.ETH_P_ARP and f.spa != arp.ZERO_IP and f.sha != self.lan.mac:
            with self.router.lock:
                ours = self._in_base(f.spa) and f.spa not in self.away
                if ours:
                    self.hwdt[f.sha] = f.spa
                    if f.op == arp.REQUEST and not self._in_base(f.tpa):
                        asked = self.asked.setdefault(f.sha, set())
                        if len(asked) < ASKED_MAX:
                            asked.add(f.tpa)
            if not ours and f.spa not in self.arrived:
                self.announced(f.sha, arp.ETH_P_ARP)

    def _scan(self) -> None:
        """Ask every address of the VR's (small) networks: the answers fill the HWDT."""
        for n in map(ipaddress.ip_network, self.base):
            if n.num_addresses <= SCAN_MAX_HOSTS:
                for ip in n.hosts():
                    if str(ip) != self.lan_address:
                        self.lan.send(arp.who_has(str(ip), self.lan.mac, self.lan_address))

    def announced(self, mac: str, by: int = arp.ETH_P_RARP) -> None:
        """A host announced `mac` (RARP) or a foreign address (ARP): a guest that migrated here
        unless the HWDT knows it."""
        with self.router.lock:
            if mac in self.hwdt or mac in self.pending or \
                    time.monotonic() - self.unknown.get(mac, -UNKNOWN_RETRY_S) < UNKNOWN_RETRY_S:
                return
            self.pending.add(mac)
        t = time.time()
        self.router.event("rarp" if by == arp.ETH_P_RARP else "foreign-arp", mac=mac)
        threading.Thread(target=self._detect, args=(mac, t), daemon=True).start()

    def _detect(self, mac: str, seen: float) -> None:
        try:
            self._ask_who_had(mac, seen)
        finally:
            with self.router.lock:
                self.pending.discard(mac)

    def _ask_who_had(self, mac: str, seen: float) -> None:
        for vr in list(self.router.peers):
            try:
                answer = self.router.query(vr, {"kind": "who-has", "mac": mac})
            except (OSError, ValueError) as e:
                log.warning("asking %s which IP %s had: %s", vr, mac, e)
                continue
            if ip := answer.get("ip"):
                self.router.event("detected", mac=mac, ip=ip, source=vr, rarp_t=seen)
                self.arrive(ip, mac, vr, [h for h in answer.get("hosts", []) if h != ip])
                return
        with self.router.lock:
            self.unknown[mac] = time.monotonic()
        self.router.event("unknown", mac=mac)

    # the VRs' questions ----------------------------------------------------------------------
    def answer(self, msg: dict) -> dict:
        """who-has: the IP of a MAC of this LAN, and the hosts it may be talking to at layer 2:
        this LAN's (the VR's own address first), then those off it that the MAC asked for."""
        if msg["kind"] != "who-has":
            raise ValueError(f"unknown message kind {msg['kind']!r}")
        mac = str(msg["mac"]).lower()
        with self.router.lock:
            ip = self.hwdt.get(mac)
            if not ip or ip in self.away:
                return {"kind": "is-at", "ip": None}
            mine = {a for a in self.hwdt.values() if self._in_base(a) and a not in self.away} - {self.lan_address}
            asked = self.asked.get(mac, set()) - mine - {self.lan_address}
            return {"kind": "is-at", "ip": ip, "hosts": [self.lan_address] + sorted(mine) + sorted(asked)}

    # reconfiguration and redirection -------------------------------------------------------
    def arrive(self, ip: str, mac: str, source: str, hosts: list[str]) -> None:
        """The guest `ip` (`mac`) now runs on this LAN, and came from `source`'s; it may hold
        `hosts` in its ARP cache."""
        r, me = self.router, self.lan.mac
        with r.lock:                  # the new record is announced as soon as the lock is let go
            self.hwdt[mac] = ip
            self.arrived[ip] = source
            self.away.discard(ip)
            here = {a: m for m, a in self.hwdt.items() if self._in_base(a) and a not in self.away}
            # ARP first: until then what the guest sends is lost anyway, and it costs no time
            self._say([arp.is_at(h, here.get(h, me), to_ip=ip, to_mac=mac, by=me) for h in hosts]
                      + [arp.is_at(ip, mac, by=me)])
            host = f"{ip}/32"
            r.change(networks=tuple(n for n in r.own.networks if n != host) + (host,),
                     lndt=[x for x in r.lndt if x != ip] + [ip])
        dataplane.host_route(ip, r.lan)
        r.event("arrived", ip=ip, source=source)
        dataplane.proxy(ip, r.lan, on=False)
        r.event("redirected", ip=ip, hosts=[h for h in hosts if h not in here], direct=[h for h in hosts if h in here])

    def learned(self, record) -> None:
        """Another VR's new record: a /32 it serves that was ours (our network's host, or a
        guest that had migrated here) has left this LAN (called under the router's lock)."""
        r = self.router
        for n in record.networks:
            net = ipaddress.ip_network(n)
            if net.prefixlen != 32 or r.served_by(n) != record.vr:
                continue
            ip = str(net.network_address)
            if ip in self.arrived:                       # it had come here, and went on
                del self.arrived[ip]
                r.change(networks=tuple(x for x in r.own.networks if x != n),
                         lndt=[x for x in r.lndt if x != ip])
                dataplane.unhost_route(ip)
            if self._in_base(ip) and ip not in self.away:
                self._leave(ip, record.vr)
            self.hwdt = {m: a for m, a in self.hwdt.items() if a != ip}

    def _leave(self, ip: str, to: str) -> None:
        r = self.router
        self._say([arp.is_at(ip, self.lan.mac)])          # the LAN's hosts send to this VR from now on
        self.away.add(ip)
        dataplane.proxy(ip, r.lan)
        dataplane.forget_neighbour(ip, r.lan)
        r.set_lndt_elements()
        r.event("left", ip=ip, to=to)

    def _say(self, frames: list) -> None:
        """Send now and once more after the hosts' lock time."""
        for f in frames:
            self.lan.send(f)
        t = threading.Timer(LOCKTIME_S, lambda: [self.lan.send(f) for f in frames])
        t.daemon = True
        t.start()

    def _in_base(self, ip: str) -> bool:
        a = ipaddress.ip_address(ip)
        return any(a in ipaddress.ip_network(n) and ipaddress.ip_network(n).prefixlen < 32 for n in self.base)


def without(entries: list[str], away: set[str]) -> list[str]:
    """LNDT `entries` (addresses, networks) less the addresses `away`: a network with a
    hole is split into the networks around it."""
    out: list[str] = []
    for e in entries:
        net = ipaddress.ip_network(e)
        parts = [net]
        for a in away:
            hole = ipaddress.ip_network(f"{a}/32")
            parts = [q for p in parts for q in (p.address_exclude(hole) if hole.subnet_of(p) else [p])]
        out += [str(p) if "/" in e else str(p.network_address) for p in parts]
    return out
