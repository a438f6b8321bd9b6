"""Resumable sweeps, atomic rows and the walltime guard, without a testbed."""
import json
import time

import pandas as pd
import pytest

from g5kdeploy import engine
from g5kdeploy.errors import UserError
from g5kdeploy.results import Run

POINTS = [{"size": s, "repeat": r} for s in (1, 2, 3) for r in range(2)]


def _measure(run, stop_at=None, fail_at=None):
    def measure(p):
        run.row(size=p["size"], repeat=p["repeat"], part=1)
        if p == stop_at:
            raise KeyboardInterrupt("killed mid-point")
        if p == fail_at:
            raise RuntimeError("this point broke")
        run.row(size=p["size"], repeat=p["repeat"], part=2)
    return measure


def test_interrupted_point_is_redone_and_rows_are_neither_lost_nor_duplicated(tmp_path):
    run = Run("demo", {"n": 1}, root=tmp_path)
    run.row(setup="first attempt")
    with pytest.raises(KeyboardInterrupt):
        engine.sweep(run, POINTS, _measure(run, stop_at=POINTS[3]))
    assert len(run.points("done")) == 3
    assert not [r for r in run.rows if (r.get("size"), r.get("repeat")) == (2, 1)]   # half a point: not counted
    with open(run.dir / "rows.jsonl", "a") as f:
        f.write('{"size": 9, "rep')                 # a torn write at the kill
    again = Run("demo", {"n": 1}, root=tmp_path, run_id=run.run_id, resume=True)
    again.row(setup="second attempt")                       # setup is redone: its latest rows count
    counts = engine.sweep(again, POINTS, _measure(again))
    assert counts == {"done": 6, "skipped": 0, "todo": 0}
    assert [r["setup"] for r in again.rows if "setup" in r] == ["second attempt"]
    rows = [(r["size"], r["repeat"], r["part"]) for r in again.rows if "size" in r]
    assert sorted(rows) == sorted((p["size"], p["repeat"], k) for p in POINTS for k in (1, 2))
    assert len(rows) == len(set(rows)) == 12
    assert len(again.meta()["resumed"]) == 1
    df = again.save()
    assert len(df) == 13 and not {"_point", "_attempt"} & set(df.columns)


def test_failed_point_is_skipped_with_its_reason_and_not_redone(tmp_path):
    run = Run("demo", {}, root=tmp_path)
    assert engine.sweep(run, POINTS, _measure(run, fail_at=POINTS[0])) == {"done": 5, "skipped": 1, "todo": 0}
    skipped = json.loads((run.dir / "sweep" / "skipped.jsonl").read_text())
    assert "this point broke" in skipped["error"]
    calls = []
    engine.sweep(run, POINTS, calls.append)
    assert calls == []


def test_resume_with_other_parameters_or_no_such_run_is_one_line(tmp_path):
    run = Run("demo", {"n": 1}, root=tmp_path)
    with pytest.raises(UserError, match="other parameters"):
        Run("demo", {"n": 2}, root=tmp_path, run_id=run.run_id, resume=True)
    with pytest.raises(UserError, match="no run nosuch"):
        Run("demo", {"n": 1}, root=tmp_path, run_id="nosuch", resume=True)
    with pytest.raises(UserError, match="repeats a point"):
        engine.sweep(run, [{"a": 1}, {"a": 1}], print)


def test_guard_uses_declared_then_past_durations(tmp_path):
    earlier = Run("demo", {}, root=tmp_path)
    for d in (40.0, 50.0, 60.0):
        earlier.event("copy", "end", duration_s=d, outcome="ok")
    earlier.event("copy", "end", duration_s=999.0, outcome="failed: boom")     # failures do not count
    run = Run("demo", {}, root=tmp_path)
    assert engine.expected_duration(run, "copy") == 50.0
    run.deadline = lambda: time.time() + engine.MARGIN_S + 45
    engine.guard(run, "copy", expected_s=30)                # declared: fits
    with pytest.raises(engine.WalltimeReached) as e:
        engine.guard(run, "copy")                           # 50 s from earlier runs: does not
    assert e.value.stage == "copy" and 40 < e.value.left_s <= 45
    engine.guard(run, "never-seen")                         # nothing known: no guess
    run.deadline = lambda: None
    engine.guard(run, "copy")                               # no reservation: nothing to guard


def test_a_skipped_point_fails_the_run_after_the_others(tmp_path, monkeypatch):
    from conftest import experiment_of, fake_testbed
    monkeypatch.setenv("G5KDEPLOY_RESULTS", str(tmp_path))

    def main(run, testbed):
        engine.sweep(run, POINTS, _measure(run, fail_at=POINTS[1]))

    with pytest.raises(RuntimeError, match=r"1 sweep point\(s\) failed"):
        engine.execute(experiment_of("demo", main), fake_testbed())
    run_dir = next((tmp_path / "demo").iterdir())
    assert len(pd.read_parquet(run_dir / "rows.parquet")) == 10
