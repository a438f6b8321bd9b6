"""Experiments as stages over a testbed, each stage timed into the run's timeline; parameter
sweeps that resume; a walltime guard that stops cleanly before a stage cannot fit."""
from __future__ import annotations

import dataclasses
import importlib
import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

from g5kdeploy import jsonlines, remote
from g5kdeploy.engine.experiment import Experiment, describe, param, parameters
from g5kdeploy.errors import UserError
from g5kdeploy.progress import console
from g5kdeploy.results import Run, load, stored_params
from g5kdeploy.testbed import Feature, NodeSet, Testbed

__all__ = ["Experiment", "param", "parameters", "describe", "load_experiment", "check", "execute", "redraw", "stage",
           "reserved", "sweep", "WalltimeReached"]

MARGIN_S = 15     # kept in reserve at the end of a reservation: releasing, saving the rows


class WalltimeReached(Exception):
    """The next stage would outlive the reservation: the run stops here, resumable."""

    def __init__(self, stage: str, expected_s: float, left_s: float):
        self.stage, self.expected_s, self.left_s = stage, expected_s, left_s
        self.run_id: str | None = None      # the run it stopped, set by execute
        super().__init__(f"stopped before {stage!r}: it takes ~{expected_s:.0f} s and the reservation "
                         f"has {left_s:.0f} s left")


def expected_duration(run: Run, name: str) -> float | None:
    """Median duration of stage `name` in this run and earlier runs of its experiment."""
    if run.durations is None:
        run.durations = {}
        for path in sorted(run.dir.parent.glob("*/events.jsonl")):
            for e in jsonlines.read(path):
                if e.get("phase") == "end" and e.get("outcome", e.get("status")) == "ok" and e.get("node") is None:
                    run.durations.setdefault(e["stage"], []).append(e["duration_s"])
    found = run.durations.get(name)
    return statistics.median(found) if found else None


def guard(run: Run, name: str, expected_s: float | None = None) -> None:
    """Raise WalltimeReached when stage `name` (its declared or past duration) cannot end
    `MARGIN_S` before the reservation does."""
    deadline = run.deadline() if run.deadline else None
    need = expected_s if expected_s is not None else expected_duration(run, name)
    if deadline is None or need is None:
        return
    left = deadline - time.time() - MARGIN_S
    if need > left:
        raise WalltimeReached(name, need, max(left, 0))


@contextmanager
def stage(run: Run, name: str, nodes=None, expected_s: float | None = None, cleanup: bool = False):
    """Record start/end of a stage (per node when nodes are given) with its duration, after
    checking that it fits in what is left of the reservation (not for a `cleanup` stage,
    such as releasing it, which must run whatever is left)."""
    if not cleanup:
        guard(run, name, expected_s)
    names = [str(n) for n in nodes] if nodes else [None]
    t0 = time.time()
    for n in names:
        run.event(name, "start", n)
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] stage [bold]{name}[/bold]")
    outcome = "ok"
    try:
        yield
    except BaseException as e:
        outcome = f"failed: {type(e).__name__}: {e}"
        raise
    finally:
        for n in names:
            run.event(name, "end", n, duration_s=time.time() - t0, outcome=outcome)
        if outcome == "ok" and run.durations is not None:
            run.durations.setdefault(name, []).append(time.time() - t0)


def point_key(point: dict) -> str:
    return json.dumps(point, sort_keys=True, default=str)


def sweep(run: Run, points: Iterable[dict], measure: Callable[[dict], None],
          name: str | Callable[[dict], str] = "point") -> dict:
    """measure(point) for every point of the grid not done yet, in order; each point a
    stage. States persist in the run directory (todo, in progress, done, skipped): rerun
    with the same run id, it goes on where it stopped, redoing an interrupted point. A
    point that raises is skipped with its reason; Ctrl-C, SIGTERM and the walltime guard
    stop the sweep. `name` names the points' stages (a function of the point, or one name)
    so that the walltime guard knows how long each kind takes. Returns {state: count}."""
    points = list(points)
    stage_of = name if callable(name) else (lambda p: name)
    keys = [point_key(p) for p in points]
    if len(set(keys)) != len(keys):
        raise UserError("the sweep's grid repeats a point: add a repeat index to tell them apart")
    done, skipped = set(run.points("done")), set(run.points("skipped"))
    for p, key in zip(points, keys):
        if key in done or key in skipped:
            continue
        run.mark(key, "inprogress")
        run.point = key
        try:
            with stage(run, stage_of(p)):
                measure(p)
        except (WalltimeReached, UserError):
            raise
        except Exception as e:      # a failed point is skipped, the sweep goes on
            run.mark(key, "skipped", error=f"{type(e).__name__}: {e}")
            console.print(f"[yellow]point {key} skipped: {type(e).__name__}: {e}")
        else:
            run.mark(key, "done", attempt=run.attempt)
        finally:
            run.point = None
    done, skipped = set(run.points("done")), set(run.points("skipped"))
    return {"done": sum(k in done for k in keys), "skipped": sum(k in skipped for k in keys),
            "todo": sum(k not in done and k not in skipped for k in keys)}


@contextmanager
def reserved(run: Run, testbed: Testbed, request: dict[str, int], walltime: str | int, name: str,
             keep: bool = False, **options):
    """testbed.reserved() as the run's `reserve` and `release` stages: released once on every
    exit (failure, Ctrl-C, SIGTERM, the walltime guard); `keep=True`: only on failure. Jobs
    are noted in params.json as soon as they are submitted: a resumed run that adopts the jobs
    of its own earlier attempt (killed, say) owns them and ends them too."""
    earlier = {tuple(x) for x in run.meta().get("submitted_jobs", [])}

    def note(site: str, job: int) -> None:
        run.note(submitted_jobs=run.meta().get("submitted_jobs", []) + [[site, job]])
    with stage(run, "reserve"):
        res = testbed.reserve(request, walltime, name, submitted_hook=note, **options)
    res.adopted = {s: j for s, j in res.adopted.items() if (s, j) not in earlier}
    with testbed.releasing(res, keep, around=lambda: stage(run, "release", cleanup=True)):
        yield res


def load_experiment(name: str) -> Experiment:
    """experiments/<name>.py's EXPERIMENT (`blastx-sky` is experiments/blastx_sky.py)."""
    try:
        module = importlib.import_module(f"experiments.{name.replace('-', '_')}")
    except ModuleNotFoundError as e:
        if e.name != f"experiments.{name.replace('-', '_')}":
            raise
        raise UserError(f"unknown experiment {name!r}: see the experiments/ directory") from None
    experiment = getattr(module, "EXPERIMENT", None)
    if not isinstance(experiment, Experiment):
        raise UserError(f"experiments/{module.__name__.split('.')[-1]}.py defines no EXPERIMENT = <Experiment>()")
    return experiment


def check(experiment: Experiment, testbed: Testbed, overrides: dict | None = None):
    """The experiment's Params from the overrides, once the testbed is known to have the
    features they need and the experiment's own checks passed; else a one-line UserError."""
    params = parameters(experiment, overrides)
    lacking = experiment.needs(params) - testbed.features
    if missing := [f.value for f in Feature if f in lacking]:
        raise UserError(f"{experiment.name} with these parameters needs {' and '.join(missing)}, which the "
                        f"{testbed.kind} testbed does not offer: run it with --testbed local")
    experiment.validate(params, testbed)
    return params


def execute(experiment: Experiment, testbed: Testbed, overrides: dict | None = None,
            resume: str | None = None) -> Run:
    """Run an experiment into a run directory, or go on with run `resume` (its stored
    parameters, under the overrides). Parameters are parsed, the testbed's features and
    the experiment's own checks run first: what cannot run leaves no run and reserves
    nothing. params.json ends with the OAR jobs, the nodes used and those left out; a
    sweep point that failed fails the run once the others are done."""
    overrides = {**(stored_params(experiment.name, resume) if resume else {}), **(overrides or {})}
    params = check(experiment, testbed, overrides)
    if request := experiment.request(params, testbed):
        testbed.check_request(request, experiment.job_name)
    run = Run(experiment.name, dataclasses.asdict(params), testbed=testbed.description.source, run_id=resume,
              resume=bool(resume))
    run.deadline = testbed.deadline
    remote.reach(testbed)
    first, failed_before = len(testbed.used), dict(testbed.failed_nodes)
    try:
        experiment.main(run, testbed, params)
        if skipped := run.points("skipped"):
            raise RuntimeError(f"{len(skipped)} sweep point(s) failed and were skipped (the others' rows are "
                               f"saved): reasons in {run.dir / 'sweep' / 'skipped.jsonl'}")
    except WalltimeReached as e:
        run.event(e.stage, "walltime", expected_s=e.expected_s, left_s=e.left_s)
        run.note(stopped={"before": e.stage, "expected_s": e.expected_s, "left_s": e.left_s})
        e.run_id = run.run_id
        raise
    finally:
        mine = testbed.used[first:]
        failed = {h: why for h, why in testbed.failed_nodes.items() if failed_before.get(h) != why}
        run.note(nodes=str(NodeSet(n for r in mine for n in r.nodes if n.hostname not in failed)),
                 failed_nodes=failed,
                 oar_jobs=[{"site": s, "job": j, "adopted": s in r.adopted} for r in mine for s, j in r.jobs.items()])
        if run.rows:
            run.save()
            redraw(experiment, run.dir)
    return run


def redraw(experiment: Experiment, run_dir: str | Path) -> list[Path]:
    """A run's figures drawn from its rows."""
    return experiment.figures(load(run_dir), Path(run_dir) / "figures")
