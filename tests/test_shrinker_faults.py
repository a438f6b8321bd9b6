"""Shrinker under faults, on a testbed with two destination hypervisors: a peer serving
corrupted chunks, the destination index restarted mid-migration, the source agent killed;
and stock QEMU's migrations checked as Shrinker's are (RAM equal at the stop) at the low
per-guest rate where QEMU 7.2 under TCG used to lose writes."""
import threading

import pytest

from conftest import ROOT, own_testbed
from g5kdeploy import REDIS_CLI, remote
from g5kdeploy.shrinker import cluster
from g5kdeploy.testbed import description
from g5kdeploy.vm import image

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def testbed():
    with own_testbed(description.load(ROOT / "tests" / "faults.toml")) as tb:
        yield tb


@pytest.fixture(scope="module")
def sites(testbed):
    res = testbed.reserve({"rennes": 2, "nancy": 3}, walltime="0:30", name="shrinker-faults")
    testbed.deploy(res.nodes)
    src, dst = cluster.sides(res.nodes, "rennes", "nancy")
    cluster.configure(src, dst, image.build())
    yield src, dst
    testbed.release(res)


@pytest.fixture
def guests(sites):
    src, dst = sites
    cluster.flush_redis(src, dst)
    plans = cluster.plan_cluster(src, dst, 2, "f")
    with cluster.guests_running(plans, "idle", 128, 32, 4):
        yield plans


def redis_keys(node) -> int:
    r = remote.run(f"{REDIS_CLI} -p 6379 dbsize", [node])[0]
    return int(r.stdout.strip() or 0)


def wait_until(condition, timeout=60):
    import time
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def in_background(fn):
    out = {}

    def target():
        try:
            out["value"] = fn()
        except Exception as e:      # checked by the test
            out["error"] = e
    t = threading.Thread(target=target)
    t.start()
    return t, out


def test_the_sites_redis_wants_its_password(sites):
    src, dst = sites
    for side, other in ((src, dst), (dst, src)):
        probe = f"redis-cli -h {side.redis.address} ping 2>&1; {REDIS_CLI} -h {side.redis.address} ping 2>&1"
        mine, theirs = remote.run(probe, [side.vmms[0]])[0].stdout.split(), \
            remote.run(probe, [other.vmms[0]])[0].stdout
        assert mine[0].startswith("NOAUTH") and mine[-1] == "PONG"      # its VMMs have the password
        assert "PONG" not in theirs                                     # the other site's do not


def test_a_peer_serving_corrupted_chunks_is_caught(sites, guests):
    src, dst = sites
    assert guests[0].destination != guests[1].destination          # they are each other's peers
    with cluster.agents_running(dst, "--corrupt-every", 5):
        reports = cluster.migrate(guests, "shrinker", src, dst)
    assert sum(r["destination"].get("corrupt", 0) for r in reports) > 0
    assert all(c["runs_at_destination"] and c["source_gone"] for c in cluster.check(guests))


def test_index_restarted_mid_migration_still_migrates_correctly(sites, guests):
    src, dst = sites
    with cluster.agents_running(dst):
        t, out = in_background(lambda: cluster.migrate(guests, "shrinker", src, dst))
        wait_until(lambda: redis_keys(src.redis) > 0)                   # the migration is under way
        restart = remote.run(f"{REDIS_CLI} -p 6379 shutdown nosave; redis-server /etc/redis/g5kdeploy.conf",
                             [dst.redis])
        assert restart.ok, restart.summary()
        t.join(300)
    assert "error" not in out, out.get("error")                     # RAM verified equal at the stop
    assert all(c["runs_at_destination"] and c["source_gone"] for c in cluster.check(guests))


def test_killed_source_agent_fails_cleanly(sites, guests):
    src, dst = sites
    victim = guests[0]
    with cluster.agents_running(dst):
        t, out = in_background(lambda: cluster.migrate(guests, "shrinker", src, dst))
        wait_until(lambda: redis_keys(src.redis) > 0)
        agent = f"^/usr/bin/python3 -m g5kdeploy.shrinker.source --guest {victim.id} "   # not its ssh/sh parents
        pid = remote.run(f"pgrep -f '{agent}'", [victim.source])[0].stdout.split()
        assert len(pid) == 1, f"the source agent was not found: {pid}"
        remote.run(f"kill -9 {pid[0]}", [victim.source])
        t.join(300)
    assert "error" in out and victim.source.short in str(out["error"])
    def ticks() -> int:
        return remote.run_module(victim.source, "g5kdeploy.shrinker.vmm", "ticks", "--id", victim.id)["tick"]
    first = ticks()
    wait_until(lambda: ticks() > first, timeout=10)                 # the guest goes on at the source
    left = remote.run("ls /var/lib/g5kdeploy/vms /dev/shm", [victim.destination])[0].stdout
    assert victim.id not in left                                    # nothing left at the destination


def test_a_ram_that_differs_at_the_stop_leaves_the_guest_running_at_the_source(sites, guests):
    src, dst = sites
    victim = guests[0]
    with cluster.agents_running(dst, "--corrupt-snapshot"):        # the destination's copy "differs"
        with pytest.raises(RuntimeError, match="differed from the source RAM"):
            cluster.migrate(guests, "shrinker", src, dst)

    def ticks() -> int:
        return remote.run_module(victim.source, "g5kdeploy.shrinker.vmm", "ticks", "--id", victim.id)["tick"]
    first = ticks()
    wait_until(lambda: ticks() > first, timeout=10)                 # resumed at the source, not lost
    left = remote.run("ls /var/lib/g5kdeploy/vms /dev/shm", [victim.destination])[0].stdout
    assert victim.id not in left                                    # the destination's copy is gone


def test_the_destination_qemu_listens_on_its_node_address_only(sites, guests):
    g = guests[0]
    remote.run_module(g.destination, "g5kdeploy.shrinker.vmm", "incoming", "--id", g.id,
                      "--address", g.destination.address, "--port", 7899, "--ignore-shared")
    listening = remote.run("ss -Hltn 'sport = :7899'", [g.destination])[0].stdout.split()
    assert f"{g.destination.address}:7899" in listening and "0.0.0.0:7899" not in listening


def test_stock_migrations_at_a_low_rate_keep_every_write(testbed, sites):
    src, dst = sites
    plans = cluster.plan_cluster(src, dst, 2, "m")
    testbed.shape("rennes", "nancy", "25mbit")           # 12.5 Mbit/s a guest
    try:
        with cluster.guests_running(plans, "memory", 128, 16, 0):
            reports = cluster.migrate(plans, "stock", src, dst)
            checks = cluster.check(plans)
    finally:
        testbed.shape("rennes", "nancy", "100mbit")
    assert [r["status"] for r in reports] == ["completed"] * 2
    assert [r["ram_verified"] for r in reports] == [True, True]      # the twin's RAM before it ran = the source's
    assert all(r["settle_copy_s"] > 0 and len(r["ram_digest"]) == 64 for r in reports)
    assert all(c["runs_at_destination"] and c["source_gone"] for c in checks)
