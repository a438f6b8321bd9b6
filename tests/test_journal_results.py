import json

import pandas as pd

from g5kdeploy.results import Run, events, load
from g5kdeploy.testbed.local.state import Journal


def test_journal_forget_and_torn_last_line(tmp_path):
    j = Journal(tmp_path / "state.jsonl")
    j.record("netns", name="a")
    j.record("oar_job", id=3)
    j.record("netns", name="b")
    j.forget("oar_job", id=3)
    with open(j.path, "a") as f:
        f.write('{"kind": "netns", "na')      # a crash mid-write
    assert j.entries() == [{"kind": "netns", "name": "a"}, {"kind": "netns", "name": "b"}]


def test_run_directory_layout(tmp_path):
    run = Run("demo", {"n": 3}, testbed={"name": "t"}, root=tmp_path)
    run.event("stage1", "start", "node-1")
    run.row(metric="x", time_s=1.5, nodes=1)
    run.row(metric="y", rtt_ms=0.2)
    df = run.save()
    meta = json.loads((run.dir / "params.json").read_text())
    assert meta["params"] == {"n": 3} and meta["testbed"] == {"name": "t"}
    assert "pandas" in meta["versions"] and "python" in meta["versions"]
    assert run.dir.parent.name == "demo" and (run.dir / "figures").is_dir()
    back = load(run.dir)
    pd.testing.assert_frame_equal(back, df)
    assert list(pd.read_csv(run.dir / "rows.csv").columns) == ["metric", "time_s", "nodes", "rtt_ms"]
    assert events(run.dir).iloc[0]["node"] == "node-1"
