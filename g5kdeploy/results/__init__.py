"""Run directories: params.json, tidy rows (Parquet + CSV), events.jsonl timeline, figures/.

    results/<experiment>/<run-id>/
        params.json     parameters, testbed description, git commit, package versions
        rows.parquet    one row per observation, one column per variable (units in names)
        rows.csv        the same rows
        rows.jsonl      the rows as they came, one atomic append each (what a resume keeps)
        sweep/          the parameter grid's states: todo, in progress, done, skipped
        events.jsonl    timeline: {"t": unix time, "stage", "node", "phase": start|end, ...}
        figures/*.png
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path

import pandas as pd

from g5kdeploy import jsonlines
from g5kdeploy.files import write_atomic
from g5kdeploy.errors import UserError

PACKAGES = ("g5kdeploy", "execo", "python-hostlist", "invoke", "pandas", "pyarrow", "rich")


def default_root() -> Path:
    return Path(os.environ.get("G5KDEPLOY_RESULTS", "results"))


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    for tool, argv in {"oar": ["oarsub", "-V"], "taktuk": ["taktuk", "-v"], "openssh": ["ssh", "-V"]}.items():
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            out[tool] = (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            pass
    return out


def git_commit() -> str | None:
    p = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent)
    if p.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, cwd=Path(__file__).resolve().parent).stdout.strip()
    return p.stdout.strip() + ("-dirty" if dirty else "")


class Run:
    """One run of one experiment: rows and events written as they come, tables at the end.

    A row is one O_APPEND write of one JSON line, so a kill leaves whole rows only. Rows
    written inside a sweep point carry the point and count only once it is done: a point
    interrupted and redone on resume neither loses nor duplicates a row. Rows outside any
    point (setup: deploy, data, reference runs) are redone by a resume and count from the
    latest attempt only."""

    def __init__(self, experiment: str, params: dict, testbed: dict | None = None,
                 root: Path | None = None, run_id: str | None = None, resume: bool = False):
        self.experiment = experiment
        self.run_id = run_id or datetime.now().strftime("%Y%m%d-%H%M%S-") + os.urandom(2).hex()
        self.dir = (root or default_root()) / experiment / self.run_id
        self.point: str | None = None         # the sweep point being measured
        self.deadline = None                  # callable: when the reservation ends (set by the engine)
        self.durations: dict[str, list[float]] | None = None
        self.attempt = 0                      # how many times this run was resumed
        if resume:
            self._reopen(params)
            return
        (self.dir / "figures").mkdir(parents=True, exist_ok=False)
        meta = {"experiment": experiment, "run_id": self.run_id, "params": params, "testbed": testbed,
                "git_commit": git_commit(), "versions": versions(), "started": datetime.now().isoformat()}
        (self.dir / "params.json").write_text(json.dumps(meta, indent=1, default=str))

    def _reopen(self, params: dict) -> None:
        before = stored_params(self.experiment, self.run_id, self.dir.parent.parent)
        if json.loads(json.dumps(params, default=str)) != before:
            diff = sorted(k for k in {**before, **params} if before.get(k) != params.get(k))
            raise UserError(f"run {self.run_id} was made with other parameters ({', '.join(diff)}): "
                            "resume it without --param, or start a new run")
        resumed = self.meta().get("resumed", []) + [datetime.now().isoformat()]
        self.attempt = len(resumed)
        self.note(resumed=resumed)

    def meta(self) -> dict:
        return json.loads((self.dir / "params.json").read_text())

    def note(self, **fields) -> None:
        """Add or replace entries of params.json (written whole, then renamed into place)."""
        write_atomic(self.dir / "params.json", json.dumps({**self.meta(), **fields}, indent=1, default=str))

    def row(self, **columns) -> None:
        tag = ({"_point": self.point} if self.point else {}) | ({"_attempt": self.attempt} if self.attempt else {})
        jsonlines.append(self.dir / "rows.jsonl", {**columns, **tag})

    @property
    def rows(self) -> list[dict]:
        """The rows that count: of a point, those of the attempt that finished it; outside
        points, those of this attempt."""
        done = {e["point"]: e.get("attempt", 0) for e in jsonlines.read(self.dir / "sweep" / "done.jsonl")}
        return [{k: v for k, v in r.items() if k not in ("_point", "_attempt")}
                for r in jsonlines.read(self.dir / "rows.jsonl")
                if r.get("_attempt", 0) == (done.get(r["_point"]) if "_point" in r else self.attempt)]

    def points(self, state: str) -> list[str]:
        path = self.dir / "sweep" / f"{state}.jsonl"
        return [e["point"] for e in jsonlines.read(path)]

    def mark(self, point: str, state: str, **fields) -> None:
        """Record a point's state; its rows reach the disk first (a point done has its rows)."""
        jsonlines.sync(self.dir / "rows.jsonl")
        jsonlines.append(self.dir / "sweep" / f"{state}.jsonl", {"point": point, "t": time.time(), **fields}, sync=True)

    def event(self, stage: str, phase: str, node: str | None = None, **fields) -> None:
        entry = {"t": time.time(), "stage": stage, "phase": phase, "node": node, **fields}
        jsonlines.append(self.dir / "events.jsonl", entry)

    def save(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows)
        df.to_parquet(self.dir / "rows.parquet", index=False)
        df.to_csv(self.dir / "rows.csv", index=False)
        return df


def stored_params(experiment: str, run_id: str, root: Path | None = None) -> dict:
    """The parameters an earlier run was made with."""
    path = (root or default_root()) / experiment / run_id / "params.json"
    if not path.is_file():
        raise UserError(f"no run {run_id} of {experiment} in {path.parent.parent}: "
                        "give the run id of an earlier run (its directory name)")
    return json.loads(path.read_text())["params"]


def load(run_dir: str | Path) -> pd.DataFrame:
    """The rows of a run directory."""
    return pd.read_parquet(Path(run_dir) / "rows.parquet")


def events(run_dir: str | Path) -> pd.DataFrame:
    return pd.read_json(Path(run_dir) / "events.jsonl", lines=True)


def pyplot():
    """matplotlib.pyplot on the Agg backend (figures are drawn without a display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay a figure out, write it as a PNG and free it; its path."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
