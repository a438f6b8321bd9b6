"""ViNe's live-migration support on the small testbed: a guest on rennes's network, migrated
by stock QEMU to a VMM in nancy, keeps its TCP counter to a client VM in rennes (left behind)
and one in nancy (at the destination) and answers both client VMs' pings, with the support
on; the VRs record the detection and the reconfiguration; with the support off the client
VM left behind loses the guest. With the VMs on one subnet spanning both sites (the routing
optimisation), the guest and the nancy client VM reach each other through the VRs' proxy ARP
before the move, and directly at layer 2 after it. Nothing is left: no VR, proxy entry,
host route, guest, client VM or watcher."""
import math
from pathlib import Path

import pytest

from conftest import drawn, own_testbed
from experiments import vine_migration
from g5kdeploy import engine, remote
from g5kdeploy.results import load
from g5kdeploy.testbed.local import network
from g5kdeploy.testbed.local.system import sh
from g5kdeploy.vine import dataplane

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def run(small_description):
    with own_testbed(small_description) as tb:
        run = engine.execute(vine_migration.EXPERIMENT, tb, {"methods": ["stock"], "support": ["on", "off"],
                                                             "routing": ["site", "one-subnet"],
                                                             "warmup_s": 2, "after_s": 3, "bulk_s": 1})
        left = {}
        for site in ("rennes", "nancy"):
            ns = network.router(site)
            left[site] = (sh("ip", "-n", ns, "neigh", "show", "proxy").stdout.strip(),
                          sh("ip", "-n", ns, "route", "show", "proto", dataplane.PROTO).stdout.strip(),
                          sh("ip", "-n", ns, "link", "show", dataplane.DEV, check=False).returncode == 0,
                          sh("ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.conf.br0.proxy_arp").stdout.strip())
        nodes = tb.nodes()
        left["processes"] = [r.stdout.strip() for r in remote.run(
            "pgrep -af '[q]emu-system|[g]5kdeploy.vine' || true", list(nodes))]
        left["routers"] = [p for p in Path("/proc").glob("[0-9]*") if b"g5kdeploy.vine.router" in _cmdline(p)]
        yield run, load(run.dir), left


def _cmdline(p: Path) -> bytes:
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""


def trial(df, support, routing="site"):
    return df[(df.support == support) & (df.routing == routing)]


def test_with_the_support_every_connection_survives_the_move(run):
    _, df, _ = run
    on = trial(df, "on")
    m = on[on.level == "migration"].iloc[0]
    assert m.outcome == "ok" and m.runs_at_destination and 0 < m.downtime_s < m.total_time_s
    c = on[on.level == "connection"].set_index("client_site")
    assert sorted(c.index) == ["nancy", "rennes"]
    assert c.survived.all() and (c.skipped == 0).all() and (c.ended == "open").all()
    assert (c.stream_gap_s < m.total_time_s + 5).all() and c.ping_gap_s.map(math.isfinite).all()
    assert (c.bulk_after_mbit > 0).all() and (c.bulk_before_mbit > 0).all()


def test_the_vrs_detect_the_migration_and_reconfigure_the_overlay(run):
    _, df, _ = run
    on = trial(df, "on")
    m = on[on.level == "migration"].iloc[0]
    assert 0 < m.detection_s < 5 and 0 < m.reconfiguration_s < 5
    ev = on[on.level == "vr_event"]
    seen = set(zip(ev.vr, ev.event))
    assert {("nancy", "rarp"), ("nancy", "detected"), ("nancy", "arrived"), ("nancy", "redirected"),
            ("rennes", "left")} <= seen
    assert set(ev[ev.event.isin(["detected", "arrived", "left"])].ip) == {ev[ev.event == "detected"].ip.iloc[0]}


def test_without_the_support_the_client_left_behind_loses_the_guest(run):
    _, df, _ = run
    off = trial(df, "off")
    m = off[off.level == "migration"].iloc[0]
    assert m.outcome == "ok" and m.runs_at_destination          # the migration itself succeeded
    c = off[off.level == "connection"].set_index("client_site")
    assert not c.loc["rennes", "survived"] and math.isnan(c.loc["rennes", "bulk_after_mbit"])
    assert c.loc["rennes", "bulk_before_mbit"] > 0                 # reached before
    ev = off[off.level == "vr_event"]
    assert not ev.event.isin(["detected", "arrived", "left"]).any()


def test_on_one_subnet_the_guest_talks_to_its_new_neighbours_directly(run):
    _, df, _ = run
    c = {g: trial(df, "on", g)[lambda x: x.level == "connection"].set_index("client_site") for g in ("site",
                                                                                                   "one-subnet")}
    one = c["one-subnet"]
    assert one.survived.all() and (one.skipped == 0).all()
    assert (one.bulk_before_mbit > 0).all()        # nancy's client reached rennes's guest through the VRs' proxy ARP
    assert one.loc["nancy", "through_destination_vr"] < 0.1 < 0.9 < c["site"].loc["nancy", "through_destination_vr"]
    assert (one.loc["rennes", "through_destination_vr"] > 0.9) and one.loc["nancy", "bulk_after_mbit"] > 0
    told = {g: trial(df, "on", g)[lambda x: (x.level == "vr_event") & (x.event == "redirected")].direct.iloc[0]
            for g in ("site", "one-subnet")}
    assert told == {"site": 0, "one-subnet": 1}         # the nancy client, told to the guest at its own MAC


def test_each_trial_has_its_timeline_figure(run, tmp_path):
    r, df, _ = run
    figs = drawn(vine_migration.EXPERIMENT, r.dir, tmp_path)
    assert sorted(figs) == ["vine-migration-stock-off-one-subnet-3.png", "vine-migration-stock-off-site-1.png",
                            "vine-migration-stock-on-one-subnet-2.png", "vine-migration-stock-on-site-0.png"]
    assert all(len(axes) == 2 for axes in figs.values())
    t = df[df.level == "timeline"]
    assert (t.groupby(["trial", "client_site"]).lines.sum() > 100).all()


def test_nothing_of_a_trial_is_left(run):
    _, _, left = run
    assert left.pop("processes") == [""] * 5 and left.pop("routers") == []
    assert all(v == ("", "", False, "0") for v in left.values()), left
