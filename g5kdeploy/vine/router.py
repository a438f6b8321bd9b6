"""A ViNe router (VR): the control plane of one site, run on its gateway.

It announces its record (its networks: GNDT entries) to every other VR over TCP, each
message sealed with the overlay's secret, and answers an announcement with its own record,
so VRs that start in any order converge. A record newer than the one it holds changes its
data plane at once (routes, forwarding entries). The site's administrator (the toolkit)
changes the LNDT and the VR's networks at run time through a Unix socket only root reaches:
one JSON request per line (`show`, `add-host`, `remove-host`, `add-network`,
`remove-network`); `show` also gives the bytes the VR received from its LAN (what hosts
sent through it). Every change seen is appended to events.jsonl with its time (how long a
VR takes to learn an entry). With `migration` on, it also runs the live-migration support
(g5kdeploy.vine.migration), whose questions to other VRs go over the same sealed channel.

`python3 -m g5kdeploy.vine.router CONFIG` (JSON: vr, index, address, lan, lan_address, port,
secret_file, peers {vr: address}, networks, lndt, run, dataplane kernel|user, migration);
SIGTERM removes the data plane and exits."""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from pathlib import Path

from g5kdeploy.vine import dataplane, migration, userland
from g5kdeploy.vine.tables import Record, gndt, seal, unseal, unseal_message

log = logging.getLogger("vine")
PORT = 7474
MAX_LINE = 1 << 16
RETRY_S = 0.5


class Router:
    def __init__(self, cfg: dict):
        self.cfg, self.vr, self.lan = cfg, cfg["vr"], cfg.get("lan", "br0")
        self.secret = Path(cfg["secret_file"]).read_bytes().strip()
        self.peers: dict[str, str] = {k: v for k, v in cfg["peers"].items() if k != self.vr}
        self.run = Path(cfg["run"])
        self.lock = threading.RLock()
        self.lndt: list[str] = [_entry(x) for x in cfg.get("lndt", [])]
        self.own = Record(self.vr, time.time_ns(), cfg["address"], dataplane.mac(cfg["index"]),
                          tuple(str(ipaddress.ip_network(n)) for n in cfg.get("networks", [])))
        self.records: dict[str, Record] = {self.vr: self.own}
        self.routes: dict[str, str] = {}            # network -> the VR address it is routed to
        self.known: dict[str, tuple[str, str]] = {}  # peer vr -> (address, mac) in the data plane
        self.wanted = threading.Condition()          # a newer own record to announce
        self.forwarder = None                            # the kernel's data plane (VXLAN), or a user-level one
        if cfg.get("dataplane", "kernel") == "user":
            dataplane.down(self.lan)
            self.forwarder = userland.Forwarder(self.own.address, list(self.peers.values()))
        self.support = migration.Support(self, cfg["lan_address"]) if cfg.get("migration") else None

    # the data plane -------------------------------------------------------------------
    def start(self) -> None:
        if self.forwarder is None:
            dataplane.up(self.own.address, self.own.mac, self.lan, self.cfg.get("port", PORT))
        else:
            self.forwarder.start()
            dataplane.up(self.own.address, self.own.mac, self.lan, self.cfg.get("port", PORT), userland.PORT)
        dataplane.set_elements("peers", list(self.peers.values()))
        self.set_lndt_elements()
        if self.support:
            self.support.start()
        self._event("start", self.own)

    def stop(self) -> None:
        if self.support:
            self.support.stop()
        dataplane.down(self.lan)

    def set_lndt_elements(self) -> None:
        """The data plane's LNDT: the LNDT's hosts, less those migrated away."""
        dataplane.set_elements("lndt", self.lndt if self.support is None else migration.without(self.lndt,
                                                                                               self.support.away))

    def served_by(self, network: str) -> str | None:
        """The VR the GNDT gives `network` to."""
        return gndt(self.records).get(network)

    def _apply(self) -> None:
        """Make the kernel hold what the records say (under the lock)."""
        for vr, r in self.records.items():
            if self.forwarder is None and vr != self.vr and self.known.get(vr) != (r.address, r.mac):
                if vr in self.known:
                    dataplane.forget_peer(*self.known[vr])
                dataplane.peer(r.address, r.mac)
                self.known[vr] = (r.address, r.mac)
        wanted = {n: self.records[vr].address for n, vr in gndt(self.records).items() if vr != self.vr}
        for n in set(self.routes) - set(wanted):
            dataplane.unroute(n)
            del self.routes[n]
        for n, via in wanted.items():
            if self.routes.get(n) != via:
                dataplane.route(n, via if self.forwarder is None else None)
                self.routes[n] = via
        if self.forwarder is not None:
            self.forwarder.route(wanted)

    def _event(self, what: str, r: Record) -> None:
        self.event(what, of=r.vr, seq=r.seq, networks=list(r.networks))

    def event(self, what: str, **fields) -> None:
        with open(self.run / "events.jsonl", "a") as f:
            f.write(json.dumps({"t": time.time(), "vr": self.vr, "event": what, **fields}) + "\n")

    # records --------------------------------------------------------------------------
    def learn(self, r: Record) -> bool:
        """Take a peer's record if it is newer than the one held."""
        if r.vr not in self.peers or r.address != self.peers[r.vr]:
            raise ValueError(f"{r.vr} at {r.address} is not a VR of this overlay")
        with self.lock:
            held = self.records.get(r.vr)
            if held is not None and held.seq >= r.seq:
                return False
            self.records[r.vr] = r
            self._apply()
            if self.support:
                self.support.learned(r)
        self._event("learned", r)
        return True

    def change(self, networks: tuple[str, ...] | None = None, lndt: list[str] | None = None) -> Record:
        """A new own record (networks) or LNDT, applied here and announced to every VR."""
        with self.lock:
            renewed = networks is not None and networks != self.own.networks
            if renewed:
                self.own = Record(self.vr, max(time.time_ns(), self.own.seq + 1), self.own.address, self.own.mac,
                                  networks)
                self.records[self.vr] = self.own
                with self.wanted:                 # announced at once, while this kernel follows
                    self.wanted.notify_all()
            if lndt is not None:
                self.lndt = lndt
                self.set_lndt_elements()
            if renewed:
                self._apply()
                self._event("changed", self.own)
            return self.own

    def announcer(self, vr: str) -> None:
        """Keep `vr` told of the newest own record (retrying until it answers)."""
        told = 0
        while True:
            with self.wanted:
                while self.own.seq == told:
                    self.wanted.wait()
                mine = self.own
            try:
                with socket.create_connection((self.peers[vr], self.cfg.get("port", PORT)), timeout=5) as s:
                    s.sendall(seal(mine, self.secret))
                    answer = s.makefile("rb").readline(MAX_LINE)
                told = mine.seq
                self.learn(unseal(answer, self.secret))
            except (OSError, ValueError) as e:
                log.debug("announcing to %s: %s", vr, e)
                time.sleep(RETRY_S)

    def query(self, vr: str, message: dict) -> dict:
        """One sealed question to another VR, its sealed answer."""
        with socket.create_connection((self.peers[vr], self.cfg.get("port", PORT)), timeout=5) as s:
            s.sendall(seal(message, self.secret))
            return unseal_message(s.makefile("rb").readline(MAX_LINE), self.secret)

    # what the administrator asks --------------------------------------------------------
    def ask(self, req: dict) -> dict:
        op = req.get("op")
        with self.lock:
            if op == "show":
                return {"vr": self.vr, "lndt": self.lndt, "gndt": gndt(self.records),
                        "records": {k: {"seq": r.seq, "address": r.address, "networks": list(r.networks)}
                                    for k, r in self.records.items()}, "routes": dict(self.routes),
                        "lan_rx_bytes": int(Path(f"/sys/class/net/{self.lan}/statistics/rx_bytes").read_text()),
                        **({"hwdt": dict(self.support.hwdt), "away": sorted(self.support.away),
                            "arrived": dict(self.support.arrived)} if self.support else {})}
            entry = _entry(req["entry"])
            if op in ("add-host", "remove-host"):
                lndt = [x for x in self.lndt if x != entry] + ([entry] if op == "add-host" else [])
                self.change(lndt=lndt)
            elif op in ("add-network", "remove-network"):
                nets = tuple(n for n in self.own.networks if n != entry) + ((entry,) if op == "add-network" else ())
                self.change(networks=nets)
            else:
                raise ValueError(f"unknown op {op!r}")
            return {"ok": True, "seq": self.own.seq}


def _entry(text: str) -> str:
    """An address or a network, normalized (ValueError otherwise)."""
    return str(ipaddress.ip_network(text, strict=True)) if "/" in str(text) else str(ipaddress.ip_address(text))


def serve(router: Router) -> tuple[socketserver.BaseServer, socketserver.BaseServer]:
    class Peer(socketserver.StreamRequestHandler):
        timeout = 10

        def handle(self):
            try:
                msg = unseal_message(self.rfile.readline(MAX_LINE), router.secret)
                if msg["kind"] == "record":
                    router.learn(Record.of(msg))
                    with router.lock:
                        self.wfile.write(seal(router.own, router.secret))
                elif router.support:
                    self.wfile.write(seal(router.support.answer(msg), router.secret))
                else:
                    raise ValueError(f"a {msg['kind']!r} message, and live-migration support is off")
            except (ValueError, OSError) as e:
                log.warning("refused an announcement from %s: %s", self.client_address[0], e)

    class Admin(socketserver.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                try:
                    out = router.ask(json.loads(line))
                except (ValueError, KeyError, TypeError) as e:
                    out = {"ok": False, "error": str(e)}
                self.wfile.write(json.dumps(out).encode() + b"\n")

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    peers = socketserver.ThreadingTCPServer((router.own.address, router.cfg.get("port", PORT)), Peer)
    path = router.run / "control.sock"
    path.unlink(missing_ok=True)
    old = os.umask(0o077)
    try:
        socketserver.ThreadingUnixStreamServer.daemon_threads = True
        admin = socketserver.ThreadingUnixStreamServer(str(path), Admin)
    finally:
        os.umask(old)
    for server in (peers, admin):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return peers, admin


def main(argv: list[str]) -> int:
    cfg = json.loads(Path(argv[0]).read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s vine %(levelname)s %(message)s")
    router = Router(cfg)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    try:
        router.start()
        servers = serve(router)
        for vr in router.peers:
            threading.Thread(target=router.announcer, args=(vr,), daemon=True).start()
        log.info("VR %s at %s: networks %s, LNDT %s", router.vr, router.own.address, router.own.networks, router.lndt)
        stopping.wait()
        for s in servers:
            s.shutdown()
    finally:
        router.stop()
        (router.run / "control.sock").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
