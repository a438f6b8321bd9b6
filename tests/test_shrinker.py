"""Shrinker on the small testbed: 2 idle guests migrated from rennes to nancy with real QEMU
and real Redis, beside stock QEMU; every correctness check of the experiment must pass."""
import pandas as pd
import pytest

from conftest import drawn, own_testbed
from experiments import shrinker
from g5kdeploy import engine

pytestmark = pytest.mark.testbed


@pytest.fixture(scope="module")
def run(small_description):
    with own_testbed(small_description) as tb:
        yield engine.execute(shrinker.EXPERIMENT, tb, {"vmms_per_site": 1, "methods": ["stock", "shrinker"],
                                                       "cluster_sizes": [2], "warmup_s": 1})


@pytest.fixture(scope="module")
def rows(run):
    return pd.read_parquet(run.dir / "rows.parquet")


def test_every_guest_passes_the_correctness_checks(rows):
    guests = rows[rows.level == "guest"]
    assert len(guests) == 4 and (guests.outcome == "ok").all()
    assert guests.ram_verified.all() and guests.runs_at_destination.all() and guests.source_gone.all()


def test_downtime_is_measured_alike_for_both_methods(rows):
    guests = rows[rows.level == "guest"]
    # QEMU's run-state trace: source vCPU stop -> destination start, within the migration
    assert (guests.downtime_s > 0).all() and (guests.downtime_s < guests.total_time_s).all()
    s = guests[guests.method == "shrinker"]
    assert (s.downtime_s <= s.reported_downtime_s + 0.05).all()   # the agent's own measure ends later


def test_every_round_has_a_row(rows):
    s = rows[(rows.level == "guest") & (rows.method == "shrinker")].set_index("guest")
    r = rows[rows.level == "round"]
    assert (r.groupby("guest").size() == s.rounds).all()
    assert (r.groupby("guest").bytes.sum() == s.bytes_sent).all()
    assert (r[r["round"] == 0].groupby("guest").size() == 1).all()     # the last one, guest stopped


def test_full_and_deduplicated_chunks_account_for_every_chunk(rows):
    s = rows[(rows.level == "guest") & (rows.method == "shrinker")]
    assert (s.first_round_chunks == s.ram_chunks).all()
    assert (s.chunks_dedup > 0).all()                     # two guests from one image share pages
    assert (s.chunks_local + s.chunks_peer + s.chunks_pulled >= s.chunks_dedup * 0.5).all()


def test_shrinker_sends_less_on_the_wan_than_stock(rows):
    c = rows[rows.level == "cluster"].set_index("method")
    assert c.loc["shrinker", "wan_bytes"] < 0.8 * c.loc["stock", "wan_bytes"]
    assert c.loc["stock", "wan_bytes"] > 2 * 40e6           # ~60 MB of non-zero RAM per idle guest


def test_the_figure_shows_each_method_and_chunk_type(run, tmp_path):
    time_, wan, chunks, downtime = drawn(shrinker.EXPERIMENT, run.dir, tmp_path)["shrinker-idle.png"]
    for ax in (time_, wan, downtime):
        assert ax["lines"] == ["shrinker", "stock"] and ax["xlabel"] == "virtual machines"
    assert wan["ylabel"] == "(b) data on the WAN (MB)"
    assert chunks["legend"] == ["fully sent", "deduplicated", "pulled from source"] and chunks["bars"] == 3
