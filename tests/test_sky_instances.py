"""The sky platform on cloud instances (small testbed, one Nimbus-style cloud per site,
tiny data since guests run under TCG): the workers are guests asked through the EC2 API,
contextualized with the scheduler's address; their hits equal the sequential run's (in
an instance); instances asked mid-run from the other site's cloud join and execute tasks;
a terminated instance changes nothing but time; no guest is left."""
import pytest

from conftest import own_testbed
from experiments import blastx_sky
from g5kdeploy import engine, remote
from g5kdeploy.results import load

# small tasks, so that the job still runs when an instance asked at a quarter of it has booted
# (a Debian guest under TCG, beside the running worker, takes ~30 s to its first task)
CHUNKS = 24


@pytest.fixture(scope="module")
def measured(small_description):
    with own_testbed(small_description) as tb:
        run = engine.execute(blastx_sky.EXPERIMENT, tb, {
            "workers_on": "instances", "platforms": [{"rennes": 1}],
            "elastic": {"start": {"rennes": 1}, "add": {"nancy": 1}, "at_fraction": 0.25},
            "loss": {"workers": {"rennes": 1, "nancy": 1}, "at_fraction": 0.25},
            "proteins": 300, "queries": 240, "decoys": 60, "chunks": CHUNKS})
        left = remote.run("pgrep -f '[q]emu-system' || true", tb.nodes())
        yield load(run.dir), left


@pytest.mark.testbed
def test_instances_find_the_sequential_hits(measured):
    df, _ = measured
    runs = df[df.level == "run"]
    assert sorted(runs.kind) == ["elastic", "loss", "static"] and runs.hits_equal.all() and (runs.tasks == CHUNKS).all()
    assert df[df.level == "sequential"].host.tolist() == ["instance"]
    d = df[df.level == "data"].iloc[0]
    assert d.true_found >= 0.9 * d.true_total and d.decoys_hit == 0
    tasks = df[df.level == "task"]
    assert tasks.worker.str.match(r"^(rennes|nancy)/i-[0-9a-f]+$").all()


@pytest.mark.testbed
def test_instances_asked_mid_run_join_and_work(measured):
    df, _ = measured
    e = df[(df.level == "run") & (df.kind == "elastic")].iloc[0]
    new = df[(df.level == "task") & (df.kind == "elastic") & (df.site == "nancy")]
    assert len(new) >= 1 and (new.start_s >= e.extended_at_s).all()
    lost = df[(df.level == "run") & (df.kind == "loss")].iloc[0]
    tasks = df[(df.level == "task") & (df.kind == "loss")]
    assert lost.hits_equal and sorted(tasks.chunk) == list(range(CHUNKS))
    assert (tasks[tasks.worker == lost.lost_worker].start_s < lost.lost_at_s).all()


@pytest.mark.testbed
def test_no_guest_is_left(measured):
    _, left = measured
    assert all(r.ok and not r.stdout.strip() for r in left), [(r.host, r.stdout) for r in left]
