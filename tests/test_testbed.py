"""The local testbed at work: OAR reservations, ssh, reimage, shaping, remote execution."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, drawn, invoke, own_testbed
from g5kdeploy import engine
from g5kdeploy import remote
from g5kdeploy.errors import UserError
from g5kdeploy.remote import probe

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def tb(small_description):
    with own_testbed(small_description) as testbed:
        yield testbed


def _active_jobs(tb) -> dict:
    return tb.scheduler.jobs()


def test_reserve_gives_exactly_the_nodes_oar_assigned(tb):
    res = tb.reserve({"rennes": 2, "nancy": 1}, walltime="0:05", name="test-reserve")
    try:
        assert [n.site for n in res.nodes].count("rennes") == 2 and len(res.nodes) == 3
        assigned = set()
        for site, job in res.jobs.items():
            st = tb.scheduler.status(job)
            assert st["state"] == "Running" and st["name"] == "test-reserve" and "deploy" in st["types"]
            assert {h.split(".")[1] for h in st["assigned_network_address"]} == {site}
            assigned |= set(st["assigned_network_address"])
        assert assigned == set(res.nodes.hostnames())
        out = remote.run("hostname", res.nodes)
        assert out.failed == [] and {r.host: r.stdout.strip() for r in out} == {h: h for h in assigned}
        # plain ssh from the frontend, and between nodes across sites
        first, last = res.nodes[0].hostname, res.nodes[-1].hostname
        p = subprocess.run(["ssh", first, "ssh", last, "hostname"], capture_output=True, text=True, timeout=30)
        assert p.stdout.strip() == last, p.stderr
    finally:
        tb.release(res)
    assert not set(map(int, _active_jobs(tb))) & set(res.jobs.values())


def test_deploy_wipes_the_private_layer(tb):
    a, b = tb.nodes("paradent-[1-2].rennes")
    assert remote.run("echo hello > /root/marker", a).failed == []
    assert remote.run("cat /root/marker", a)[0].stdout == "hello\n"
    assert not remote.run("test -e /root/marker", b)[0].ok          # private to its node
    assert not (tb.workdir / "nodes" / b.short / "upper" / "root" / "marker").exists()
    assert remote.run("cat /root/marker", a)[0].ok                  # survives until deploy
    outcome = tb.deploy([a])
    assert outcome[a.hostname].ok, outcome
    assert remote.run("test -e /root/marker", a)[0].exit_code == 1   # gone after reimage
    assert remote.run("hostname", a)[0].stdout.strip() == a.hostname


def test_inter_site_rate_within_20_percent_and_intra_site_faster(tb):
    r1, r2 = tb.nodes("paradent-[1-2].rennes")
    n1 = tb.nodes("graphene-1.nancy")[0]
    inter = probe.throughput(r1, n1, seconds=2)
    back = probe.throughput(n1, r1, seconds=2)
    intra = probe.throughput(r1, r2, seconds=2)
    assert 0.8 * 100e6 <= inter <= 1.2 * 100e6
    assert 0.8 * 100e6 <= back <= 1.2 * 100e6
    assert intra > 3 * inter


def test_shape_changes_the_wan_rate(tb):
    r1, n1 = tb.nodes("paradent-1.rennes")[0], tb.nodes("graphene-1.nancy")[0]
    tb.shape("rennes", "nancy", "20mbit")
    try:
        assert tb.rates()["wan"]["nancy|rennes"] == 20_000_000
        assert 0.8 * 20e6 <= probe.throughput(r1, n1, seconds=2) <= 1.2 * 20e6
    finally:
        tb.shape("rennes", "nancy", "100mbit")


@pytest.mark.parametrize("request_,walltime,message", [
    ({"lyon": 1}, "0:05", "unknown site 'lyon'"),
    ({"rennes": 4}, "0:05", "rennes has 3 nodes, 4 requested"),
    ({"rennes": 1}, "1:99", "malformed walltime"),
    ({"rennes": 0}, "0:05", "positive number of nodes"),
])
def test_bad_reservations_are_one_line_and_submit_nothing(tb, request_, walltime, message):
    with pytest.raises(UserError) as e:
        tb.reserve(request_, walltime=walltime)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert _active_jobs(tb) == {}


def test_bad_hostlist_and_environment(tb):
    with pytest.raises(UserError, match="malformed hostlist"):
        tb.nodes("paradent-[1-")
    with pytest.raises(UserError, match="unknown node"):
        tb.nodes("paradent-9.rennes")
    with pytest.raises(UserError, match="unknown environment"):
        tb.deploy(tb.nodes("paradent-1"), environment="centos5")


def test_remote_reports_per_host(tb):
    nodes = tb.nodes()
    for method in ("ssh", "taktuk"):
        res = remote.run("case $(hostname) in paradent-1*) echo bad >&2; exit 3;; *) hostname;; esac",
                         nodes, method=method)
        bad = res.by_host()["paradent-1.rennes.grid5000.fr"]
        assert (bad.ok, bad.exit_code, bad.stderr.strip()) == (False, 3, "bad")
        assert sorted(res.ok) == sorted(set(nodes.hostnames()) - {bad.host})
        assert all(r.stdout.strip() == r.host for r in res if r.ok)
    unknown = remote.run("true", ["paradent-1.rennes.grid5000.fr", "nowhere.rennes.grid5000.fr"])
    assert unknown.ok == ["paradent-1.rennes.grid5000.fr"] and unknown.failed[0].error


def test_chain_put_and_get(tb, tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 4096)
    nodes = tb.nodes()
    res = remote.chain_put(blob, nodes, "/tmp")
    assert res.failed == [] and len(res.ok) == len(nodes)
    res = remote.put([blob], nodes[:2], "/root", method="taktuk")
    assert res.failed == []
    got = tmp_path / "got"
    got.mkdir()
    assert remote.get(nodes[:1], ["/root/blob.bin"], got).failed == []
    assert hashlib.md5((got / "blob.bin").read_bytes()).digest() == hashlib.md5(blob.read_bytes()).digest()


def test_experiment_testbed_check_writes_rows(tb, tmp_path):
    r = invoke("experiment", "testbed-check", "--param", "exec_nodes=[1,4]", "--param", "repeats=1",
               "--param", "iperf_seconds=1")
    assert r.returncode == 0, r.stderr
    run_dir = r.stdout.strip().splitlines()[-1].split("results: ")[1]
    import pandas as pd
    df = pd.read_parquet(f"{run_dir}/rows.parquet")
    assert set(df.metric) == {"throughput", "rtt", "exec_latency"}
    assert set(df[df.metric == "exec_latency"].nodes) == {1, 4}
    assert (df[df.metric == "exec_latency"].hosts_ok == df[df.metric == "exec_latency"].nodes).all()
    assert json.load(open(f"{run_dir}/params.json"))["params"]["repeats"] == 1
    assert _active_jobs(tb) == {}
    latency, throughput = drawn(engine.load_experiment("testbed-check"), run_dir, tmp_path)["testbed-check.png"]
    assert latency["lines"] == ["ssh", "taktuk"] and latency["xlabel"] == "nodes"
    assert throughput["bars"] == 2 * len(df[df.metric == "throughput"]) and throughput["yscale"] == "log"
    assert throughput["legend"] == ["configured", "measured (iperf3)"]


def test_unknown_experiment_and_param_are_one_line(tb):
    r = invoke("experiment", "nosuch")
    assert r.returncode != 0 and r.stderr.strip() == "error: unknown experiment 'nosuch': see the experiments/ directory"
    r = invoke("experiment", "testbed-check", "--param", "colour=3")
    assert r.returncode != 0 and r.stderr.strip().startswith("error: bad --param") and r.stderr.strip().count("\n") == 0


def test_only_root_and_oar_reach_the_testbed_from_the_host(tb):
    node = tb.nodes()[0]
    connect = ["/usr/bin/python3", "-c", f"import socket; socket.create_connection(('{node.address}', 22), 5).close()"]
    for user, allowed in (("root", True), ("oar", True), ("nobody", False), ("g5kdeploy", False)):
        p = subprocess.run(["runuser", "-u", user, "--", *connect], capture_output=True, text=True)
        assert (p.returncode == 0) == allowed, (user, p.stderr)
        assert allowed or "Permission denied" in p.stderr, p.stderr       # refused by the host, at once


def test_the_oar_user_runs_the_batch_tasks_as_root_and_nothing_else(tb):
    from g5kdeploy.testbed.local.oar_server import BATCH, USER

    def as_user(*argv):
        return subprocess.run(["runuser", "-u", USER, "--", "sudo", "-n", *argv], capture_output=True, text=True)
    assert as_user("id").returncode != 0                                      # no root shell
    assert as_user("env", "PYTHONPATH=/tmp", str(BATCH), "experiment", "list").returncode != 0
    refused = as_user(str(BATCH), "testbed-destroy")
    assert refused.returncode == 2 and "not a batch task" in refused.stderr
    listed = as_user(str(BATCH), "experiment", "list")
    assert listed.returncode == 0 and "shrinker" in listed.stdout, listed.stderr


def test_oars_database_refuses_the_packaged_passwords(tb):
    import os
    for user, password in (("oar", "oarpw"), ("oar_ro", "oarropw"), ("oar", "oar")):
        p = subprocess.run(["psql", "-h", "127.0.0.1", "-U", user, "-d", "oar", "-c", "select 1"],
                           capture_output=True, text=True, env={**os.environ, "PGPASSWORD": password})
        assert p.returncode != 0 and "password authentication failed" in p.stderr, (user, p.stderr)


OUTSIDE = """
import json, sys
from g5kdeploy import remote
gateway, blob, hosts = sys.argv[1], sys.argv[2], sys.argv[3:]
direct = remote.run("hostname", hosts)
remote.use_gateway(gateway)
out = {"direct_ok": direct.ok, "direct_error": direct.failed[0].error if direct.failed else ""}
for method in ("ssh", "taktuk"):
    r = remote.run("hostname", hosts, method=method)
    out[method] = {x.host: x.stdout.strip() for x in r if x.ok}
out["put"] = remote.put([blob], hosts, "/root", method="taktuk").ok
out["chain_put"] = remote.chain_put(blob, hosts, "/tmp").ok
print(json.dumps(out))
"""


def test_ssh_taktuk_and_chain_put_go_through_the_gateway(tb, tmp_path):
    """From a machine that cannot reach the nodes (as outside Grid'5000: their names do not
    resolve, only the gateway's does), every remote method reaches them through the gateway."""
    from g5kdeploy.testbed.local.nodes import HOSTS_TAG
    from g5kdeploy.testbed.local.system import replace_block
    gw, *nodes = tb.nodes()
    hosts = tmp_path / "hosts"
    hosts.write_text(open("/etc/hosts").read())
    replace_block(hosts, HOSTS_TAG, [f"{gw.address} {gw.hostname}"])
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 2048)
    (tmp_path / "outside.py").write_text(OUTSIDE)
    names = [n.hostname for n in nodes]
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"',
                        "sh", str(hosts), str(tmp_path / "resolv.conf"), sys.executable, str(tmp_path / "outside.py"),
                        f"root@{gw.hostname}", str(blob), *names],
                       capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["direct_ok"] == [] and "resolve" in out["direct_error"]       # outside indeed
    assert out["ssh"] == out["taktuk"] == {h: h for h in names}
    assert sorted(out["put"]) == sorted(out["chain_put"]) == sorted(names)
    digest = hashlib.md5(blob.read_bytes()).hexdigest()
    sums = remote.run("md5sum /tmp/blob.bin /root/blob.bin", nodes)
    assert sums.failed == [] and {line.split()[0] for r in sums for line in r.stdout.splitlines()} == {digest}
