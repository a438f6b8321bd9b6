"""The experiment interface on a fake testbed (no root, milliseconds): parameters parsed
against their types, the full preset, features refused before anything is reserved, and
reservations released once on every exit."""
import json
import os
import signal
from pathlib import Path

import pytest

from conftest import experiment_of, fake_testbed
from g5kdeploy import engine
from g5kdeploy.errors import UserError
from g5kdeploy.testbed import Feature


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt, as in a terminal (a shell's background job starts with
    it ignored, and Python then keeps it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)

EXPERIMENTS = ("testbed-check", "deploy-nimbus", "propagation", "shrinker", "blastx-sky", "resilin", "vine-migration")


def test_defaults_then_overrides_then_types():
    shrinker = engine.load_experiment("shrinker")
    p = engine.parameters(shrinker, {})
    assert p == shrinker.Params() and p.cluster_sizes == [1, 2]
    p = engine.parameters(shrinker, {"repeats": "5", "cluster_sizes": [4], "warmup_s": 1, "methods": "stock,shrinker"})
    assert (p.repeats, p.cluster_sizes, p.warmup_s, p.methods) == (5, [4], 1.0, ["stock", "shrinker"])
    assert shrinker.Params().cluster_sizes is not shrinker.Params().cluster_sizes     # defaults are not shared


def test_full_grid_under_explicit_overrides():
    shrinker = engine.load_experiment("shrinker")
    assert engine.parameters(shrinker, {"full": True}).cluster_sizes == [1, 2, 4, 8]
    p = engine.parameters(shrinker, {"full": "true", "repeats": 1})
    assert p.cluster_sizes == [1, 2, 4, 8] and p.repeats == 1
    assert engine.parameters(shrinker, {"full": False}).cluster_sizes == [1, 2]
    sky = engine.load_experiment("blastx-sky")
    assert engine.parameters(sky, {"full": True}).repeats == 3      # accepted, as the README shows


@pytest.mark.parametrize("overrides, message", [
    ({"nosuch": 1}, "bad --param nosuch: shrinker has no such parameter"),
    ({"repeats": 2.5}, r"bad --param repeats=2.5: expected int \(default 1\)"),
    ({"repeats": True}, "expected int"),
    ({"cluster_sizes": [1, "x"]}, r"expected list\[int\]"),
    ({"source": 3}, "expected str"),
    ({"full": "maybe"}, "expected bool"),
])
def test_bad_parameters_are_one_line(overrides, message):
    with pytest.raises(UserError, match=message):
        engine.parameters(engine.load_experiment("shrinker"), overrides)


def test_every_experiment_implements_the_interface_and_lists_its_parameters():
    for name in EXPERIMENTS:
        exp = engine.load_experiment(name)
        assert exp.name == name and isinstance(exp, engine.Experiment)
        lines = engine.describe(exp)
        fields = exp.Params.__dataclass_fields__
        assert len(lines) == len(fields) + 2 and all(any(line.split()[0] == f for line in lines) for f in fields)
        engine.check(exp, fake_testbed(features=Feature, description=None), {})   # the defaults fit the default testbed
    with pytest.raises(UserError, match="unknown experiment 'nosuch'"):
        engine.load_experiment("nosuch")


def test_no_experiment_imports_another():
    for path in Path(__file__).resolve().parents[1].glob("experiments/*.py"):
        assert "from experiments" not in path.read_text() and "import experiments" not in path.read_text(), path


def test_a_missing_feature_is_refused_before_anything_is_reserved(tmp_path, monkeypatch):
    monkeypatch.setenv("G5KDEPLOY_RESULTS", str(tmp_path))
    tb = fake_testbed(features={Feature.RATES})
    with pytest.raises(UserError, match="shrinker with these parameters needs link shaping .* and WAN byte "
                                        "counters, which the fake testbed does not offer"):
        engine.execute(engine.load_experiment("shrinker"), tb)
    propagation = engine.load_experiment("propagation")
    with pytest.raises(UserError, match="needs link shaping"):
        engine.execute(propagation, tb)
    assert engine.check(propagation, tb, {"lan_rate": None, "vm_counts": [1, 2]}).lan_rate is None     # the testbed's own rate: no shaping
    assert tb.scheduler.jobs == {} and not list(tmp_path.iterdir())               # no job, no run directory


def _reserving(outcome):
    def main(run, testbed):
        with engine.reserved(run, testbed, {"rennes": 2}, "0:10", "demo") as res:
            run.row(nodes=len(res.nodes))
            outcome()
    return experiment_of("demo", main)


@pytest.mark.parametrize("outcome, raised", [
    (lambda: None, None),
    (lambda: 1 / 0, ZeroDivisionError),
    (lambda: os.kill(os.getpid(), signal.SIGINT), KeyboardInterrupt),          # Ctrl-C (SIGTERM: the same in tasks)
    (lambda: (_ for _ in ()).throw(engine.WalltimeReached("x", 10, 5)), engine.WalltimeReached),
])
def test_the_reservation_is_released_once_on_every_exit(tmp_path, monkeypatch, outcome, raised, ctrl_c_raises):
    monkeypatch.setenv("G5KDEPLOY_RESULTS", str(tmp_path))
    tb = fake_testbed()
    ended = []
    release = tb.release
    monkeypatch.setattr(tb, "release", lambda res: (ended.append(res), release(res)))
    if raised:
        with pytest.raises(raised):
            engine.execute(_reserving(outcome), tb)
    else:
        engine.execute(_reserving(outcome), tb)
    assert len(ended) == 1 and not tb.scheduler.on_site("rennes")
    run_dir = next((tmp_path / "demo").iterdir())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in events if e["phase"] == "end"] == ["reserve", "release"]
    assert json.loads((run_dir / "params.json").read_text())["oar_jobs"][0]["site"] == "rennes"


def test_kept_reservations_outlive_a_good_run_only(tmp_path, monkeypatch):
    monkeypatch.setenv("G5KDEPLOY_RESULTS", str(tmp_path))
    tb = fake_testbed()
    for fail in (False, True):
        with pytest.raises(RuntimeError) if fail else _nothing():
            with tb.reserved({"nancy": 1}, "0:10", name=f"kept-{fail}", keep=True):
                if fail:
                    raise RuntimeError("deploy failed")
    assert [j.name for j in tb.scheduler.on_site("nancy")] == ["kept-False"]


def test_busy_nodes_are_refused_at_once_naming_who_holds_them():
    tb = fake_testbed()
    tb.reserve({"rennes": 2}, "0:10", name="nimbus")
    with pytest.raises(UserError, match=r"rennes: 3 nodes wanted, 1 free: OAR jobs 1 \(nimbus: 2 nodes\) hold the "
                                        r"others; free them \(invoke nimbus-destroy\) or ask for 1"):
        tb.reserve({"rennes": 3}, "0:10", name="propagation")
    assert len(tb.scheduler.jobs) == 1                                 # nothing was submitted
    queued = fake_testbed(queues=True)                                 # Grid'5000: the request waits its turn
    queued.reserve({"rennes": 2}, "0:10", name="nimbus")
    with pytest.raises(UserError, match="not running"):
        queued.reserve({"rennes": 3}, "0:10", name="propagation")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_signal_during_the_release_waits_until_it_is_done(ctrl_c_raises):
    tb = fake_testbed()
    release = tb.release

    def interrupted(res):
        os.kill(os.getpid(), signal.SIGINT)          # Ctrl-C again, as the release starts
        release(res)

    tb.release = interrupted
    with pytest.raises(KeyboardInterrupt):
        with tb.reserved({"rennes": 1}, "0:10", name="twice"):
            pass
    assert not tb.scheduler.on_site("rennes")        # released all the same, then interrupted


def test_a_request_busy_nodes_cannot_meet_leaves_no_run(tmp_path, monkeypatch):
    monkeypatch.setenv("G5KDEPLOY_RESULTS", str(tmp_path))
    tb = fake_testbed(features=Feature)
    tb.reserve({"nancy": 1}, "0:10", name="nimbus")
    with pytest.raises(UserError, match="nancy: 2 nodes wanted, 1 free"):
        engine.execute(engine.load_experiment("shrinker"), tb, {"vmms_per_site": 1})
    assert len(tb.scheduler.jobs) == 1 and not list(tmp_path.iterdir())


def test_the_experiments_and_their_parameters_are_listed_without_a_testbed():
    from conftest import invoke
    r = invoke("experiment", "--help")
    assert r.returncode == 0 and [line.split()[0] for line in r.stdout.splitlines()[:-1]] == sorted(EXPERIMENTS)
    r = invoke("experiment", "shrinker", "--list-params")
    assert r.returncode == 0 and [line.split()[0] for line in r.stdout.splitlines()[1:]] == \
        [*engine.load_experiment("shrinker").Params.__dataclass_fields__, "full"]
