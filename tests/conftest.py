import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "tests" / "small.toml"


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="testbed tests need root")
        for item in items:
            if "testbed" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def small_description():
    from g5kdeploy.testbed import description
    return description.load(SMALL)


def make_room() -> None:
    """The machine has one local testbed: destroy one that is up (or left by a failed test,
    which that test reports itself) so that the next tests do not fail in cascade."""
    from g5kdeploy.testbed.local import destroy, is_up
    if is_up():
        assert destroy() == []


@contextmanager
def own_testbed(desc):
    """This machine's one local testbed, for a test module: made room for, brought up,
    destroyed afterwards with nothing left over."""
    from g5kdeploy.testbed.local import LocalTestbed, leftovers
    make_room()
    tb = LocalTestbed.up(desc)
    yield tb
    tb.destroy()
    assert leftovers() == []


@pytest.fixture(scope="session", autouse=True)
def results_dir(tmp_path_factory):
    """Run directories of the tests go to a temporary directory, never into results/."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("G5KDEPLOY_RESULTS", str(tmp_path_factory.mktemp("results")))
        yield


@pytest.fixture
def no_testbed_up():
    """Tests that bring up their own testbed need the machine free of another one."""
    make_room()


def invoke(*args, user=None, timeout=300) -> subprocess.CompletedProcess:
    """Run `invoke ARGS` like a user would, from the project directory."""
    argv = [sys.executable, "-m", "invoke", *args]
    env = dict(os.environ)
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
        env["HOME"] = "/tmp"
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server(directory):
    """A real redis-server of our own on a free local port: (its process, host:port)."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed: run ./bootstrap.sh")
    port = free_port()
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--dir", str(directory)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        yield p, f"127.0.0.1:{port}"
    finally:
        p.kill()
        p.wait()


@pytest.fixture(scope="session")
def redis_address(tmp_path_factory):
    """The tests' shared redis-server."""
    with redis_server(tmp_path_factory.mktemp("redis")) as (_, address):
        yield address


# -- engine unit tests: no root, no testbed ------------------------------------------------------
from g5kdeploy.testbed.oar import Scheduler  # noqa: E402  (after the fixtures' imports)


class FakeScheduler(Scheduler):
    """An OAR that runs nothing: jobs start at once on the first free hosts of their site
    (what Scheduler derives from its calls, e.g. `holders`, comes with it)."""

    def __init__(self, testbed):
        self.testbed, self.jobs, self.next_id = testbed, {}, 1

    def submit(self, site, resources, walltime_s, name, command, properties=None, types=(), queue=None, project=None,
               reservation=None):
        from g5kdeploy.testbed.oar import Job
        nodes = int(resources.removeprefix("nodes="))          # counts only
        held = {h for j in self.jobs.values() if j.live for h in j.hosts}
        free = [n.hostname for n in self.testbed.nodes() if n.site == site and n.hostname not in held]
        job = Job(site, self.next_id, "running" if len(free) >= nodes else "waiting", name,
                  free[:nodes] if len(free) >= nodes else [], time.time(), walltime_s, tuple(types))
        self.jobs[job.id], self.next_id = job, self.next_id + 1
        return job.id

    def job(self, site, job):
        return self.jobs[job]

    def live(self, site, name):
        return [j for j in self.on_site(site) if j.name == name]

    def on_site(self, site):
        return [j for j in self.jobs.values() if j.live and j.site == site]

    def delete(self, site, *jobs):
        for j in jobs:
            self.jobs[j].state = "terminated"

    def extend(self, site, job, seconds):
        self.jobs[job].walltime_s += seconds

    def down(self, site):
        return {}

    def wait(self, jobs, timeout=300):
        from g5kdeploy.errors import UserError
        if waiting := [f"{s}:{j}" for s, j in jobs.items() if self.jobs[j].state != "running"]:
            raise UserError(f"OAR jobs not running ({', '.join(waiting)})")
        return {s: self.jobs[j] for s, j in jobs.items()}

    def wait_ended(self, pairs, timeout=60):
        assert not any(self.jobs[j].live for _, j in pairs)


def fake_testbed(features=(), queues=False, description=SMALL):
    """A testbed of the small description whose OAR and nodes are in memory: for the engine's
    parameter parsing, feature refusal and release on every exit, in milliseconds."""
    from g5kdeploy.progress import Outcome
    from g5kdeploy.testbed import Testbed
    from g5kdeploy.testbed import description as descriptions

    class Fake(Testbed):
        kind, environments = "fake", ()

        def __init__(self):
            super().__init__()
            self.description = descriptions.load(description)
            self.features, self.queues = frozenset(features), queues
            self.scheduler = FakeScheduler(self)

        def nodes(self, hosts=None):
            from g5kdeploy.testbed.model import expand_hostlist
            every = self.description.nodes()
            names = set(expand_hostlist(hosts)) if hosts else set()
            return every if hosts is None else type(every)(n for n in every if {n.hostname, n.short} & names)

        def reimage(self, nodes, environment):
            return {n.hostname: Outcome(n, True) for n in nodes}

        def deployments(self, nodes):
            return {}

        def ssh_settings(self, deploy=True):
            return {"user": "root"}

        def output_dir(self):
            return Path("/nonexistent")

        def destroy(self):
            pass

    return Fake()


def experiment_of(name, main, needs=(), **defaults):
    """An Experiment whose main is `main(run, testbed, **params)`, its parameters `defaults`."""
    import dataclasses
    from g5kdeploy import engine
    params = dataclasses.make_dataclass(
        "Params", [(k, type(v), dataclasses.field(default=v)) for k, v in defaults.items()], frozen=True)

    class Function(engine.Experiment):
        Params = params

        def needs(self, p):
            return set(needs)

        def main(self, run, testbed, p):
            main(run, testbed, **dataclasses.asdict(p))

    Function.name = name
    return Function()


def drawn(experiment, run_dir, outdir) -> dict[str, list[dict]]:
    """Redraw a run's figures into outdir; per PNG, what each of its axes shows: title,
    axis labels, scales, the labels of its lines and of its legend, and its bar count."""
    from matplotlib.figure import Figure
    from g5kdeploy.results import load
    seen, save = {}, Figure.savefig

    def record(fig, path, *args, **kwargs):
        seen[Path(path).name] = [{
            "title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
            "xscale": ax.get_xscale(), "yscale": ax.get_yscale(),
            "lines": [line.get_label() for line in ax.get_lines()],
            "legend": [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else [],
            "bars": len(ax.patches), "visible": ax.axison} for ax in fig.axes]
        return save(fig, path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", record)
        paths = experiment.figures(load(run_dir), Path(outdir))
    assert {p.name for p in paths if p.suffix == ".png"} == set(seen)
    return seen
