"""Bring-up and teardown of the local testbed: nothing may be left behind, even after kill -9."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import SMALL, invoke
from g5kdeploy.testbed.local import DEFAULT_HOME, LocalTestbed, destroy, leftovers, oar_server
from g5kdeploy.testbed.local.state import Journal
from g5kdeploy.testbed.local.system import children, kill

pytestmark = pytest.mark.testbed


def crash_up_after(kind: str, count: int, timeout: float = 60) -> None:
    """`invoke testbed-up` killed with SIGKILL once the journal holds `count` entries of `kind`."""
    up = subprocess.Popen([sys.executable, "-m", "invoke", "testbed-up", "--description", str(SMALL)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal, deadline = Journal(DEFAULT_HOME / "state.jsonl"), time.monotonic() + timeout
    while sum(e["kind"] == kind for e in journal.entries()) < count:
        assert up.poll() is None, "testbed-up ended before it could be interrupted"
        if time.monotonic() > deadline:
            up.kill()
            pytest.fail(f"no {count} {kind} entries in the journal after {timeout} s")
        time.sleep(0.01)
    os.kill(up.pid, signal.SIGKILL)
    up.wait()


@pytest.mark.parametrize("kind,count", [("netns", 5), ("pidfile", 1)], ids=["during-network", "during-oar"])
def test_kill_9_during_up_then_destroy_leaves_nothing(no_testbed_up, kind, count):
    crash_up_after(kind, count)
    assert leftovers(), "the interrupted bring-up had created nothing: the test did not test anything"
    assert destroy() == []
    assert leftovers() == []


def test_up_is_idempotent_and_destroy_is_complete(no_testbed_up, small_description):
    tb = LocalTestbed.up(small_description)
    try:
        again = LocalTestbed.up(small_description)   # already up: a no-op
        assert again.healthy() and str(again.nodes()) == str(tb.nodes())
        job = tb.reserve({"nancy": 1}, walltime="0:10").jobs["nancy"]   # left running on purpose
    finally:
        r = invoke("testbed-destroy")
    assert r.returncode == 0, r.stderr
    assert leftovers() == []
    assert invoke("testbed-destroy").returncode == 0     # idempotent
    # destroy ended the job before stopping OAR: look it up in OAR's database
    version = oar_server.pg_version()
    subprocess.run(["pg_ctlcluster", version, "main", "start"], check=True)
    try:
        state = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-d", "oar", "-tAc",
                                f"select state from jobs where job_id = {job}"],
                               capture_output=True, text=True, cwd="/").stdout.strip()
    finally:
        subprocess.run(["pg_ctlcluster", version, "main", "stop"], check=True)
    assert state in ("Error", "Terminated"), state


def test_bad_description_is_one_line_and_leaves_nothing(no_testbed_up, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[sites.rennes.clusters.paradent]\nnodes = -1\n')
    r = invoke("testbed-up", "--description", str(bad))
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "nodes must be a positive integer" in r.stderr
    assert leftovers() == []


def test_not_root_is_one_line():
    r = invoke("testbed-up", "--description", str(SMALL), user=65534)
    assert r.returncode != 0
    assert r.stderr.strip() == ("error: the local testbed needs root (namespaces, OAR, sshd): "
                                "run it as root or with sudo")
    assert leftovers() == []


def test_destroy_after_oar_server_crash_ends_the_jobs_processes(no_testbed_up, small_description):
    tb = LocalTestbed.up(small_description)
    try:
        tb.reserve({"rennes": 1}, walltime="0:10")
        assert any("sleep" in p.cmdline for p in oar_server.jobs_processes()), \
            "the deploy job's command is not running on the frontend"
        almighty = oar_server.pidfile_process(oar_server.ALMIGHTY_PID, "Almighty")
        for pid in [almighty, *children(almighty)]:   # OAR server crash: oardel is impossible now
            kill(pid)   # waits until it is gone
    finally:
        destroy()
    assert leftovers() == []


def test_up_after_a_crashed_up_cleans_the_leftovers_first(no_testbed_up, small_description):
    crash_up_after("netns", 4)
    try:
        tb = LocalTestbed.up(small_description)
        assert tb.healthy()
        assert remote_hostname(tb.nodes()[0].hostname) == tb.nodes()[0].hostname
    finally:
        destroy()
    assert leftovers() == []


def remote_hostname(host: str) -> str:
    return subprocess.run(["ssh", host, "hostname"], capture_output=True, text=True, timeout=30).stdout.strip()
