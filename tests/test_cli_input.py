"""Bad input at the command line, as a user types it: each is refused with one line that says
what to do, exit code 2, and nothing is left behind (no run directory, no temporary file, no
testbed brought up, no OAR job)."""
import os
import tempfile
from pathlib import Path

import pytest

from conftest import invoke

BAD_DESCRIPTION = 'name = "evil\\n198.18.0.1 oar-server"\n[sites.rennes.clusters.paradent]\nnodes = 2\n'

CASES = [
    (["experiment", "shrinker", "--param", "memory_mb=128; reboot"], "memory_mb"),
    (["experiment", "shrinker", "--param", "nokey"], "write key=value"),
    (["experiment", "shrinker", "--param", 'cluster_sizes=[1, "x"]'], "cluster_sizes"),
    (["experiment", "shrinker", "--param", "colour=blue"], "colour"),
    (["experiment", "shrinker", "--param", "destination=rennes"], "two sites"),
    (["experiment", "shrinker", "--param", "chunk_sizes=[3000]"], "power of two"),
    (["experiment", "shrinker", "--param", "source=mars"], "mars"),
    (["experiment", "shrinker", "--param", "digest=md5; reboot"], "digest"),
    (["experiment", "deploy-nimbus", "--param", "image=../../etc/cron.d/x"], "image"),
    (["experiment", "nope"], "nope"),
    (["experiment", "blastx-sky", "--param", "workers_on=everywhere"], "workers_on"),
    (["submit", "experiment testbed-check", "--sites", "rennes:x"], "rennes:x"),
    (["submit", "experiment testbed-check", "--sites", "mars:2"], "mars"),
    (["submit", "experiment testbed-check", "--sites", "rennes:parapluie=2"], "rennes has no cluster 'parapluie'"),
    (["submit", "experiment testbed-check", "--sites", "rennes:2,rennes:paradent=1"], "rennes:paradent=1"),
    (["submit", "experiment testbed-check", "--sites", "rennes:2", "--walltime", "soon"], "walltime"),
    (["deploy-nimbus", "--sites", "rennes,mars"], "mars"),
    (["deploy-nimbus", "--sites", "rennes", "--propagation", "ftp"], "ftp"),
    (["testbed-up", "--description", "{description}"], "must be lowercase letters"),
    (["testbed-up", "--description", "/nonexistent.toml"], "cannot read"),
]


def snapshot(results: Path) -> tuple:
    tmp = {p.name for p in Path(tempfile.gettempdir()).iterdir() if p.name.startswith("g5kdeploy")}
    runs = {str(p) for p in results.rglob("*")} if results.exists() else set()
    netns = set(os.listdir("/run/netns")) if Path("/run/netns").exists() else set()
    return tmp, runs, netns


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(args, message, tmp_path):
    description = tmp_path / "bad.toml"
    description.write_text(BAD_DESCRIPTION)
    args = [a.format(description=description) for a in args]
    results = Path(os.environ["G5KDEPLOY_RESULTS"])
    before = snapshot(results)
    r = invoke(*args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], (r.returncode, r.stderr[-2000:])
    assert lines[0].startswith("error: ") and "Traceback" not in r.stderr + r.stdout
    assert snapshot(results) == before                      # nothing made: run, temporary file, namespace


def test_sites_are_counts_clusters_or_hostlists():
    import tasks
    assert tasks._sites("rennes:4,nancy:2") == {"rennes": 4, "nancy": 2}
    assert tasks._sites("rennes:paradent=2,rennes:parapluie=1,nancy:graphene-[1,3]") == \
        {"rennes": {"paradent": 2, "parapluie": 1}, "nancy": "graphene-[1,3]"}
