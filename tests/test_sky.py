"""BLASTx sky computing. Without a testbed: the seeded data set, chunking, the chunked hit
table equal to the sequential one, the job's one-line errors. On the small testbed (one
short run of blastx-sky: static, elastic and worker-loss runs): every run's hits equal the
sequential run's; the workers added mid-run executed tasks; a killed worker changes
nothing but time; every task is in events.jsonl; nothing is left running; bad input
fails in one line and reserves nothing."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, drawn, fake_testbed, invoke, own_testbed
from experiments import blastx_sky
from g5kdeploy import engine, remote
from g5kdeploy.errors import UserError
from g5kdeploy.results import events, load
from g5kdeploy.sky import blast, data

SMALL_DATA = {"proteins": 300, "queries": 48, "decoys": 12, "seed": 7}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sky")
    data.generate(data.Spec(**SMALL_DATA), out)
    return out, data.make_database(out / "proteins.fasta", out / "db")


def test_the_data_set_is_reproducible_and_its_answer_known(dataset, tmp_path):
    out, _ = dataset
    data.generate(data.Spec(**SMALL_DATA), tmp_path / "same")
    data.generate(data.Spec(**{**SMALL_DATA, "seed": 8}), tmp_path / "other")
    for name in ("proteins.fasta", "queries.fasta", "truth.json"):
        assert (tmp_path / "same" / name).read_bytes() == (out / name).read_bytes()
        assert (tmp_path / "other" / name).read_bytes() != (out / name).read_bytes()
    truth = json.loads((out / "truth.json").read_text())
    assert sum(1 for s in truth.values() if s) == 48 and sum(1 for s in truth.values() if not s) == 12
    assert len(blast.records((out / "queries.fasta").read_text())) == 60


def test_chunked_hits_equal_the_sequential_run(dataset, tmp_path):
    out, db = dataset
    reference = blast.sequential(str(out / "queries.fasta"), str(db), str(tmp_path / "hits.tsv"))
    chunks = blast.split((out / "queries.fasta").read_text(), 7)
    sizes = [len(blast.records(c)) for c in chunks]
    assert len(chunks) == 7 and sum(sizes) == 60 and max(sizes) - min(sizes) <= 1
    hits = [h for i, c in enumerate(chunks) for h in blast.chunk(i, c, str(db))["hits"]]
    assert blast.digest(hits) == reference["sha256"] and len(hits) == reference["hits"]
    assert blast.digest(hits[1:]) != reference["sha256"]
    found = blast.recall(hits, json.loads((out / "truth.json").read_text()))
    assert found["true_found"] >= 0.9 * found["true_total"] and found["decoys_hit"] == 0


def test_blast_errors_are_one_line(dataset, tmp_path):
    out, db = dataset
    with pytest.raises(blast.BlastError, match="no FASTA record"):
        blast.split("\n", 3)
    with pytest.raises(blast.BlastError, match="no protein database"):
        blast.blastx((out / "queries.fasta").read_text(), str(tmp_path / "none"))
    empty = tmp_path / "empty.fasta"
    empty.write_text("")
    # the job reads its queries before it contacts the scheduler
    p = subprocess.run([sys.executable, "-m", "g5kdeploy.sky.job", "tls://127.0.0.1:9", str(empty), str(db), "4",
                        str(tmp_path / "out.tsv"), "--tls", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1 and not p.stderr, p.stderr
    assert json.loads(p.stdout)["error"] == "BlastError: the query file holds no FASTA record"


@pytest.mark.parametrize("change, word", [
    ({"platforms": [{"paris": 1}]}, "unknown site paris"),
    ({"platforms": [{"nancy": 3}]}, "need 4 nodes on nancy"),
    ({"query_file": "/nonexistent.fasta"}, "no such file"),
    ({"database_fasta": "/nonexistent.fasta"}, "database_fasta /nonexistent.fasta: no such file"),
    ({"elastic": {"start": {"rennes": 1}, "add": {"nancy": 1}, "at_fraction": 1.5}}, "elastic.at_fraction"),
    ({"loss": {"workers": {"rennes": 1}, "at_fraction": 0.5}}, "at least 2 workers"),
    ({"chunks": 0}, "at least 1"),
])
def test_bad_parameters_are_refused(change, word):
    small = {"platforms": [{"rennes": 1}], "elastic": None, "loss": None}
    with pytest.raises(UserError, match=word):
        engine.check(blastx_sky.EXPERIMENT, fake_testbed(), {**small, **change})


def test_an_empty_query_file_is_refused(tmp_path):
    (tmp_path / "q.fasta").write_text("\n")
    with pytest.raises(UserError, match="holds no FASTA record"):
        engine.check(blastx_sky.EXPERIMENT, fake_testbed(), {"query_file": str(tmp_path / "q.fasta")})


def test_nodes_needed_counts_the_master_and_the_grown_platform():
    p = engine.parameters(blastx_sky.EXPERIMENT, {
        "platforms": [{"rennes": 2}], "elastic": {"start": {"rennes": 1}, "add": {"rennes": 2, "nancy": 1},
                                                  "at_fraction": 0.5},
        "loss": {"workers": {"nancy": 2}, "at_fraction": 0.5}})
    assert blastx_sky.nodes_needed(p) == {"rennes": 4, "nancy": 2}


def test_instances_need_service_nodes_and_the_masters_vmm_but_nothing_on_futuregrid():
    p = engine.parameters(blastx_sky.EXPERIMENT, {
        "workers_on": "instances", "platforms": [{"rennes": 1, "hotel": 2}],
        "elastic": {"start": {"rennes": 1}, "add": {"nancy": 1}, "at_fraction": 0.5}, "loss": None})
    assert blastx_sky.nodes_needed(p, futuregrid=["hotel"]) == {"rennes": 3, "nancy": 2}
    on_hotel = engine.parameters(blastx_sky.EXPERIMENT, {**p.__dict__, "scheduler_site": "hotel"})
    assert blastx_sky.nodes_needed(on_hotel, futuregrid=["hotel"]) == {"rennes": 2, "nancy": 2}


@pytest.fixture(scope="module")
def measured(small_description):
    with own_testbed(small_description) as tb:
        run = engine.execute(blastx_sky.EXPERIMENT, tb, {
            "platforms": [{"rennes": 1}, {"rennes": 1, "nancy": 1}],
            "elastic": {"start": {"rennes": 1}, "add": {"nancy": 1}, "at_fraction": 0.25},
            "loss": {"workers": {"rennes": 1, "nancy": 1}, "at_fraction": 0.25},
            "proteins": 1500, "queries": 320, "decoys": 80, "chunks": 16})
        left = remote.run("pgrep -f '[d]istributed.cli|[g]5kdeploy.sky' || true", tb.nodes())
        yield tb, run, load(run.dir), left


@pytest.mark.testbed
def test_every_run_finds_the_sequential_hits(measured):
    _, _, df, _ = measured
    runs = df[df.level == "run"]
    assert sorted(runs.kind) == ["elastic", "loss", "static", "static"]
    assert runs.hits_equal.all() and (runs.tasks == 16).all()
    assert (runs.hits == df[df.level == "sequential"].hits.iloc[0]).all()
    d = df[df.level == "data"].iloc[0]
    assert d.true_found >= 0.9 * d.true_total and d.decoys_hit == 0
    # the master (paradent-1) needs no database; one worker per site is all these runs ask
    assert set(df[df.level == "ship"].host) == {"paradent-2.rennes.grid5000.fr", "graphene-1.nancy.grid5000.fr"}
    static = runs[runs.kind == "static"].set_index("platform")
    assert static.loc["rennes:1,nancy:1"].makespan_s < static.loc["rennes:1"].makespan_s


@pytest.mark.testbed
def test_workers_added_mid_run_executed_tasks(measured):
    _, _, df, _ = measured
    e = df[(df.level == "run") & (df.kind == "elastic")].iloc[0]
    tasks = df[(df.level == "task") & (df.kind == "elastic")]
    new = tasks[tasks.site == "nancy"]
    assert len(new) >= 1 and (new.start_s >= e.extended_at_s).all()
    assert e.extended_at_s < e.joined_at_s < e.makespan_s
    assert e.baseline_s > e.ideal_s > e.extended_at_s


@pytest.mark.testbed
def test_a_killed_worker_changes_nothing_but_time(measured):
    _, _, df, _ = measured
    lost = df[(df.level == "run") & (df.kind == "loss")].iloc[0]
    tasks = df[(df.level == "task") & (df.kind == "loss")]
    assert lost.hits_equal and sorted(tasks.chunk) == list(range(16))
    assert (tasks[tasks.worker == lost.lost_worker].start_s < lost.lost_at_s).all()
    assert (tasks[tasks.worker != lost.lost_worker].end_s > lost.lost_at_s).any()


@pytest.mark.testbed
def test_the_timeline_figures_and_cleanup(measured, tmp_path):
    _, run, df, left = measured
    ev = events(run.dir)
    assert len(ev[ev.stage == "blastx-task"]) == len(df[df.level == "task"])
    assert {"extend", "kill"} <= set(ev.phase)
    for name in ("table-3.2.csv", "fig-3.2-speedup.png", "fig-3.7-elastic.png"):
        assert (run.dir / "figures" / name).stat().st_size > 0
    figures = drawn(blastx_sky.EXPERIMENT, run.dir, tmp_path)
    speedup, efficiency = figures["fig-3.2-speedup.png"]
    assert speedup["lines"] == ["measured", "linear", "host cores"] and speedup["xlabel"] == "worker cores"
    assert efficiency["bars"] == 2                                     # one bar per static platform
    elastic, extended, lost = figures["fig-3.7-elastic.png"]
    assert elastic["lines"] == ["not extended (rennes:1)", "extended (rennes:1+nancy:1)", "ideal",
                                "extension requested", "first task on new workers"]
    tasks = df[df.level == "task"]
    assert extended["bars"] == len(tasks[tasks.kind == "elastic"]) == 16      # one bar per task
    assert lost["bars"] == len(tasks[tasks.kind == "loss"]) and lost["title"].startswith("(c) worker loss")
    assert all(r.ok and not r.stdout.strip() for r in left), [(r.host, r.stdout) for r in left]


@pytest.mark.testbed
def test_bad_input_fails_in_one_line_and_reserves_nothing(measured):
    tb, run, _, _ = measured
    jobs, runs = set(tb.scheduler.jobs()), set(run.dir.parent.iterdir())
    for param, word in (('platforms=[{"paris": 2}]', "paris"), ("database_fasta=/nonexistent", "no such file")):
        r = invoke("experiment", "blastx-sky", "--param", param)
        assert r.returncode == 2 and r.stderr.strip().startswith("error:") and word in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert set(tb.scheduler.jobs()) == jobs and set(run.dir.parent.iterdir()) == runs


CLIENT = """
import sys
from distributed import Client
from distributed.security import Security
address, certs = sys.argv[1], sys.argv[2]
security = None if certs == "none" else Security(tls_ca_file=certs + "/cert.pem", tls_client_cert=certs + "/cert.pem",
                                                 tls_client_key=certs + "/key.pem", require_encryption=True)
try:
    Client(address, timeout=10, security=security).close()
    print("connected")
except Exception as e:
    print("refused", type(e).__name__)
"""


@pytest.mark.testbed
def test_only_holders_of_the_platforms_certificate_reach_its_scheduler(measured):
    import shlex
    from g5kdeploy.sky import platform as sky
    tb = measured[0]
    master, other = tb.node("paradent-1"), tb.node("paradent-2")      # the experiment gave both its credentials
    fake = "/tmp/other-tls"
    made = remote.run(f"mkdir -p {fake} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                      f"-subj /CN=g5kdeploy-sky -keyout {fake}/key.pem -out {fake}/cert.pem 2>/dev/null", [other])
    assert made.ok, made.summary()
    with sky.Platform(master).running() as plat:
        def client(address, certs):
            return remote.run(f"/usr/bin/python3 -c {shlex.quote(CLIENT)} {address} {certs}", [other])[0].stdout.split()
        assert client(plat.address, sky.TLS) == ["connected"]                          # the platform's own
        assert client(plat.address, fake)[0] == "refused"                              # another certificate
        assert client(plat.address.replace("tls://", "tcp://"), "none")[0] == "refused"   # no TLS at all
    remote.run(f"rm -rf {fake}", [other])
