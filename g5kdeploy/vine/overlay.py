"""ViNe over a testbed: one VR per site on the site's gateway (the one host of a NATed or
firewalled site that others can reach, and the hosts' default router, so they need no
configuration), started and stopped here, changed at run time through each VR's socket."""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from g5kdeploy import HOME, work_dir
from g5kdeploy.errors import UserError
from g5kdeploy.files import write_atomic
from g5kdeploy.testbed import Feature, Testbed
from g5kdeploy.vine.router import PORT
from g5kdeploy.vine.tables import spanning

START_TIMEOUT_S = 30
DATAPLANES = ("kernel", "user")     # VXLAN driven by the control plane, or a user-level router (userland)
ROOT = Path(__file__).resolve().parents[2]         # where `python3 -m g5kdeploy...` runs from
LAN = "br0"                                         # a gateway's interface to its site's hosts


class Overlay:
    """`lndt` and `networks` per site (default: the site's subnet for both, i.e. every host
    of the site may use the overlay); `dataplane` one of DATAPLANES; `migration`: the VRs'
    live-migration support (g5kdeploy.vine.migration) on or off."""

    def __init__(self, tb: Testbed, sites: list[str] | None = None, lndt: dict[str, list[str]] | None = None,
                 networks: dict[str, list[str]] | None = None, home: Path | None = None, dataplane: str = "kernel",
                 migration: bool = False):
        tb.require(Feature.GATEWAYS)
        d = tb.description
        self.tb, self.sites = tb, list(sites or d.sites)
        if unknown := [s for s in self.sites if s not in d.sites]:
            raise UserError(f"unknown site(s) {', '.join(unknown)}: this testbed has {', '.join(d.sites)}")
        if len(self.sites) < 2:
            raise UserError("ViNe joins sites: name at least two")
        self.lndt = {s: list((lndt or {}).get(s, [str(d.site_subnet(s))])) for s in self.sites}
        self.networks = {s: list((networks or {}).get(s, [str(d.site_subnet(s))])) for s in self.sites}
        self.home = home or HOME / "vine"
        if dataplane not in DATAPLANES:
            raise UserError(f"unknown ViNe data plane {dataplane!r}: use one of {', '.join(DATAPLANES)}")
        self.dataplane, self.migration = dataplane, migration

    @classmethod
    def attach(cls, tb: Testbed, home: Path | None = None) -> "Overlay":
        """The overlay whose VRs run (or were left) on this testbed."""
        home = home or HOME / "vine"
        sites = [s for s in tb.description.sites if (home / s / "pid").exists()]
        if len(sites) < 2:
            raise UserError("ViNe is not up: invoke vine-up")
        return cls(tb, sites, home=home)

    def one_subnet(self) -> str:
        """The routing optimisation's subnet (thesis §5.5.4): the smallest network holding every
        site's, on which hosts may be configured; each site keeps its own part, and the VRs
        answer ARP for the others'."""
        return spanning([self.tb.description.site_subnet(s) for s in self.sites])

    def run_dir(self, site: str) -> Path:
        return self.home / site

    def start(self) -> "Overlay":
        """Every VR up and knowing every other's record; on failure none is left running."""
        work_dir(self.home)
        self.stop()                                   # what a killed overlay left
        secret = self.home / "secret"
        write_atomic(secret, secrets.token_hex(32), 0o600)
        gateways = {s: self.tb.gateway(s) for s in self.sites}
        try:
            for k, site in enumerate(self.sites, 1):
                run = self.run_dir(site)
                run.mkdir(mode=0o700, exist_ok=True)
                (run / "events.jsonl").unlink(missing_ok=True)
                cfg = {"vr": site, "index": k, "address": gateways[site][0], "lan": LAN,
                       "lan_address": str(self.tb.description.site_gateway(site)), "port": PORT,
                       "secret_file": str(secret), "peers": {s: g[0] for s, g in gateways.items()},
                       "networks": self.networks[site], "lndt": self.lndt[site], "run": str(run),
                       "dataplane": self.dataplane, "migration": self.migration}
                write_atomic(run / "config.json", json.dumps(cfg, indent=1), 0o600)
                with open(run / "vr.log", "ab") as log:
                    proc = subprocess.Popen(gateways[site][1] + [sys.executable, "-m", "g5kdeploy.vine.router",
                                                                 str(run / "config.json")],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, cwd=ROOT)
                write_atomic(run / "pid", str(proc.pid))
            self.wait_converged()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_converged(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until every VR holds every other's newest record."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                shown = {s: self.ask(s, "show") for s in self.sites}
                newest = {s: shown[s]["records"][s]["seq"] for s in self.sites}
                if all(v["records"].get(s, {}).get("seq") == seq for v in shown.values() for s, seq in newest.items()):
                    return
            except (OSError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                tails = {s: (self.run_dir(s) / "vr.log").read_text()[-300:] for s in self.sites
                         if (self.run_dir(s) / "vr.log").exists()}
                raise RuntimeError(f"ViNe routers did not converge in {timeout:.0f} s: {tails}")
            time.sleep(0.1)

    def ask(self, site: str, op: str, entry: str | None = None) -> dict:
        """One request to a site's VR (show, add-host, remove-host, add-network, remove-network)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.run_dir(site) / "control.sock"))
            s.sendall(json.dumps({"op": op, **({"entry": entry} if entry else {})}).encode() + b"\n")
            out = json.loads(s.makefile("rb").readline())
        if out.get("ok") is False:
            raise ValueError(f"VR {site}: {out['error']}")
        return out

    def events(self, site: str) -> list[dict]:
        path = self.run_dir(site) / "events.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def stop(self) -> None:
        """SIGTERM each VR (it removes its data plane) and wait for it; SIGKILL after 10 s."""
        for site in self.sites:
            pidfile = self.run_dir(site) / "pid"
            if not pidfile.exists():
                continue
            pid = int(pidfile.read_text())
            if _is_router(pid):
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while _is_router(pid) and time.monotonic() < deadline:
                    _reap(pid)
                    time.sleep(0.05)
                if _is_router(pid):
                    os.kill(pid, signal.SIGKILL)
                _reap(pid)
            # whatever a VR that did not stop by itself left (it was killed, or crashed)
            subprocess.run(self.tb.gateway(site)[1] + [sys.executable, "-c", "from g5kdeploy.vine import dataplane; "
                                                       f"dataplane.down({LAN!r})"], cwd=ROOT, check=True)
            pidfile.unlink()

    def __enter__(self) -> "Overlay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _is_router(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"g5kdeploy.vine.router" in cmdline and state != "Z"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
