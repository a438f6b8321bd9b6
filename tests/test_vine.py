"""Two firewalled Grid'5000 sites and a FutureGrid site behind NAT, brought up by `invoke
testbed-up` with the FutureGrid site's cloud; ViNe on them: without the
overlay no site reaches another's hosts; with it every host of an LNDT reaches every other
by its private address (ICMP and TCP), a host missing from its VR's LNDT is refused,
traffic within a site never reaches its VR, a GNDT change made on one VR reaches the
others at run time, and stopping it leaves no tunnel, route, rule, neighbour, nftables
table or process. The sky BLASTx on instances of the three sites' clouds (the scheduler in
the FutureGrid one, behind NAT; the workers in the firewalled ones), through the ViNe the
run starts, finds the sequential hits and leaves nothing. (Instances asked mid-run, and
lost, are the experiment's and the benchmark's: under TCG a guest booting beside the
running ones takes minutes of the suite.)"""
import json
from pathlib import Path

import pytest

from conftest import ROOT, invoke, make_room
from experiments import blastx_sky
from g5kdeploy import engine, remote
from g5kdeploy.results import events, load
from g5kdeploy.sky import platform as sky
from g5kdeploy.nimbus import deploy
from g5kdeploy.testbed.local import LocalTestbed, leftovers, network
from g5kdeploy.testbed.local.system import sh
from g5kdeploy.vine import dataplane
from g5kdeploy.vine.overlay import Overlay

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def testbed():
    make_room()
    up = invoke("testbed-up", "--description", str(ROOT / "tests" / "sky-small.toml"), "--guests", sky.IMAGE,
                timeout=1200)
    assert up.returncode == 0, up.stderr[-2000:]
    assert "FutureGrid cloud hotel: EC2 http://198.19.3.1:8773" in up.stdout
    yield LocalTestbed.attach()
    down = invoke("testbed-destroy")
    assert down.returncode == 0 and leftovers() == [] and not deploy.CLOUDS.exists(), down.stderr


def test_the_futuregrid_cloud_is_up_and_outlives_the_users_deployments(testbed):
    clouds = json.loads(deploy.CLOUDS.read_text())
    assert list(clouds) == ["hotel"] and clouds["hotel"]["kind"] == "futuregrid" and not clouds["hotel"]["oar_job"]
    assert {"tiny", sky.IMAGE} <= set(deploy.verify(clouds["hotel"]))
    refused = invoke("deploy-nimbus", "--sites", "hotel")
    assert refused.returncode == 2 and "site hotel is a FutureGrid cloud, up since testbed-up" in refused.stderr
    assert invoke("nimbus-destroy").returncode == 0
    assert json.loads(deploy.CLOUDS.read_text()) == clouds and deploy.verify(clouds["hotel"])


@pytest.fixture(scope="module")
def hosts(testbed):
    n = {x.short: x for x in testbed.nodes()}
    return n["paradent-1"], n["paradent-2"], n["graphene-1"], n["hotel-1"]


def reaches(src, dst) -> bool:
    """Whether `src` gets an answer from `dst` by ICMP and opens a TCP connection to its sshd."""
    r = remote.run(f"ping -c 2 -i 0.2 -W 1 {dst.address} > /dev/null && "
                   f"timeout 3 bash -c 'exec 3<> /dev/tcp/{dst.address}/22'", [src])[0]
    return r.ok


def vine_tx(tb, site) -> int:
    stats = json.loads(sh("ip", "-n", network.router(site), "-s", "-j", "link", "show", dataplane.DEV).stdout)
    return stats[0]["stats64"]["tx"]["packets"]


def test_without_vine_firewalled_and_nated_sites_cannot_be_reached(testbed, hosts):
    r1, _, g1, h1 = hosts
    assert not reaches(r1, g1) and not reaches(g1, r1)          # firewalled both ways: outbound only
    assert not reaches(r1, h1) and not reaches(h1, r1)          # private addresses behind NAT
    # out through the NAT: rennes's router has no route to hotel's private network, so its
    # answer reaches hotel-1 only because hotel's router put its own address on the request
    assert remote.run(f"ping -c 1 -W 2 {testbed.description.site_wan_address('rennes')}", [h1])[0].ok
    assert sh("ip", "-n", network.router("rennes"), "route", "get", h1.address, check=False).returncode != 0


def test_nobody_reserves_a_futuregrid_site_and_the_grid5000_api_does_not_list_it(testbed):
    from g5kdeploy.errors import UserError
    from g5kdeploy.testbed.local import g5k_api
    with pytest.raises(UserError, match="site hotel is a FutureGrid cloud: nobody reserves its nodes"):
        testbed.reserve({"hotel": 1}, walltime="0:05")
    assert sorted(sh("oarnodes", "-l").stdout.split()) == sorted(testbed.description.reservable().hostnames())
    assert "hotel-1.hotel.futuregrid.org" not in sh("oarnodes", "-l").stdout
    api = g5k_api.Api(testbed, "u", "p")
    assert [s["uid"] for s in api.sites()["items"]] == ["rennes", "nancy"]
    with pytest.raises(KeyError):
        api.cluster_nodes("hotel", "hotel")


CHUNKS = 24


@pytest.fixture(scope="module")
def sky_run(testbed):
    """Before the overlay fixture: the run starts (and stops) ViNe of its own."""
    run = engine.execute(blastx_sky.EXPERIMENT, testbed, {
        "workers_on": "instances", "scheduler_site": "hotel", "platforms": [{"rennes": 1, "nancy": 1}],
        "loss": None, "elastic": None,
        "proteins": 300, "queries": 240, "decoys": 60, "chunks": CHUNKS})
    clouds = json.loads(deploy.CLOUDS.read_text())
    hotel = deploy.client(clouds["hotel"])
    left = [i["InstanceId"] for r in hotel.describe_instances(Filters=[{"Name": f"tag:{sky.ROLE_TAG}",
                                                                        "Values": [run.run_id]}])["Reservations"]
            for i in r["Instances"] if i["State"]["Name"] not in ("shutting-down", "terminated")]
    keys = [k["KeyName"] for k in hotel.describe_key_pairs()["KeyPairs"] if k["KeyName"].startswith("sky-")]
    vrs = [p for p in Path("/proc").glob("[0-9]*") if b"g5kdeploy.vine.router" in _cmdline(p)]
    yield load(run.dir), left + keys + vrs, set(events(run.dir).stage)


def test_sky_blastx_on_instances_of_three_sites_finds_the_sequential_hits_through_vine(sky_run):
    df, _, stages = sky_run
    runs = df[df.level == "run"]
    assert runs.kind.tolist() == ["static"] and runs.hits_equal.all() and (runs.tasks == CHUNKS).all()
    assert df[df.level == "sequential"].host.tolist() == ["instance"]
    d = df[df.level == "data"].iloc[0]
    assert d.true_found >= 0.9 * d.true_total and d.decoys_hit == 0
    tasks = df[df.level == "task"]
    assert tasks.worker.str.match(r"^(rennes|nancy|hotel)/i-[0-9a-f]+$").all()
    assert set(tasks[tasks.kind == "static"].site) == {"rennes", "nancy"}     # firewalled, joined through ViNe
    ship = df[df.level == "ship"].iloc[0]
    assert ship.host.startswith("hotel/i-") and ship.bytes > 0                  # the scheduler's instance, behind NAT
    assert {"vine", "vine-down"} <= stages


def test_every_instance_was_booted_and_given_its_payload(sky_run):
    df, _, _ = sky_run
    booted = df[df.level == "instance"]
    assert sorted(booted.site) == ["nancy", "rennes", "rennes"] and (booted.error == "").all()
    assert ((booted.boot_s > 0) & (booted.ready_s >= booted.boot_s)).all()


def test_the_run_leaves_no_instance_key_pair_or_vr(sky_run):
    _, left, _ = sky_run
    assert left == []


@pytest.fixture(scope="module")
def overlay(testbed, hosts):
    r1, r2, _, _ = hosts
    d = testbed.description
    with Overlay(testbed, lndt={"rennes": [r1.address], "nancy": [str(d.site_subnet("nancy"))],
                                "hotel": [str(d.site_subnet("hotel"))]}) as o:
        yield o
    for site in d.sites:                                          # nothing of it is left
        ns = network.router(site)
        assert sh("ip", "-n", ns, "link", "show", dataplane.DEV, check=False).returncode != 0
        assert sh("ip", "-n", ns, "route", "show", "table", dataplane.TABLE).stdout.strip() == ""
        assert f"lookup {dataplane.TABLE}" not in sh("ip", "-n", ns, "rule", "show").stdout
        assert "vine" not in sh("ip", "netns", "exec", ns, "nft", "list", "tables").stdout
        assert sh("ip", "-n", ns, "neigh", "show", "nud", "permanent").stdout.strip() == ""
        assert not (o.run_dir(site) / "pid").exists()
    assert not [p for p in Path("/proc").glob("[0-9]*") if b"g5kdeploy.vine.router" in _cmdline(p)]


def _cmdline(p: Path) -> bytes:
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""


def test_every_lndt_host_reaches_every_other_by_its_private_address(testbed, hosts, overlay):
    r1, _, g1, h1 = hosts
    for a, b in ((r1, g1), (g1, r1), (r1, h1), (h1, r1), (g1, h1), (h1, g1)):
        assert reaches(a, b), (a.short, b.short)


def test_a_host_missing_from_its_lndt_is_refused_and_a_site_stays_off_the_vr(testbed, hosts, overlay):
    r1, r2, g1, _ = hosts
    assert not reaches(r2, g1)
    before = vine_tx(testbed, "rennes")
    assert reaches(r1, r2) and reaches(r2, r1)                    # intra-site: the site's switch only
    assert vine_tx(testbed, "rennes") == before
    overlay.ask("rennes", "add-host", r2.address)                  # the LNDT changed at run time
    assert reaches(r2, g1) and vine_tx(testbed, "rennes") > before
    overlay.ask("rennes", "remove-host", r2.address)
    assert not reaches(r2, g1)


def test_the_user_level_data_plane_keeps_the_same_semantics(testbed, hosts, overlay):
    """The original ViNe's kind of router (a TUN device and UDP between VRs), in place of the
    kernel's: the same reachability, the same refusal."""
    r1, r2, g1, h1 = hosts
    overlay.stop()
    d = testbed.description
    try:
        with Overlay(testbed, lndt={"rennes": [r1.address], "nancy": [str(d.site_subnet("nancy"))],
                                    "hotel": [str(d.site_subnet("hotel"))]}, dataplane="user"):
            assert reaches(r1, h1) and reaches(h1, g1) and reaches(g1, r1)
            assert not reaches(r2, g1)
    finally:
        overlay.start()


def test_a_gndt_change_on_one_vr_reaches_the_others(testbed, overlay):
    entry = "198.19.9.0/24"
    seq = overlay.ask("nancy", "add-network", entry)["seq"]
    overlay.wait_converged()
    for site in ("rennes", "hotel"):
        shown = overlay.ask(site, "show")
        assert shown["gndt"][entry] == "nancy" and shown["records"]["nancy"]["seq"] == seq
        assert entry in sh("ip", "-n", network.router(site), "route", "show", "table", dataplane.TABLE).stdout
        learned = [e for e in overlay.events(site) if e["event"] == "learned" and e["seq"] == seq]
        assert len(learned) == 1
    overlay.ask("nancy", "remove-network", entry)
    overlay.wait_converged()
    assert entry not in sh("ip", "-n", network.router("rennes"), "route", "show", "table", dataplane.TABLE).stdout
    with pytest.raises(ValueError, match="does not appear to be"):
        overlay.ask("nancy", "add-network", "not-a-network/8")
