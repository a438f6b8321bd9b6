"""Experiments as stages over a testbed, each stage timed into the run's timeline."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from g5kdeploy.progress import console
from g5kdeploy.results import Run, load
from g5kdeploy.testbed import Testbed


@contextmanager
def stage(run: Run, name: str, nodes=None):
    """Record start/end of a stage (per node when nodes are given) with its duration."""
    names = [str(n) for n in nodes] if nodes else [None]
    t0 = time.time()
    for n in names:
        run.event(name, "start", n)
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] stage [bold]{name}[/bold]")
    status = "ok"
    try:
        yield
    except BaseException as e:
        status = f"failed: {type(e).__name__}: {e}"
        raise
    finally:
        for n in names:
            run.event(name, "end", n, duration_s=time.time() - t0, status=status)


def parameters(module: ModuleType, overrides: dict) -> dict:
    """The module's PARAMS, its FULL grid on top when `full` is true, then the overrides."""
    full = getattr(module, "FULL", {}) if str(overrides.get("full", "")).lower() in ("true", "1") else {}
    return {**module.PARAMS, **full, **overrides}


def execute(module: ModuleType, testbed: Testbed, overrides: dict | None = None) -> Run:
    """Run an experiment module (NAME, PARAMS, main(run, testbed, **params)) into a run directory.
    Its check_params(params, description), if any, runs first: bad parameters leave no run."""
    params = parameters(module, overrides or {})
    if check := getattr(module, "check_params", None):
        check(params, testbed.description)
    run = Run(module.NAME, params, testbed=testbed.description.source)
    try:
        module.main(run, testbed, **params)
    finally:
        if run.rows:
            run.save()
            redraw(module, run.dir)
    return run


def redraw(module: ModuleType, run_dir: str | Path) -> list[Path]:
    """A run's figures drawn from its rows (an experiment without `figures` draws none)."""
    if not hasattr(module, "figures"):
        return []
    return module.figures(load(run_dir), Path(run_dir) / "figures")
