"""Where nodes come from: the Testbed interface and its backends (local, g5k).

Reserving (adopt the enclosing job, reuse a live job by name, or submit), releasing,
walltime, deployment thresholds and the EnOSlib export are the same on both backends
and live here; a backend gives its OAR (`scheduler`), its nodes and its reimaging."""
from __future__ import annotations

import enum
import os
import shlex
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path

from g5kdeploy.errors import UserError
from g5kdeploy.progress import Outcome, console
from g5kdeploy.testbed.description import Description
from g5kdeploy.testbed.model import Node, NodeSet, Reservation, heads, parse_walltime
from g5kdeploy.testbed.oar import Job, Scheduler, enclosing_job

__all__ = ["Feature", "Testbed", "Node", "NodeSet", "Reservation", "heads", "open"]
KINDS = ("local", "g5k")
# what a reservation's jobs run: OAR ends a job when its command exits, so a command that
# sleeps for the walltime would end the job at its first end, extension or not (EnOSlib and
# execo_g5k sleep for a year too); the walltime is what ends it
HOLD = "sleep 31536000"


class Feature(enum.Enum):
    """What only some backends can do; an experiment names those it needs."""
    SHAPING = "link shaping (tc)"
    RATES = "configured link rates"
    WAN_BYTES = "WAN byte counters"


class Testbed(ABC):
    """The seam between the emulated and the real Grid'5000 (see DESIGN.md)."""
    kind: str                    # what testbed.open() calls it
    description: Description
    scheduler: Scheduler
    environments: tuple[str, ...]
    features: frozenset[Feature] = frozenset()
    queues = True                # a request that busy nodes cannot meet waits (False: refused at once)
    batch_invoke = f"{shlex.quote(sys.executable)} -m invoke"    # what a batch job runs tasks with

    def __init__(self) -> None:
        self.reservations: list[Reservation] = []   # live ones
        self.used: list[Reservation] = []           # every one made through this object
        self.failed_nodes: dict[str, str] = {}     # hostname -> why it was left out
        self._deadline: tuple | None = None        # (reservations, when asked, deadline)

    # -- backend ---------------------------------------------------------------------------
    @abstractmethod
    def nodes(self, hosts: str | None = None) -> NodeSet:
        """All nodes, or those of a hostlist."""

    @abstractmethod
    def reimage(self, nodes: NodeSet, environment: str) -> dict[str, Outcome]:
        """Deploy `environment` on nodes once (Kadeploy); per-node outcome by hostname."""

    @abstractmethod
    def ssh_settings(self) -> dict:
        """How to reach nodes as root: user, keyfile, port, and an ssh gateway if any."""

    @abstractmethod
    def output_dir(self) -> Path:
        """Where OAR writes batch jobs' OAR.<id>.stdout and .stderr."""

    def shape(self, a: str, b: str, rate: str) -> None:
        """Limit traffic between sites a and b (a == b: the site's LAN links)."""
        self.require(Feature.SHAPING)

    def rates(self) -> dict:
        """Configured rates in bit/s: {'lan': {site: r}, 'wan': {'a|b': r}}."""
        self.require(Feature.RATES)

    def wan_bytes(self) -> dict[str, dict[str, int]]:
        """Bytes that left (tx) and entered (rx) each site through its WAN uplink so far."""
        self.require(Feature.WAN_BYTES)

    def require(self, *features: Feature) -> None:
        """A one-line UserError naming what this backend lacks."""
        if missing := [f.value for f in features if f not in self.features]:
            raise UserError(f"the {self.kind} testbed has no {' nor '.join(missing)}: "
                            "use the local testbed (--testbed local)")

    @abstractmethod
    def destroy(self) -> None:
        """Remove everything the testbed created."""

    # -- OAR ---------------------------------------------------------------------------------
    def reserve(self, request: dict[str, int], walltime: str | int = "1:00", name: str = "g5kdeploy",
                deploy: bool = True, properties: str | None = None, timeout: float | None = None,
                submitted_hook=None, queue: str | None = None, project: str | None = None,
                reservation: datetime | None = None) -> Reservation:
        """Nodes per site. Inside an OAR job (OAR_JOB_ID, OAR_NODEFILE) that job's nodes are
        taken, with the live jobs of the same name on other sites; else a live job named
        `name` is adopted per site; else one job per site is submitted (`submitted_hook(site,
        job)` is called as soon as each is). `timeout`: how long to wait for them to run
        (default: as long as OAR queues them where requests queue; 300 s where they cannot,
        the local testbed refusing at once what busy nodes cannot give; until it starts for
        an advance `reservation`). `queue` (default, production, besteffort...) and `project`
        are OAR's; an advance `reservation` starts every site's job at that date."""
        seconds = parse_walltime(walltime)
        start = reservation.timestamp() if reservation else None
        if start and start < time.time() - 60:
            raise UserError(f"reservation {reservation:%Y-%m-%d %H:%M:%S} is in the past: give a date to come")
        adopted = self.check_request(request, name, deploy)
        submitted: dict[str, int] = {}
        try:
            for site in (s for s in request if s not in adopted):
                submitted[site] = self.scheduler.submit(site, request[site], seconds, name, HOLD, properties,
                                                        ("deploy",) if deploy else (), queue, project, start)
                self._submitted(site, submitted[site])
                if submitted_hook:
                    submitted_hook(site, submitted[site])
            jobs = {**{s: j.id for s, j in adopted.items()}, **submitted}
            with console.status(f"waiting for OAR jobs {', '.join(f'{s}:{j}' for s, j in jobs.items())}"):
                if timeout is None and not (self.queues or start):
                    timeout = 300            # what cannot queue runs at once, or not at all
                states = self.scheduler.wait(jobs, timeout)
        except BaseException:
            self._end(submitted)
            raise
        nodes = NodeSet()
        for site, count in request.items():
            hosts = [h for h in states[site].hosts if self.node(h).site == site]
            if len(hosts) < count:
                self._end(submitted)
                raise UserError(f"OAR job {jobs[site]} ({states[site].name}) has {len(hosts)} nodes on {site}, "
                                f"{count} wanted: ask for {len(hosts)} or end it (invoke release "
                                f"--name {states[site].name})")
            nodes += [self.node(h) for h in hosts[:count]]
        res = Reservation(jobs, nodes, datetime.fromtimestamp(min(s.end for s in states.values())), name,
                          adopted={s: j.id for s, j in adopted.items()})
        self.reservations.append(res)
        self.used.append(res)
        return res

    def check_request(self, request: dict[str, int], name: str, deploy: bool = True) -> dict[str, Job]:
        """A one-line UserError for a request this testbed cannot meet now (unknown site, too
        many nodes, a job to adopt that is not a deploy job when nodes are to be deployed, and
        locally nodes that other jobs hold); else the jobs it would adopt."""
        self.check_counts(request)
        adopted = self._adoptable(request, name)
        if deploy and (plain := [j for j in adopted.values() if "deploy" not in j.types]):
            j = plain[0]
            raise UserError(f"OAR job {j.id} ({j.name or 'no name'}) on {j.site} is not a deploy job, and Kadeploy "
                            f"deploys only nodes of one: end it (invoke release --name {j.name}) or use another name")
        if not self.queues:
            self._check_free({s: n for s, n in request.items() if s not in adopted})
        return adopted

    def _adoptable(self, request: dict[str, int], name: str) -> dict[str, Job]:
        """Per site, the job to take instead of submitting one."""
        out: dict[str, Job] = {}
        if inside := self.enclosing():
            name = inside.name or name     # the jobs `invoke submit` made on other sites share it
            out |= {s: inside for s in {self.node(h).site for h in inside.hosts} if s in request}
        for site in (s for s in request if s not in out):
            live = self.scheduler.live(site, name)
            if len(live) > 1:
                raise UserError(f"{len(live)} live OAR jobs named {name!r} on {site} "
                                f"({', '.join(str(j.id) for j in live)}): end all but one, or use another name")
            if live:
                out[site] = live[0]
        return out

    @contextmanager
    def reserved(self, request: dict[str, int], walltime: str | int = "1:00", name: str = "g5kdeploy",
                 keep: bool = False, **options):
        """`with testbed.reserved(...) as res:` reserve, and release once on every exit
        (exception, Ctrl-C, SIGTERM); `keep`: only when the block fails (the jobs outlive it)."""
        with self.releasing(self.reserve(request, walltime, name, **options), keep) as res:
            yield res

    @contextmanager
    def releasing(self, res: Reservation, keep: bool = False, around=nullcontext):
        """Release `res` when the block ends (`keep`: only if it fails), inside `around()`,
        with Ctrl-C and SIGTERM held until it is done."""
        ok = False
        try:
            yield res
            ok = True
        finally:
            if not (keep and ok):
                with around(), signals_held():
                    self.release(res)

    def _check_free(self, request: dict[str, int]) -> None:
        """Refuse at once what the nodes that other jobs leave free cannot give."""
        for site, count in request.items():
            holders = [j for j in self.scheduler.on_site(site) if j.hosts]
            free = self.description.sites[site].size - len({h for j in holders for h in j.hosts})
            if count > free:
                held = ", ".join(f"{j.id} ({j.name or 'no name'}: {len(j.hosts)} nodes)" for j in holders)
                ends = sorted({"invoke nimbus-destroy" if j.name == "nimbus" else f"invoke release --name {j.name}"
                               for j in holders})
                raise UserError(f"{site}: {count} nodes wanted, {free} free: OAR jobs {held} hold the others; "
                                f"free them ({', '.join(ends)}) or ask for {free or 'fewer'}")

    def _submitted(self, site: str, job: int) -> None:
        """Hook: a job was submitted (the local testbed journals it)."""

    def _ended(self, site: str, job: int) -> None:
        """Hook: a submitted job was ended."""

    def _end(self, jobs: dict[str, int]) -> None:
        for site, job in jobs.items():
            self.scheduler.delete(site, job)
        self.scheduler.wait_ended(list(jobs.items()))
        for site, job in jobs.items():
            self._ended(site, job)

    def release(self, reservation: Reservation) -> None:
        """End the jobs this reservation submitted; adopted jobs belong to whoever made them."""
        self._end({s: j for s, j in reservation.jobs.items() if s not in reservation.adopted})
        if reservation in self.reservations:
            self.reservations.remove(reservation)

    def enclosing(self) -> Job | None:
        """The OAR job this runs inside (OAR_JOB_ID), its hosts those of OAR_NODEFILE."""
        if not (inside := enclosing_job()):
            return None
        job_id, hosts = inside
        job = self.scheduler.job(self.node(hosts[0]).site, job_id)
        job.hosts = hosts
        return job

    def live(self, name: str, sites=None) -> list[Job]:
        """The live jobs of that name on these sites (default: all)."""
        return [j for s in (sites or self.description.sites) for j in self.scheduler.live(s, name)]

    def release_named(self, name: str) -> list[Job]:
        """End the live jobs of that name (but the enclosing one); the jobs ended."""
        inside = self.enclosing()
        jobs = [j for j in self.live(name) if not inside or j.id != inside.id]
        for j in jobs:
            self.scheduler.delete(j.site, j.id)
        self.scheduler.wait_ended([(j.site, j.id) for j in jobs])
        return jobs

    def submit(self, task: str, request: dict[str, int], walltime: str | int, name: str) -> dict[str, int]:
        """An OAR batch job that runs `invoke <task>` on the frontend (a deploy job, as on
        Grid'5000) with the first site's nodes, and jobs of the same name on the other sites
        that the task adopts and that end with it. The jobs per site."""
        seconds = parse_walltime(walltime)
        self.check_counts(request)
        if live := self.live(name, request):
            raise UserError(f"live OAR jobs are named {name!r} already ({', '.join(str(j.id) for j in live)}): "
                            f"choose another --name or end them (invoke release --name {name})")
        if not self.queues:
            self._check_free(request)
        jobs: dict[str, int] = {}
        try:
            first, *others = request
            for site in others:
                jobs[site] = self.scheduler.submit(site, request[site], seconds, name, HOLD,
                                                   types=("deploy",))
            jobs[first] = self.scheduler.submit(first, request[first], seconds, name,
                                                self.batch_command(task, name), types=("deploy",))
        except BaseException:
            self._end(jobs)
            raise
        return jobs

    def batch_command(self, task: str, name: str) -> str:
        """The batch job's shell command: this checkout's `invoke <task>` on this testbed with
        the same results root, then `invoke release` of the batch's other jobs; the task's exit code."""
        invoke = self.batch_invoke
        env = {"G5KDEPLOY_TESTBED": shlex.quote(self.kind),
               "G5KDEPLOY_RESULTS": self.batch_path(Path(os.environ.get("G5KDEPLOY_RESULTS", "results")).absolute())}
        if "G5KDEPLOY_HOME" in os.environ:
            env["G5KDEPLOY_HOME"] = self.batch_path(Path(os.environ["G5KDEPLOY_HOME"]).absolute())
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        return (f"cd {self.batch_path(Path.cwd())} && export {exports} && "
                f"{{ {invoke} {task}; rc=$?; {invoke} release --name {shlex.quote(name)}; exit $rc; }}")

    def batch_path(self, path: Path) -> str:
        """A path of this machine as the batch job's shell reaches it (quoted)."""
        return shlex.quote(str(path))

    def deadline(self, max_age: float = 30) -> float | None:
        """When the first live reservation ends (unix time), asked from OAR at most every
        `max_age` seconds: extensions count."""
        key = [id(r) for r in self.reservations]
        if self._deadline and self._deadline[0] == key and time.monotonic() - self._deadline[1] < max_age:
            return self._deadline[2]
        ends = [self.scheduler.job(s, j).end for r in self.reservations for s, j in r.jobs.items()]
        ends = [e for e in ends if e]
        self._deadline = (key, time.monotonic(), min(ends) if ends else None)
        return self._deadline[2]

    def check_counts(self, request: dict[str, int]) -> None:
        """Known sites, and between 1 and the site's size nodes on each."""
        sites = self.description.sites
        if not request:
            raise UserError("empty reservation: ask for nodes per site, e.g. rennes:2,nancy:1")
        for site, count in request.items():
            if site not in sites:
                raise UserError(f"unknown site {site!r}: this testbed has {', '.join(sites)}")
            if not isinstance(count, int) or count <= 0:
                raise UserError(f"{site}: ask for a positive number of nodes (got {count!r})")
            if count > sites[site].size:
                raise UserError(f"{site} has {sites[site].size} nodes, {count} requested: ask for fewer")

    def node(self, host: str) -> Node:
        """The node of a hostname (full, `name.site` or short)."""
        return self.nodes(host)[0]

    # -- Kadeploy ------------------------------------------------------------------------------
    def deploy(self, nodes, environment: str = "debian12-g5kdeploy", min: int | None = None,
               tries: int = 2) -> dict[str, Outcome]:
        """Deploy nodes, retrying those that fail. Goes on when at least `min` (default: all)
        succeeded, recording the others in `failed_nodes`; else a UserError naming them."""
        if self.environments and environment not in self.environments:
            raise UserError(f"unknown environment {environment!r}: available: {', '.join(self.environments)}")
        nodes = self.nodes(nodes) if isinstance(nodes, str) else NodeSet(nodes)
        need = len(nodes) if min is None else min
        outcomes: dict[str, Outcome] = {}
        todo = nodes
        for _ in range(tries):
            t0 = time.monotonic()
            outcomes |= self.reimage(todo, environment)
            todo = NodeSet(n for n in todo if not outcomes[n.hostname].ok)
            if not todo:
                break
            console.print(f"deploy: {todo} failed after {time.monotonic() - t0:.0f} s, retrying")
        failed = {h: o.error for h, o in outcomes.items() if not o.ok}
        ok = len(nodes) - len(failed)
        if ok < need:
            why = "; ".join(f"{h}: {e}" for h, e in failed.items())
            raise UserError(f"deploy: {ok} of {len(nodes)} nodes deployed, {need} needed ({why}): "
                            "retry, or accept fewer with min=")
        self.failed_nodes |= failed
        return outcomes

    # -- interoperability ----------------------------------------------------------------------
    def roles(self, reservation: Reservation):
        """The reservation as EnOSlib `Roles`: one role per site and per cluster, and `all`."""
        from enoslib.objects import Host, Roles
        s = self.ssh_settings()
        extra = {k: s[k] for k in ("gateway", "gateway_user") if s.get(k)}
        roles: dict[str, list] = {}
        for n in reservation.nodes:
            host = Host(n.hostname, alias=n.short, user=s["user"], keyfile=s.get("keyfile"),
                        port=s.get("port", 22), extra=dict(extra))
            for role in (n.site, n.cluster, "all"):
                roles.setdefault(role, []).append(host)
        return Roles(roles)


@contextmanager
def signals_held():
    """Ctrl-C and SIGTERM wait until the block ends (a release is not cut in half), then
    reach their handlers. Only the main thread can hold them; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])


def open(kind: str = "local", **kwargs) -> Testbed:  # mirrors DESIGN.md
    """The running testbed of that kind."""
    if kind == "local":
        from g5kdeploy.testbed.local import LocalTestbed
        return LocalTestbed.attach(**kwargs)
    if kind == "g5k":
        from g5kdeploy.testbed.g5k import G5kTestbed
        return G5kTestbed.connect(**kwargs)
    raise UserError(f"unknown testbed kind {kind!r}: use one of {', '.join(KINDS)}")
