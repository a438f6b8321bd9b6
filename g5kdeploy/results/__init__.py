"""Run directories: params.json, tidy rows (Parquet + CSV), events.jsonl timeline, figures/.

    results/<experiment>/<run-id>/
        params.json     parameters, testbed description, git commit, package versions
        rows.parquet    one row per observation, one column per variable (units in names)
        rows.csv        the same rows
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
    """One run of one experiment: write rows and events as they come, tables at the end."""

    def __init__(self, experiment: str, params: dict, testbed: dict | None = None,
                 root: Path | None = None, run_id: str | None = None):
        self.experiment = experiment
        self.run_id = run_id or datetime.now().strftime("%Y%m%d-%H%M%S-") + os.urandom(2).hex()
        self.dir = (root or default_root()) / experiment / self.run_id
        (self.dir / "figures").mkdir(parents=True, exist_ok=False)
        self.rows: list[dict] = []
        meta = {"experiment": experiment, "run_id": self.run_id, "params": params, "testbed": testbed,
                "git_commit": git_commit(), "versions": versions(), "started": datetime.now().isoformat()}
        (self.dir / "params.json").write_text(json.dumps(meta, indent=1, default=str))

    def row(self, **columns) -> None:
        self.rows.append(columns)

    def event(self, stage: str, phase: str, node: str | None = None, **fields) -> None:
        entry = {"t": time.time(), "stage": stage, "phase": phase, "node": node, **fields}
        with open(self.dir / "events.jsonl", "a") as f:
            f.write(json.dumps(entry, default=str) + "\n")

    def save(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows)
        df.to_parquet(self.dir / "rows.parquet", index=False)
        df.to_csv(self.dir / "rows.csv", index=False)
        return df


def load(run_dir: str | Path) -> pd.DataFrame:
    """The rows of a run directory."""
    return pd.read_parquet(Path(run_dir) / "rows.parquet")


def events(run_dir: str | Path) -> pd.DataFrame:
    return pd.read_json(Path(run_dir) / "events.jsonl", lines=True)
