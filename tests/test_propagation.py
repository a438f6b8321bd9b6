"""The propagation experiment, short (N = 1, 2 guests, a 32 MiB image) on the small
testbed: every guest runs; the repository sends the image once for the chain and N times
for scp, nothing for pre-propagated qcow nor for a second chain+qcow request (cache hit);
cached copies equal the repository's image; the figure and the Table 3.1 check are written;
bad parameters fail in one line and reserve nothing."""
import pandas as pd
import pytest

from conftest import drawn, fake_testbed, invoke, own_testbed
from experiments import propagation
from g5kdeploy import engine, remote
from g5kdeploy.errors import UserError
from g5kdeploy.results import load
from g5kdeploy.testbed import Feature

@pytest.fixture(scope="module")
def measured(small_description):
    with own_testbed(small_description) as tb:
        run = engine.execute(propagation.EXPERIMENT, tb, {"vm_counts": [1, 2], "image_size_mb": 32})
        yield tb, run, load(run.dir)


def requests(df):
    return df[df.level == "request"].astype({"n_vms": int})


@pytest.mark.testbed
def test_every_request_has_every_guest_running(measured):
    _, _, df = measured
    r = requests(df)
    assert (r.outcome == "ok").all(), r.error.tolist()
    assert sorted(zip(r.method, r.n_vms, r.cache)) == sorted(
        (m, n, c) for n in (1, 2) for m, c in (("scp", "none"), ("chain", "none"), ("qcow", "warm"),
                                               ("chain+qcow", "cold"), ("chain+qcow", "warm")))
    vms = df[df.level == "vm"]
    assert len(vms) == 5 * 3 and (vms.state == "running").all()
    assert (vms.boot_s > 0).all() and (vms.instantiation_s > 0).all() and (vms.ready_s >= vms.propagated_s).all()
    assert (r.total_s >= r.propagation_s).all()


@pytest.mark.testbed
def test_repository_sends_once_for_the_chain_and_n_times_for_scp(measured):
    _, _, df = measured
    for _, x in requests(df).iterrows():
        sent = x.repository_tx_bytes / x.image_bytes            # the NIC's count: headers included
        if x.method == "scp":
            expected = x.n_vms
        elif x.method == "chain" or x.cache == "cold":
            expected = 1
        else:
            expected = 0
        assert expected <= sent < expected + 0.1 * max(expected, 1) if expected else sent < 0.02, (x.method, sent)


@pytest.mark.testbed
def test_pre_propagated_qcow_sends_nothing_at_request_time(measured):
    _, _, df = measured
    warm = df[(df.level == "vmm") & (df.cache == "warm")]
    assert len(warm) == 2 * 3 and (warm.cache_lookup == "hit").all() and (warm.bytes == 0).all()
    assert (warm.completion_s < 0.5).all()
    cold = df[(df.level == "vmm") & (df.cache == "cold")]
    assert (cold.cache_lookup == "miss").all() and (cold.bytes == cold.image_bytes).all()
    pre = df[df.level == "prepropagation"]
    assert pre.n_filled.sum() >= 1 and (pre.bytes == pre.n_filled * df.image_bytes.dropna().iloc[0]).all()


@pytest.mark.testbed
def test_cached_copies_equal_the_repository_image(measured):
    tb, run, df = measured
    clouds = pd.read_json(run.dir / "clouds.json")
    cloud = clouds[propagation.Params().site]
    repository = remote.run(f"sha256sum /var/lib/nimbus/repository/{propagation.IMAGE}.img", [cloud["service"]])
    cached = remote.run(f"sha256sum /var/lib/nimbus/cache/{propagation.IMAGE}.img; "
                        f"cat /var/lib/nimbus/cache/{propagation.IMAGE}.sha256",
                        cloud["vmms"])
    digest = repository[0].stdout.split()[0]
    assert [r.stdout.split()[0:3:2] for r in cached] == [[digest, digest]] * len(cloud["vmms"])   # file, record


@pytest.mark.testbed
def test_figure_and_table_3_1(measured, tmp_path):
    _, run, _ = measured
    assert (run.dir / "figures" / "fig-3.6-propagation.png").stat().st_size > 10_000
    total, prop = drawn(propagation.EXPERIMENT, run.dir, tmp_path)["fig-3.6-propagation.png"]
    series = ["chain", "chain+qcow (cold)", "chain+qcow (warm)", "qcow", "scp"]       # one line per method
    assert total["lines"] == series and total["title"].startswith("(a)") and total["xscale"] == "log"
    assert prop["lines"] == series + ["SCP model N·S/B", "chain wire limit S/B+(N-1)c/B"]
    assert prop["yscale"] == "log" and prop["ylabel"] == "time (s)" and prop["legend"] == prop["lines"]
    table = pd.read_csv(run.dir / "figures" / "table-3.1.csv")
    assert table.matches.all() and list(table.n_vms) == [2 ** k for k in range(11)]


@pytest.mark.testbed
def test_bad_parameters_fail_in_one_line_and_reserve_nothing(measured):
    tb, run, _ = measured
    jobs, runs = set(tb.scheduler.jobs()), set(run.dir.parent.iterdir())
    for param, word in (('methods=["ftp"]', "ftp"), ("vm_counts=[64]", "nodes"), ('lan_rate="fast"', "rate")):
        r = invoke("experiment", "propagation", "--param", param)
        assert r.returncode == 2 and r.stderr.strip().startswith("error:") and word in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert set(tb.scheduler.jobs()) == jobs and set(run.dir.parent.iterdir()) == runs


def test_models_match_the_thesis():
    assert propagation.table_3_1().matches.all()
    mb = 2 ** 20
    assert propagation.scp_model_s(4, 256 * mb, 32 * mb) == 32
    assert propagation.wire_limit_s(1, 256 * mb, 32 * mb) == 8
    assert propagation.wire_limit_s(16, 256 * mb, 32 * mb, chunk=mb) == 8 + 15 / 32
    with pytest.raises(UserError, match="rennes"):
        engine.check(propagation.EXPERIMENT, fake_testbed(features=Feature), {"site": "paris"})
