"""vine-migration: a guest on its site's network migrates to another site's and keeps its connections (ViNe, ch. 5).

The guest is live-migrated to a VMM of another site while a client VM in the source site
(on the source VMM: it stays behind), one in the destination site (on the destination VMM)
and (with `third`) one in a third site read a TCP counter from it and ping it every 10 ms.
ViNe joins the sites; its live-migration support (g5kdeploy.vine.migration) is on or off:
nothing in the migration tells ViNe, the destination QEMU's announcement is all it sees.

Each trial (method x support x routing x repeat) gets a fresh ViNe, fresh client VMs, a fresh
guest (its address in the source site's network, its MAC from the address) and its twin
waiting at the destination. `routing` is how the guest and the client VMs are configured:
`site`, on their site's subnet (what is off it goes through their VR); `one-subnet`, on one
subnet spanning the sites (the routing optimisation, thesis §5.5.4: the VRs answer ARP for
the other sites' parts, and after the move the guest and its new neighbours talk directly at
layer 2). The client VMs' VMMs time what they see (g5kdeploy.vine.watch).

Rows, by `level`, each with trial, repeat, method, support, routing:
  migration: total_time_s, downtime_s (QEMU's run-state trace), detection_s (the destination
    VR: RARP seen -> the guest's IP known), reconfiguration_s (IP known -> every other VR holds
    the /32), runs_at_destination, outcome (ok|failed), error
  connection (one per client VM): client_site, survived (the counter went on after the migration
    without a skipped number), ended (open|closed|reset|error), skipped, stream_gap_s (the
    longest silence of the counter from the migration's start), ping_gap_s (the same for
    ping answers), rtt_before_ms / rtt_after_ms (median), bulk_before_mbit / bulk_after_mbit
    (the guest's bulk stream, read alone for `bulk_s`; NaN when unreachable),
    through_destination_vr (bytes the destination VR received from its LAN during the read
    after, per byte read: about 1 routed through it, about 0 direct at layer 2)
  timeline (per client and 100 ms bin, time from the migration's start): t, lines, pings, rtt_ms
  vr_event: vr, event, t (from the migration's start), ip, direct (`redirected`: how many of
    the guest's hosts were told to it at their own MAC, on the destination's LAN)"""
from __future__ import annotations

import ipaddress
import json
import math
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass

from g5kdeploy import on_node, remote
from g5kdeploy.engine import Experiment, param, reserved, stage, sweep
from g5kdeploy.errors import UserError
from g5kdeploy.results import Run, pyplot, save_figure
from g5kdeploy.shrinker import cluster
from g5kdeploy.testbed import Feature, Testbed
from g5kdeploy.vine.overlay import Overlay

SUPPORT = ("on", "off")
METHODS = ("stock", "shrinker")
ROUTING = ("site", "one-subnet")
BIN_S = 0.1
WATCH = "/tmp/g5kdeploy-watch"          # on each client VM's VMM: the watcher's output and pid


@dataclass(frozen=True)
class Params:
    source: str = param("rennes", "site the guest starts on (its network)")
    destination: str = param("nancy", "site it migrates to")
    third: str = param("", "a third site with a client VM (none: '')")
    methods: list[str] = param(["stock"], ", ".join(METHODS))
    support: list[str] = param(["on", "off"], "ViNe's live-migration support: on, off")
    routing: list[str] = param(["site"], "the hosts' subnet: site (their site's), one-subnet (one spanning "
                                         "the sites: the routing optimisation)")
    repeats: int = param(1, "repeats of the grid")
    memory_mb: int = param(128, "RAM of the guest and of each client VM")
    warmup_s: float = param(3.0, "seconds the client VMs watch before the migration")
    after_s: float = param(4.0, "seconds they watch after it")
    bulk_s: int = param(2, "seconds of each bulk-throughput read (whole)")
    walltime: str = param("1:00", "OAR walltime, H:MM")
    FULL = {"methods": ["stock", "shrinker"], "routing": ["site", "one-subnet"], "repeats": 3}


def sites(p: Params) -> list[str]:
    return [p.source, p.destination] + ([p.third] if p.third else [])


class VineMigration(Experiment):
    name = "vine-migration"
    Params = Params

    def request(self, p: Params, testbed: Testbed) -> dict[str, int]:
        return {p.source: 2, p.destination: 2, **({p.third: 1} if p.third else {})}   # Redis + VMM; client VMM

    def needs(self, p: Params) -> set:
        return {Feature.GATEWAYS}

    def validate(self, p: Params, testbed: Testbed) -> None:
        self.known_sites(testbed, sites(p))
        if len(set(sites(p))) != len(sites(p)):
            raise UserError("source, destination and third must be different sites")
        self.one_of("method", p.methods, METHODS)
        self.one_of("support", p.support, SUPPORT)
        self.one_of("routing", p.routing, ROUTING)
        if not p.methods or not p.support or not p.routing:
            raise UserError("methods, support and routing each need a value")
        if p.bulk_s < 1:
            raise UserError(f"bulk_s={p.bulk_s}: give whole seconds, at least 1")
        try:
            Overlay.attach(testbed)
        except UserError:
            return
        raise UserError("ViNe is up (invoke vine-down): each trial starts its own, with the support on or off")

    def main(self, run: Run, testbed: Testbed, p: Params) -> None:
        failures = []
        with reserved(run, testbed, self.request(p, testbed), p.walltime, self.job_name) as res:
            third = {res.nodes.by_site()[p.third][0]: "vine-client"} if p.third else {}
            src, dst = cluster.prepare(testbed, res.nodes, p.source, p.destination, run.dir / "logs", third,
                                       around=lambda step: stage(run, step))
            hosts = {p.source: src.vmms[0], p.destination: dst.vmms[0], **{p.third: n for n in third}}
            grid = [dict(method=m, support=s, routing=g, repeat=r) for r in range(p.repeats) for m in p.methods
                    for g in p.routing for s in p.support]
            sweep(run, grid, lambda t: failures.extend(
                _trial(run, testbed, src, dst, hosts, grid.index(t), t, p)),
                name=lambda t: f"trial {t['method']} support {t['support']} routing {t['routing']} #{t['repeat']}")
        if failures:
            raise RuntimeError("failed trials: " + "; ".join(failures))

    def summary(self, rows) -> list[str]:
        out = []
        m, c = rows[rows.level == "migration"], rows[rows.level == "connection"]
        for (method, support, routing), g in m.groupby(["method", "support", "routing"]):
            cg = c[(c.method == method) & (c.support == support) & (c.routing == routing)]
            line = (f"{method:8} support {support:3} routing {routing:10}: migration {g.total_time_s.median():5.1f} s, "
                    f"downtime {g.downtime_s.median() * 1000:5.0f} ms")
            if support == "on":
                line += (f", detection {g.detection_s.median() * 1000:5.0f} ms, reconfiguration "
                         f"{g.reconfiguration_s.median() * 1000:5.0f} ms")
            out.append(line)
            for site, x in cg.groupby("client_site"):
                out.append(f"    client in {site:8}: survived {int(x.survived.sum())}/{len(x)}, longest stream gap "
                           f"{x.stream_gap_s.median():5.2f} s, ping gap {x.ping_gap_s.median():5.2f} s, bulk "
                           f"{x.bulk_before_mbit.median():6.1f} -> {x.bulk_after_mbit.median():6.1f} Mbit/s, "
                           f"{x.through_destination_vr.median():4.2f} of it through the destination VR")
        return out

    def figures(self, df, outdir) -> list:
        """Per trial, one panel per client: the counter's lines and the ping round trips per 100
        ms across the migration, its start and end and the VRs' events marked."""
        plt = pyplot()
        t, m, ev = df[df.level == "timeline"], df[df.level == "migration"], df[df.level == "vr_event"]
        paths = []
        for trial, tt in t.groupby("trial"):
            mig = m[m.trial == trial].iloc[0]
            clients = sorted(tt.client_site.unique())
            fig, axes = plt.subplots(len(clients), 1, figsize=(9, 2.4 * len(clients)), sharex=True, squeeze=False)
            for ax, site in zip(axes[:, 0], clients):
                x = tt[tt.client_site == site].sort_values("t")
                ax.plot(x.t, x.lines, label="counter lines / 100 ms")
                ax.plot(x.t, x.rtt_ms, label="ping RTT (ms)")
                ax.axvspan(0, mig.total_time_s, alpha=0.15, label="migration")
                for _, e in ev[(ev.trial == trial) & ev.event.isin(["detected", "arrived", "left"])].iterrows():
                    ax.axvline(e.t, ls=":", lw=0.8)
                ax.set(ylabel=f"client in {site}")
            axes[0, 0].legend(fontsize=7, loc="upper right")
            axes[-1, 0].set(xlabel="time from the migration's start (s)")
            fig.suptitle(f"{mig.method}, live-migration support {mig.support}, routing {mig.routing}")
            paths.append(save_figure(fig, outdir / f"vine-migration-{mig.method}-{mig.support}-{mig.routing}-"
                                                   f"{int(trial)}.png"))
        return paths


def _trial(run: Run, testbed: Testbed, src, dst, hosts: dict, k: int, t: dict, p: Params) -> list[str]:
    d = testbed.description
    overlay = Overlay(testbed, sites(p), migration=t["support"] == "on")
    one = overlay.one_subnet() if t["routing"] == "one-subnet" else None

    def nic(site: str, index: int) -> tuple[str, str]:
        """An address of `site`'s network (on the spanning subnet with one-subnet) and its gateway."""
        net = ipaddress.ip_network(d.site_subnet(site))
        return f"{net[index]}/{ipaddress.ip_network(one or net).prefixlen}", d.site_gateway(site)
    plan = cluster.GuestPlan(f"vm{k}", src.vmms[0], dst.vmms[0], nic(p.source, 200 + k % 50))
    ip = plan.address
    clients = {s: cluster.GuestPlan(f"c{k}{s}", host, None, nic(s, 150 + k % 50), peer=ip) for s, host in hosts.items()}
    common = dict(trial=k, repeat=t["repeat"], method=t["method"], support=t["support"], routing=t["routing"])
    agents = t["method"] == "shrinker"            # Shrinker's destination agents, and its Redis
    with overlay:
        if agents:
            cluster.flush_redis(src, dst)
        with cluster.guests_running([plan], "idle", p.memory_mb, 0, 0), \
                cluster.guests_running(list(clients.values()), "client", p.memory_mb, 0, 0):
            before = {s: _bulk(c, p.bulk_s)[0] for s, c in clients.items()}
            _watching(clients.values())
            try:
                time.sleep(p.warmup_s)
                with cluster.agents_running(dst) if agents else nullcontext():
                    t0 = time.time()
                    try:
                        cluster.migrate([plan], t["method"], src, dst)
                        error = ""
                    except RuntimeError as e:
                        error = str(e)[:1000]
                    t1 = time.time()
                try:
                    check = cluster.check([plan])[0] if not error else {}
                except RuntimeError as e:
                    check, error = {}, str(e)[:1000]
                time.sleep(p.after_s)
            finally:
                seen = _watched(clients)
            after = {s: _bulk_through(overlay, p.destination, c, p.bulk_s) for s, c in clients.items()}
        events = [e for s in overlay.sites for e in overlay.events(s) if e["t"] >= t0 - 1]
    detection, reconfiguration = _vr_times(events, ip, p.destination, [s for s in sites(p) if s != p.destination])
    ok = not error and check.get("runs_at_destination", False)
    run.row(**common, level="migration", total_time_s=round(t1 - t0, 4), downtime_s=check.get("downtime_s"),
            detection_s=detection, reconfiguration_s=reconfiguration,
            runs_at_destination=check.get("runs_at_destination", False), outcome="ok" if ok else "failed", error=error)
    for e in events:
        run.row(**common, level="vr_event", vr=e["vr"], event=e["event"], t=round(e["t"] - t0, 4),
                ip=e.get("ip", ""), direct=len(e.get("direct", [])))
    for site, w in seen.items():
        run.row(**common, level="connection", client_site=site, **_connection(w, t0, t1),
                bulk_before_mbit=before[site], bulk_after_mbit=after[site][0], through_destination_vr=after[site][1])
        for row in _timeline(w, t0):
            run.row(**common, level="timeline", client_site=site, **row)
    return [] if ok else [f"trial {k}: {error or 'the guest does not run at the destination'}"]


def _bulk(client: cluster.GuestPlan, seconds: int) -> tuple[float, int]:
    """Mbit/s of the guest's bulk stream read by a client VM, and the bytes read; (NaN, 0)
    when it read nothing (the guest unreachable)."""
    try:
        out = remote.run_module(client.source, "g5kdeploy.vine.watch", "bulk", client.address, seconds,
                                timeout=seconds + 60)
    except RuntimeError:
        return math.nan, 0
    return (round(out["bytes_per_s"] * 8 / 1e6, 2) if out["bytes"] else math.nan), out["bytes"]


def _bulk_through(overlay: Overlay, site: str, client: cluster.GuestPlan, seconds: int) -> tuple[float, float]:
    """_bulk's Mbit/s, and the bytes `site`'s VR received from its LAN meanwhile per byte read
    (NaN when nothing was read)."""
    start = overlay.ask(site, "show")["lan_rx_bytes"]
    mbit, got = _bulk(client, seconds)
    share = (overlay.ask(site, "show")["lan_rx_bytes"] - start) / got if got else math.nan
    return mbit, round(share, 3)


def _watching(clients) -> None:
    """A counter watcher on each client VM's VMM, in the background."""
    for c in clients:
        w = f"{WATCH}-{c.id}"
        cmd = f"setsid {on_node('g5kdeploy.vine.watch')} counter {c.address} > {w}.json 2> {w}.log " \
              f"< /dev/null & echo $! > {w}.pid"
        for r in remote.run(cmd, [c.source]):
            if not r.ok:
                raise RuntimeError(f"starting a watcher: {r.error or r.stderr.strip()[-300:]}")


def _watched(clients: dict) -> dict:
    """Stop the watchers; what each saw."""
    out = {}
    for site, c in clients.items():
        w = f"{WATCH}-{c.id}"
        r = remote.run(f"kill $(cat {w}.pid); while kill -0 $(cat {w}.pid) 2> /dev/null; do sleep 0.05; done; "
                       f"cat {w}.json; rm -f {w}.json {w}.pid {w}.log", [c.source])[0]
        out[site] = json.loads(r.stdout) if r.ok and r.stdout.strip() else {"lines": [], "pings": [], "ended": "lost",
                                                                             "skipped": 0}
    return out


def _gap(times: list[float], since: float) -> float:
    """The longest silence in `times` from `since` on (to the last one)."""
    ts = [since] + sorted(x for x in times if x >= since)
    return round(max(b - a for a, b in zip(ts, ts[1:])), 4) if len(ts) > 1 else math.inf


def _connection(w: dict, t0: float, t1: float) -> dict:
    lines, pings = w["lines"], w["pings"]
    after = [x for x in lines if x > t1 + 0.5]
    rtt = lambda xs: round(statistics.median(xs), 3) if xs else math.nan      # noqa: E731
    return dict(survived=bool(after) and w["skipped"] == 0 and w["ended"] == "open", ended=w["ended"],
                skipped=w["skipped"], stream_gap_s=_gap(lines, t0) if after else math.inf,
                ping_gap_s=_gap([t for t, _ in pings], t0) if any(t > t1 + 0.5 for t, _ in pings) else math.inf,
                rtt_before_ms=rtt([r for t, r in pings if t < t0]), rtt_after_ms=rtt([r for t, r in pings if t > t1]))


def _timeline(w: dict, t0: float) -> list[dict]:
    first = min([*w["lines"], *(t for t, _ in w["pings"])], default=t0)
    last = max([*w["lines"], *(t for t, _ in w["pings"])], default=t0)
    bins = {}
    for k in range(math.floor((first - t0) / BIN_S), math.ceil((last - t0) / BIN_S) + 1):
        bins[k] = {"t": round(k * BIN_S, 3), "lines": 0, "pings": 0, "rtt": []}
    for x in w["lines"]:
        bins[math.floor((x - t0) / BIN_S)]["lines"] += 1
    for x, r in w["pings"]:
        b = bins[math.floor((x - t0) / BIN_S)]
        b["pings"] += 1
        b["rtt"].append(r)
    return [{"t": b["t"], "lines": b["lines"], "pings": b["pings"],
             "rtt_ms": round(statistics.median(b["rtt"]), 3) if b["rtt"] else math.nan} for b in bins.values()]


def _vr_times(events: list[dict], ip: str, destination: str, others: list[str]) -> tuple[float, float]:
    """Detection (RARP seen -> IP known, at the destination VR) and reconfiguration (IP known
    -> every other VR learned the destination's record that holds the /32); NaN if not seen."""
    found = [e for e in events if e["vr"] == destination and e["event"] == "detected" and e.get("ip") == ip]
    if not found:
        return math.nan, math.nan
    detected = found[0]
    changed = [e for e in events if e["vr"] == destination and e["event"] == "changed" and f"{ip}/32" in e["networks"]]
    learned = {}
    for e in events:
        if e["event"] == "learned" and e.get("of") == destination and changed and e["seq"] >= changed[0]["seq"]:
            learned.setdefault(e["vr"], e["t"])
    reconf = max(learned.values()) - detected["t"] if set(learned) >= set(others) else math.nan
    return round(detected["t"] - detected["rarp_t"], 4), round(reconf, 4)


EXPERIMENT = VineMigration()
