"""OAR workflows on the real local OAR, and the g5k backend against the Grid'5000 API served
over the same testbed: reuse by name, adoption inside a job, batch jobs, walltime guard and
extension, resume after kill -9, partial deployments, EnOSlib roles."""
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, experiment_of, invoke, own_testbed
from g5kdeploy import engine
from g5kdeploy.errors import UserError
from g5kdeploy.testbed.local import oar_server

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def tb(small_description):
    with own_testbed(small_description) as testbed:
        yield testbed


@pytest.fixture
def broken_node(tb):
    """paradent-3's disk cannot be written: its deployment fails for real (a file where its
    private layer's directory must go), until repaired afterwards."""
    node = tb.node("paradent-3.rennes")
    upper = tb.files.node_dir(node) / "upper"
    subprocess.run(["rm", "-rf", str(upper)], check=True)
    upper.write_text("not a directory\n")
    yield node
    upper.unlink()
    assert tb.deploy([node])[node.hostname].ok


def _live(tb) -> set[int]:
    return set(map(int, tb.scheduler.jobs()))


def test_reserve_reuses_a_live_job_by_name_and_leaves_it_to_its_owner(tb):
    first = tb.reserve({"rennes": 2, "nancy": 1}, "0:05", name="reuse-me")
    try:
        again = tb.reserve({"rennes": 2}, "0:05", name="reuse-me")
        assert again.jobs == {"rennes": first.jobs["rennes"]} and again.adopted == again.jobs
        assert again.nodes == first.nodes.by_site()["rennes"]
        other = tb.reserve({"nancy": 1}, "0:05", name="another-name")      # another name: a new job
        assert other.jobs["nancy"] != first.jobs["nancy"] and not other.adopted
        tb.release(other)
        tb.release(again)                                   # adopted: not ended
        assert set(first.jobs.values()) <= _live(tb)
        with pytest.raises(UserError, match="has 2 nodes on rennes, 3 wanted"):
            tb.reserve({"rennes": 3}, "0:05", name="reuse-me")
    finally:
        tb.release(first)
    assert not set(first.jobs.values()) & _live(tb)


def test_inside_an_oar_job_its_nodes_are_the_reservation(tb, tmp_path, monkeypatch):
    outer = tb.reserve({"nancy": 2}, "0:05", name="outer")
    try:
        nodefile = tmp_path / "nodefile"
        nodefile.write_text("".join(f"{n.hostname}\n" * 4 for n in outer.nodes))   # one line per core
        monkeypatch.setenv("OAR_JOB_ID", str(outer.jobs["nancy"]))
        monkeypatch.setenv("OAR_NODEFILE", str(nodefile))
        inner = tb.reserve({"nancy": 2}, "0:05", name="whatever")
        assert inner.jobs == inner.adopted == outer.jobs and inner.nodes == outer.nodes
        tb.release(inner)
        assert outer.jobs["nancy"] in _live(tb)
        monkeypatch.setenv("OAR_NODEFILE", str(tmp_path / "missing"))
        with pytest.raises(UserError, match="OAR_NODEFILE"):
            tb.reserve({"nancy": 1}, "0:05")
    finally:
        monkeypatch.delenv("OAR_JOB_ID")
        tb.release(outer)


def test_batch_job_runs_the_experiment_inside_its_jobs(tb):
    r = invoke("submit", "experiment testbed-check --param repeats=1 --param exec_nodes=[1,4] "
               "--param iperf_seconds=1", "--sites", "rennes:3,nancy:2", "--walltime", "0:10", "--name", "batch-test")
    assert r.returncode == 0, r.stderr
    job = int(r.stdout.split("OAR job ")[1].split()[0])
    side = int(r.stdout.split("; job ")[1].split()[0])
    stdout = Path(r.stdout.split("stdout: ")[1].split()[0])
    assert stdout == Path(f"/home/{oar_server.USER}/OAR.batch-test.{job}.stdout")
    deadline = time.monotonic() + 240
    while tb.scheduler.status(job)["state"] not in ("Terminated", "Error") and time.monotonic() < deadline:
        time.sleep(2)
    st = tb.scheduler.status(job)
    assert (st["state"], st["exit_code"]) == ("Terminated", 0), stdout.read_text()[-2000:]
    run_dir = Path(stdout.read_text().split("results: ")[-1].split()[0])
    meta = json.loads((run_dir / "params.json").read_text())
    assert {(j["site"], j["job"], j["adopted"]) for j in meta["oar_jobs"]} == {("rennes", job, True),
                                                                              ("nancy", side, True)}
    assert meta["nodes"] == "graphene-[1-2].nancy.grid5000.fr,paradent-[1-3].rennes.grid5000.fr"
    df = pd.read_parquet(run_dir / "rows.parquet")
    assert set(df.metric) == {"throughput", "rtt", "exec_latency"} and (df.hosts_ok.dropna() > 0).all()
    assert not {job, side} & _live(tb)                      # the side job ended with the batch
    r = invoke("submit", "experiment testbed-check", "--sites", "rennes:9", "--walltime", "0:10")
    assert r.returncode == 2 and r.stderr.strip() == "error: rennes has 3 nodes, 9 requested: ask for fewer"


def test_walltime_guard_stops_before_a_stage_that_cannot_fit(tb):
    def main(run, testbed):
        res = testbed.reserve({"rennes": 1}, "0:00:40", name="guarded")
        try:
            with engine.stage(run, "short", expected_s=1):
                run.row(stage="short")
            with engine.stage(run, "long", expected_s=600):
                run.row(stage="long")
        finally:
            with engine.stage(run, "release", expected_s=600, cleanup=True):    # runs however late
                testbed.release(res)

    jobs = _live(tb)
    with pytest.raises(engine.WalltimeReached) as e:
        engine.execute(experiment_of("guarded", main), tb)
    run_dir = Path(os.environ["G5KDEPLOY_RESULTS"]) / "guarded" / e.value.run_id
    meta = json.loads((run_dir / "params.json").read_text())
    assert meta["stopped"]["before"] == "long" and meta["stopped"]["left_s"] < 40
    assert list(pd.read_parquet(run_dir / "rows.parquet").stage) == ["short"]
    assert _live(tb) == jobs


def test_walltime_extend_asks_oar_for_more(tb):
    res = tb.reserve({"nancy": 1}, "0:05", name="extend-me")
    try:
        before = tb.deadline(max_age=0)
        r = invoke("walltime", "--name", "extend-me", "--extend", "0:10")
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 30
        while tb.deadline(max_age=0) < before + 500 and time.monotonic() < deadline:
            time.sleep(1)
        assert tb.deadline(max_age=0) == pytest.approx(before + 600, abs=2)
        assert tb.scheduler.job("nancy", res.jobs["nancy"]).walltime_s == 900
        assert f"nancy:{res.jobs['nancy']} running" in r.stdout
        r = invoke("walltime", "--name", "nosuch")
        assert r.returncode == 2 and "no live OAR job named 'nosuch'" in r.stderr
    finally:
        tb.release(res)


PARAMS = ["--param", "repeats=4", "--param", "exec_nodes=[1,4]", "--param", "iperf_seconds=1"]


def _keys(run_dir) -> list[tuple]:
    df = pd.read_parquet(Path(run_dir) / "rows.parquet")
    cols = ["metric", "src", "dst", "method", "nodes", "repeat"]
    return sorted(tuple(str(v) for v in row) for row in df.reindex(columns=cols).itertuples(index=False))


def test_resume_after_kill_9_gives_the_rows_of_an_uninterrupted_run(tb):
    whole = invoke("experiment", "testbed-check", *PARAMS)
    assert whole.returncode == 0, whole.stderr
    reference = _keys(whole.stdout.split("results: ")[1].split()[0])
    before = set(Path(os.environ["G5KDEPLOY_RESULTS"], "testbed-check").iterdir())
    p = subprocess.Popen([sys.executable, "-m", "invoke", "experiment", "testbed-check", *PARAMS], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    run_dir = None
    while time.monotonic() < deadline and p.poll() is None:
        new = set(Path(os.environ["G5KDEPLOY_RESULTS"], "testbed-check").iterdir()) - before
        run_dir = next(iter(new), None)
        if run_dir and len((run_dir / "sweep" / "done.jsonl").read_text().splitlines()
                           if (run_dir / "sweep" / "done.jsonl").exists() else []) >= 10:
            break
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done = len((run_dir / "sweep" / "done.jsonl").read_text().splitlines())
    assert 10 <= done < len(reference) and not (run_dir / "rows.parquet").exists()
    try:
        r = invoke("experiment", "testbed-check", "--resume", run_dir.name)
        assert r.returncode == 0, r.stderr
        keys = _keys(run_dir)
        assert keys == reference and len(set(keys)) == len(keys)
        meta = json.loads((run_dir / "params.json").read_text())
        killed = {tuple(j) for j in meta["submitted_jobs"]}
        assert len(meta["resumed"]) == 1 and {(j["site"], j["job"]) for j in meta["oar_jobs"]} <= killed
        assert not any(j["adopted"] for j in meta["oar_jobs"])          # the killed attempt's jobs: its own
        assert tb.live("testbed-check") == []                            # and ended with the run
    finally:
        tb.release_named("testbed-check")
    r = invoke("experiment", "testbed-check", "--resume", "nosuch")
    assert r.returncode == 2 and "no run nosuch" in r.stderr


def test_deploy_goes_on_above_min_and_stops_below_it(tb, broken_node):
    def main(run, testbed, need):
        res = testbed.reserve({"rennes": 3}, "0:05", name="partial")
        try:
            with engine.stage(run, "deploy"):
                outcomes = testbed.deploy(res.nodes, min=need)
            run.row(deployed=sum(o.ok for o in outcomes.values()))
        finally:
            testbed.release(res)

    run = engine.execute(experiment_of("partial", main, need=2), tb)
    meta = json.loads((run.dir / "params.json").read_text())
    assert meta["nodes"] == "paradent-[1-2].rennes.grid5000.fr"
    assert list(meta["failed_nodes"]) == [broken_node.hostname] and "Not a directory" in meta["failed_nodes"][broken_node.hostname]
    assert list(pd.read_parquet(run.dir / "rows.parquet").deployed) == [2]
    with pytest.raises(UserError, match=r"deploy: 2 of 3 nodes deployed, 3 needed \(paradent-3.rennes.grid5000.fr: "):
        engine.execute(experiment_of("partial", main, need=3), tb)
    assert not _live(tb)


def test_configuration_goes_on_above_min_and_stops_below_it(tb, broken_node):
    from g5kdeploy import chef
    nodes = tb.nodes("paradent-[1-3].rennes")
    tb.deploy(nodes, min=2)                                 # paradent-3 stays down
    roles = {n: ("shrinker-redis", {"g5kdeploy": {"address": n.address, "redis_password": "p"}}) for n in nodes}
    done = chef.apply_all(roles, min=2)
    assert [c.host for c in done if not c.ok] == [broken_node.hostname]
    assert next(c for c in done if not c.ok).error.startswith("bundle:")
    with pytest.raises(RuntimeError, match=r"configuration failed on paradent-3.*\(2 of 3 nodes converged, 3 needed\)"):
        chef.apply_all(roles)
    tb.failed_nodes.clear()


def test_reservation_as_enoslib_roles(tb):
    import enoslib as en
    res = tb.reserve({"rennes": 2, "nancy": 1}, "0:05", name="roles")
    try:
        roles = tb.roles(res)
        assert {h.alias for h in roles["rennes"]} == {n.short for n in res.nodes if n.site == "rennes"}
        assert {h.address for h in roles["all"]} == set(res.nodes.hostnames())
        out = en.run_command("cat /etc/hostname", roles=roles["all"])
        assert sorted(r.stdout.strip() for r in out) == sorted(res.nodes.hostnames())
    finally:
        tb.release(res)


def test_nodes_are_reached_through_a_gateway_when_one_is_set(tb):
    from g5kdeploy import remote
    hop, target = tb.node("paradent-1.rennes"), tb.node("graphene-1.nancy")
    try:
        remote.use_gateway(f"root@{hop.hostname}")
        via = remote.run("echo $SSH_CONNECTION", [target])[0]
        remote.use_gateway(None)
        direct = remote.run("echo $SSH_CONNECTION", [target])[0]
    finally:
        remote.use_gateway(None)
    assert via.ok and via.stdout.split()[0] == hop.address          # the connection came from the hop
    assert direct.ok and direct.stdout.split()[0] == tb.description.frontend_address


# -- the g5k backend against the Grid'5000 API served over this testbed ----------------------------
@contextmanager
def stand_in(tb, tmp_path, monkeypatch, clusters=None, user="alice", **keys):
    """The g5k backend connected to the API stand-in (`clusters`: its Reference API facts)
    as `user`."""
    from g5kdeploy.testbed import g5k as backend
    from g5kdeploy.testbed.g5k import G5kTestbed
    from g5kdeploy.testbed.local import g5k_api
    monkeypatch.setattr(backend, "CACHE", tmp_path / "cache")         # the Reference API's, for this test
    server = g5k_api.serve(tb, user, "s3cret", clusters=clusters)
    config = tmp_path / "python-grid5000.yaml"
    conf = {"uri": f"http://127.0.0.1:{server.server_port}/stable", "username": user, "password": "s3cret",
            "ssh_key": str(tb.files.key) + ".pub", "gateway": None, **keys}     # the nodes are reached directly here
    config.write_text(yaml.safe_dump(conf))
    try:
        g = G5kTestbed.connect(config)
        assert g.scheduler.poll_s == (5.0, 45.0)           # the live service's pace...
        g.scheduler.poll_s = (0.5, 2.0)                    # ...the stand-in answers at once
        yield g, config, conf
    finally:
        server.shutdown()


@pytest.fixture
def g5k(tb, tmp_path, monkeypatch):
    with stand_in(tb, tmp_path, monkeypatch) as out:
        yield out


def test_g5k_reserve_reuse_extend_release_through_the_api(tb, g5k):
    g, _, _ = g5k
    assert {s: [c.name for c in site.clusters] for s, site in g.description.sites.items()} == \
        {"rennes": ["paradent"], "nancy": ["graphene"]}
    assert g.nodes() == tb.nodes() and g.node("graphene-2.nancy").cores == 4
    res = g.reserve({"rennes": 2, "nancy": 1}, "0:05", name="g5k-test")
    try:
        for site, job in res.jobs.items():            # real OAR jobs
            st = tb.scheduler.status(job)
            assert (st["state"], st["name"]) == ("Running", "g5k-test") and "deploy" in st["types"]
        assert res.nodes == tb.nodes("paradent-[1-2].rennes,graphene-1.nancy")
        again = g.reserve({"nancy": 1}, "0:05", name="g5k-test")
        assert again.adopted == {"nancy": res.jobs["nancy"]}
        before = g.deadline(max_age=0)
        g.scheduler.extend("nancy", res.jobs["nancy"], 300)
        g.scheduler.extend("rennes", res.jobs["rennes"], 300)
        deadline = time.monotonic() + 30
        while g.deadline(max_age=0) < before + 250 and time.monotonic() < deadline:
            time.sleep(1)
        assert g.deadline(max_age=0) == pytest.approx(before + 300, abs=2)
    finally:
        g.release(res)
    assert not set(res.jobs.values()) & _live(tb)


def test_g5k_deployment_with_a_ko_node(tb, g5k, broken_node):
    g, _, _ = g5k
    with g.reserved({"rennes": 3}, "0:10", name="g5k-ko") as res:       # Kadeploy deploys reserved nodes only
        nodes = g.nodes("paradent-[1-3].rennes")
        assert res.nodes == nodes
        outcomes = g.deploy(nodes, min=2)
        assert [h for h, o in outcomes.items() if not o.ok] == [broken_node.hostname]
        assert "KO" in g.failed_nodes[broken_node.hostname]
        with pytest.raises(UserError, match="deploy: 2 of 3 nodes deployed, 3 needed"):
            g.deploy(nodes)


def test_g5k_bad_credentials_and_config_are_one_line(tb, g5k, tmp_path):
    from g5kdeploy.testbed.g5k import G5kTestbed
    _, config, conf = g5k
    config.write_text(yaml.safe_dump({**conf, "password": "wrong", "reference_max_age_s": 0}))   # not from the cache
    with pytest.raises(UserError, match="401.*check username/password"):
        G5kTestbed.connect(config)
    with pytest.raises(UserError, match="no .*nosuch.yaml: write your Grid'5000 login there"):
        G5kTestbed.connect(tmp_path / "nosuch.yaml")
    config.write_text(yaml.safe_dump({**conf, "uri": "http://127.0.0.1:9/stable"}))
    with pytest.raises(UserError, match="unreachable"):
        G5kTestbed.connect(config)


def test_g5k_backend_runs_an_experiment_end_to_end(tb, g5k):
    from experiments import testbed_check
    from g5kdeploy.testbed.g5k import G5kTestbed
    g, _, _ = g5k
    run = engine.execute(testbed_check.EXPERIMENT, g, {"repeats": 1, "exec_nodes": [1, 4], "iperf_seconds": 1})
    df = pd.read_parquet(run.dir / "rows.parquet")
    assert set(df.metric) == {"throughput", "rtt", "exec_latency"} and (df.hosts_ok.dropna() > 0).all()
    meta = json.loads((run.dir / "params.json").read_text())
    assert meta["testbed"]["name"] == "grid5000" and meta["nodes"] == str(tb.nodes())
    assert not _live(tb)
    assert "gateway" not in g.ssh_settings()
    outside = G5kTestbed(g.client, {**g.config, "gateway": "auto"})     # this host is not in grid5000.fr
    assert outside.ssh_settings()["gateway"] == "access.grid5000.fr" and outside.ssh_settings()["gateway_user"] == "alice"


def test_g5k_refuses_what_it_lacks_before_submitting_a_job(tb, g5k):
    from experiments import shrinker
    g, _, _ = g5k
    jobs = _live(tb)
    with pytest.raises(UserError, match="shrinker with these parameters needs link shaping .*which the g5k "
                                        "testbed does not offer: run it with --testbed local"):
        engine.execute(shrinker.EXPERIMENT, g, {"vmms_per_site": 1})
    assert _live(tb) == jobs


def test_the_api_stand_in_takes_a_fresh_password_at_each_start(tb):
    import base64
    import subprocess
    import sys
    import urllib.error
    import urllib.request
    from conftest import ROOT, free_port
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "g5kdeploy.testbed.local.g5k_api", str(port)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        conf = yaml.safe_load("".join(server.stdout.readline() for _ in range(4)))    # what it prints
        assert conf["username"] == "g5kdeploy" and len(conf["password"]) >= 20

        def status(password):
            auth = base64.b64encode(f"g5kdeploy:{password}".encode()).decode()
            request = urllib.request.Request(f"{conf['uri']}/sites", headers={"Authorization": f"Basic {auth}"})
            try:
                return urllib.request.urlopen(request, timeout=10).status
            except urllib.error.HTTPError as e:
                return e.code
        assert status("g5kdeploy") == 401 and status(conf["password"]) == 200
    finally:
        server.kill()
        server.wait()


# -- the g5k backend as the live service behaves (issue 17) ------------------------------------------
def test_an_extended_reservation_outlives_its_first_walltime(tb):
    res = tb.reserve({"nancy": 1}, "0:00:40", name="extend-hold")      # its job runs the HOLD command
    try:
        job = tb.scheduler.job("nancy", res.jobs["nancy"])
        tb.scheduler.extend("nancy", job.id, 120)
        first_end = job.start + 40
        while time.time() < first_end + 10:                            # past the first walltime
            time.sleep(1)
        later = tb.scheduler.job("nancy", job.id)
        assert later.state == "running" and later.walltime_s == 160, later
    finally:
        tb.release(res)


def test_g5k_reservation_ends_and_adopts_as_the_api_says(tb, g5k):
    g, _, _ = g5k
    res = g.reserve({"nancy": 1}, "0:05", name="g5k-states")
    try:
        job = res.jobs["nancy"]
        assert g.scheduler.job("nancy", job).types == ("deploy",)
        tb.scheduler.delete("nancy", job)                              # ends behind the backend's back
        tb.scheduler.wait_ended([("nancy", job)])
        g.release(res)                                                 # ending an ended job is no error
    finally:
        tb.release_named("g5k-states")
    assert not _live(tb)


def test_g5k_listing_is_this_users_and_hides_nodes_unless_asked(tb, g5k):
    g, config, conf = g5k
    res = tb.reserve({"nancy": 1}, "0:05", name="someone-elses")       # the stand-in's jobs are alice's
    try:
        assert [j.id for j in g.scheduler.live("nancy", "someone-elses")] == [res.jobs["nancy"]]
        other = type(g)(g.client, {**conf, "username": "bob"})
        assert other.scheduler.live("nancy", "someone-elses") == []    # not bob's: never adopted
        assert [j.hosts for j in g.scheduler.on_site("nancy")] == [res.nodes.hostnames()]
        raw = g.client.sites["nancy"].jobs.list(state="running")
        assert raw and not any(getattr(j, "assigned_nodes", None) for j in raw)   # resources=no, as the API
    finally:
        tb.release(res)


def test_g5k_config_keys_and_frontends(tb, g5k, tmp_path, monkeypatch):
    from g5kdeploy.testbed import g5k as backend
    g, config, conf = g5k
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAA me\n")
    monkeypatch.setenv("HOME", str(home))
    tilde = type(g)(g.client, {**conf, "ssh_key": "~/.ssh/id_ed25519.pub"})
    assert tilde._public_key() == "ssh-ed25519 AAAA me"
    assert tilde.ssh_settings()["keyfile"] == str(home / ".ssh" / "id_ed25519")
    assert type(g)(g.client, {k: v for k, v in conf.items() if k != "username"}).user == os.environ.get(
        "USER", __import__("getpass").getuser())
    with pytest.raises(UserError, match="write your Grid'5000 login there"):
        backend.read_config(tmp_path / "nosuch.yaml")
    monkeypatch.setattr(backend, "_inside", lambda: True)              # on a frontend: no file needed
    assert backend.read_config(tmp_path / "nosuch.yaml") == {}


def test_g5k_api_errors_after_retries_are_one_line(tb, g5k):
    import requests
    g, _, _ = g5k

    def slow(*a, **k):
        raise requests.exceptions.ReadTimeout("read timed out")
    g.client.session.send = slow
    with pytest.raises(UserError, match="got no answer .*ReadTimeout after 30 s"):
        g.scheduler.live("nancy", "x")


def test_a_job_that_is_not_a_deploy_job_is_not_adopted_for_deploying(tb):
    res = tb.reserve({"nancy": 1}, "0:05", name="plain-job", deploy=False)
    try:
        with pytest.raises(UserError, match=f"OAR job {res.jobs['nancy']} .* is not a deploy job"):
            tb.reserve({"nancy": 1}, "0:05", name="plain-job")
        assert tb.reserve({"nancy": 1}, "0:05", name="plain-job", deploy=False).adopted == res.jobs
    finally:
        tb.release(res)


def test_g5k_batch_jobs_find_the_checkout_from_the_frontends_home(tb, g5k, tmp_path, monkeypatch):
    g, _, _ = g5k
    home = tmp_path / "home"
    checkout = home / "src" / "g5kdeploy"
    checkout.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(checkout)
    monkeypatch.setattr(sys, "executable", str(checkout / ".venv" / "bin" / "python"))
    monkeypatch.setenv("G5KDEPLOY_RESULTS", str(checkout / "results"))
    command = g.batch_command("experiment testbed-check", "n")
    assert command.startswith('cd "$HOME"/src/g5kdeploy && export G5KDEPLOY_TESTBED=g5k '
                              'G5KDEPLOY_RESULTS="$HOME"/src/g5kdeploy/results && ')
    assert "{ .venv/bin/python -m invoke experiment testbed-check;" in command and str(tmp_path) not in command
    frontend = tmp_path / "frontend-home"                      # another home: the command still finds it
    (frontend / "src" / "g5kdeploy").mkdir(parents=True)
    r = subprocess.run(["sh", "-c", command.split(" && export")[0] + " && pwd"], capture_output=True, text=True,
                       env={"HOME": str(frontend), "PATH": os.environ["PATH"]})
    assert r.stdout.strip() == str(frontend / "src" / "g5kdeploy")


def test_g5k_deploys_only_nodes_of_the_users_running_deploy_jobs(tb, g5k):
    g, _, _ = g5k
    jobs = _live(tb)
    with pytest.raises(UserError, match="graphene-2.nancy.grid5000.fr not reserved in a running deploy job"):
        g.reimage(g.nodes("graphene-2.nancy"), "debian12-g5kdeploy")
    assert _live(tb) == jobs


def test_g5k_reference_is_cached_and_a_silent_site_left_out(tb, g5k, tmp_path):
    import requests
    from grid5000 import Grid5000
    from g5kdeploy.testbed.g5k import G5kTestbed
    g, config, conf = g5k
    assert len(list((tmp_path / "cache").glob("reference-*.json"))) == 1

    def offline(*a, **k):
        raise requests.exceptions.ConnectTimeout("no network")
    client = Grid5000(uri=conf["uri"], username="alice", password="s3cret")
    client.session.send = offline
    assert G5kTestbed(client, conf).nodes() == g.nodes()                   # from the cache, no request
    with pytest.raises(UserError, match="got no answer"):
        G5kTestbed(client, {**conf, "reference_max_age_s": 0})             # too old: asked again
    partial = G5kTestbed(g.client, {**conf, "sites": ["nancy", "nosuch"]})
    assert sorted(partial.description.sites) == ["nancy"]                  # nosuch (404) left out
    without = G5kTestbed(g.client, {**conf, "excluded_sites": ["rennes"]})
    assert sorted(without.description.sites) == ["nancy"]
    with pytest.raises(UserError, match="site rennes is excluded"):
        without.reserve({"rennes": 1}, "0:05")


def test_g5k_lists_held_jobs_so_no_duplicate_is_submitted(tb, g5k):
    from g5kdeploy.testbed.local import oar_server
    g, _, _ = g5k
    held = oar_server.run_as_user(["oarsub", "--hold", "-n", "held-job", "-l", "nodes=1,walltime=0:05:00",
                                   "-p", "site='nancy'", "sleep 1"])
    job = int(held.stdout.split("OAR_JOB_ID=")[1].split()[0])
    try:
        assert g.scheduler.job("nancy", job).state == "hold"
        assert [j.id for j in g.scheduler.live("nancy", "held-job")] == [job]     # listed: adopted, not doubled
    finally:
        tb.scheduler.delete("nancy", job)
        tb.scheduler.wait_ended([("nancy", job)])


def test_queue_project_and_an_advance_reservation_starting_every_site_together(tb):
    from datetime import datetime
    res = tb.reserve({"nancy": 1}, "0:05", name="queued", queue="besteffort", project="g5kdeploy-tests")
    try:
        st = tb.scheduler.status(res.jobs["nancy"])
        assert (st["queue"], st["project"]) == ("besteffort", "g5kdeploy-tests")
    finally:
        tb.release(res)
    at = datetime.fromtimestamp(int(time.time()) + 20)
    res = tb.reserve({"rennes": 1, "nancy": 1}, "0:05", name="advance", reservation=at)
    try:
        starts = [tb.scheduler.job(s, j).start for s, j in res.jobs.items()]
        # not before its date, and at OAR's next scheduling pass after it (44-48 s late here)
        assert all(at.timestamp() - 1 <= t <= at.timestamp() + 90 for t in starts), (at, starts)
        assert max(starts) - min(starts) <= 2                                   # together
    finally:
        tb.release(res)
    with pytest.raises(UserError, match="is in the past"):
        tb.reserve({"nancy": 1}, "0:05", name="late", reservation=datetime(2020, 1, 1))


def test_g5k_passes_queue_project_and_reservation_as_the_api_takes_them(tb, g5k):
    from datetime import datetime
    g, _, _ = g5k
    at = datetime.fromtimestamp(int(time.time()) + 15)
    res = g.reserve({"nancy": 1}, "0:05", name="g5k-advance", reservation=at, project="p1")
    try:
        st = tb.scheduler.status(res.jobs["nancy"])
        assert st["project"] == "p1" and st.get("reservation") not in (None, "None")   # an advance reservation job
        assert at.timestamp() - 1 <= g.scheduler.job("nancy", res.jobs["nancy"]).start <= at.timestamp() + 90
    finally:
        g.release(res)


def test_requests_per_cluster_per_host_and_in_oar_resources_on_both_backends(tb, g5k):
    g, _, _ = g5k
    for testbed in (tb, g):
        with testbed.reserved({"rennes": {"paradent": 2}, "nancy": "graphene-2"}, "0:05", name="shaped") as res:
            assert sorted(n.cluster for n in res.nodes if n.site == "rennes") == ["paradent"] * 2
            assert [n.hostname for n in res.nodes if n.site == "nancy"] == ["graphene-2.nancy.grid5000.fr"]
            asked = tb.scheduler.status(res.jobs["rennes"])["initial_request"]
            assert "-l {cluster='paradent'}/nodes=2,walltime=0:05:00" in asked, asked
        with testbed.reserved({"nancy": "{cluster='graphene'}/nodes=1"}, "0:05", name="raw") as res:
            assert [n.cluster for n in res.nodes] == ["graphene"]
    jobs = _live(tb)
    for bad, said in (({"rennes": {"graphene": 1}}, "rennes has no cluster 'graphene': it has paradent"),
                      ({"rennes": {"paradent": 4}}, "cluster paradent has 3 nodes, 4 requested"),
                      ({"nancy": "paradent-1"}, "nancy:paradent-1 is no node count"),
                      ({"nancy": "walltime=1"}, "ask for no nodes")):
        with pytest.raises(UserError, match=said):
            g.reserve(bad, "0:05")
    assert _live(tb) == jobs


@pytest.fixture
def absent_node(tb):
    """graphene-2 set Absent in OAR (as an administrator does a broken node), Alive afterwards."""
    host = "graphene-2.nancy.grid5000.fr"
    subprocess.run(["oarnodesetting", "-s", "Absent", "-h", host], check=True, capture_output=True)
    yield host
    subprocess.run(["oarnodesetting", "-s", "Alive", "-h", host], check=True, capture_output=True)


def test_nodes_oar_holds_down_are_neither_asked_for_nor_given(tb, g5k, absent_node):
    from experiments import testbed_check
    from g5kdeploy import remote
    g, _, _ = g5k
    jobs = _live(tb)
    for testbed in (tb, g):                                          # OAR's own state, or the status API's
        assert testbed.scheduler.down("nancy") == {absent_node: "absent"}
        assert testbed.available("nancy").hostnames() == ["graphene-1.nancy.grid5000.fr"]
        assert testbed_check.EXPERIMENT.request(testbed_check.Params(), testbed) == {"rennes": 3, "nancy": 1}
        with pytest.raises(UserError, match=r"nancy: 2 nodes wanted, 1 that OAR can give \(graphene-2 absent\)"):
            testbed.reserve({"nancy": 2}, "0:05")
        with pytest.raises(UserError, match="that OAR can give"):
            testbed.reserve({"nancy": "graphene-2"}, "0:05")
        assert remote.check([absent_node], testbed) == {absent_node: "OAR has it absent"}
    assert _live(tb) == jobs


def test_g5k_description_follows_the_reference_api_exotic_queues_and_deploy(tb, tmp_path, monkeypatch):
    facts = {"graphene": {"exotic": True}, "paradent": {"queues": ["production"], "deploy": False}}
    with stand_in(tb, tmp_path, monkeypatch, clusters=facts) as (g, _, _):
        clusters = {c.name: c for s in g.description.sites.values() for c in s.clusters}
        assert clusters["graphene"].exotic and clusters["paradent"].queues == ("production",)
        assert not clusters["paradent"].deploy
        jobs = _live(tb)
        with pytest.raises(UserError, match=r"nancy has 0 nodes for default-queue deploy jobs .*exotic ones only by"):
            g.reserve({"nancy": 1}, "0:05")
        with pytest.raises(UserError, match="cluster paradent takes no production-queue deploy jobs"):
            g.reserve({"rennes": {"paradent": 1}}, "0:05", queue="production")
        assert _live(tb) == jobs
        with g.reserved({"nancy": {"graphene": 1}}, "0:05", name="exotic") as res:   # named: an exotic job
            assert set(tb.scheduler.status(res.jobs["nancy"])["types"]) == {"deploy", "exotic"}
        with g.reserved({"rennes": 2}, "0:05", name="prod", queue="production", deploy=False) as res:
            st = tb.scheduler.status(res.jobs["rennes"])
            assert st["queue"] == "production" and "deploy" not in st["types"]
        # the stand-in's admission keeps a plain job off the exotic cluster, as Grid'5000's OAR does
        with pytest.raises(UserError, match="job submission failed"):
            g.scheduler.submit("nancy", "nodes=1", 300, "plain", "sleep 1")
    assert _live(tb) == jobs


def test_a_second_deploy_reimages_nothing_and_force_deploy_does(tb, g5k):
    from g5kdeploy import remote
    g, _, _ = g5k
    for testbed in (tb, g):
        with testbed.reserved({"rennes": 2}, "0:05", name="idempotent") as res:
            assert all(o.ok and o.value is None for o in testbed.deploy(res.nodes).values())
            assert remote.run("touch /root/kept", res.nodes).failed == []
            again = testbed.deploy(res.nodes)
            assert {o.value for o in again.values()} == {"already deployed"}
            assert remote.run("test -e /root/kept", res.nodes).failed == []          # nothing reimaged
            testbed.deploy(res.nodes[:1], force_deploy=True)
            assert remote.run("test -e /root/kept", res.nodes).ok == [res.nodes[1].hostname]
        with testbed.reserved({"rennes": 2}, "0:05", name="idempotent") as res:      # a new job: deployed anew
            assert all(o.value is None for o in testbed.deploy(res.nodes).values())


def test_check_says_which_nodes_cannot_be_reached_and_why(tb):
    from g5kdeploy import remote
    with tb.reserved({"rennes": 2}, "0:05", name="checked") as res:
        locked, fine = res.nodes
        assert remote.run("rm /root/.ssh/authorized_keys", [locked]).failed == []
        r = invoke("check", "--name", "checked")
        assert r.returncode == 1 and f"{fine.hostname:40} ok" in r.stdout, r.stdout + r.stderr
        assert f"{locked.hostname:40} unreachable: root login refused" in r.stdout
        assert remote.check(tb.nodes("paradent-[1-3]"), tb) == {
            locked.hostname: "root login refused (not deployed with your key: deploy it)",
            "paradent-3.rennes.grid5000.fr": "held by no running OAR job"}
        tb.deploy([locked], force_deploy=True)
        assert remote.check(res.nodes, tb) == {}


def test_g5k_deployment_is_cancelled_after_its_timeout_and_takes_arch_and_version(tb, tmp_path, monkeypatch):
    with stand_in(tb, tmp_path, monkeypatch, deploy_timeout_s=0.01, arch="x86_64", version=2024) as (g, _, _):
        with g.reserved({"nancy": 1}, "0:05", name="slow-deploy") as res:
            outcome = g.reimage(res.nodes, "debian12-g5kdeploy")[res.nodes[0].hostname]
            assert not outcome.ok and "cancelled" in outcome.error
            d = g.client.sites["nancy"].deployments.list(user="alice")[0]           # the newest
            assert (d.status, d.arch, d.version, d.environment) == ("canceled", "x86_64", 2024, "debian12-min")


def test_g5k_reserve_waits_as_long_as_oar_queues_its_job(tb, g5k):
    import threading
    g, _, _ = g5k
    blocker = tb.reserve({"nancy": 2}, "0:05", name="blocker")
    submitted = []
    threading.Timer(8, tb.release, [blocker]).start()       # the nodes free up later
    t0 = time.monotonic()
    res = g.reserve({"nancy": 1}, "0:05", name="patient", submitted_hook=lambda s, j: submitted.append(j))
    try:
        assert time.monotonic() - t0 >= 7 and list(res.jobs.values()) == submitted    # waited in place
    finally:
        g.release(res)


def test_nodes_of_a_job_that_is_not_a_deploy_job_are_reached_as_the_user_with_sudo_g5k(tb, tmp_path, monkeypatch):
    from g5kdeploy import remote
    blob = tmp_path / "blob.txt"
    blob.write_text("mine\n")
    with stand_in(tb, tmp_path, monkeypatch, user=oar_server.USER) as (g, _, _):
        for testbed in (tb, g):
            with testbed.reserved({"nancy": 1}, "0:05", name="plain", deploy=False) as res:
                assert not res.deploy and testbed.roles(res)["all"][0].user == oar_server.USER
                remote.reach(testbed, res)
                try:
                    who = remote.run('echo "$(id -un) $SUDO_USER"', res.nodes)
                    assert [r.stdout.split() for r in who] == [["root", oar_server.USER]]    # root through sudo-g5k
                    assert remote.put([blob], res.nodes, "/tmp").failed == []              # copies are the user's
                    owner = remote.run("stat -c %U /tmp/blob.txt && rm /tmp/blob.txt", res.nodes)[0]
                    assert owner.stdout.strip() == oar_server.USER
                finally:
                    remote.reach(testbed)
            assert remote.run("id -un", res.nodes)[0].stdout.strip() == "root"            # deploy jobs: root
