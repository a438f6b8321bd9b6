"""Where nodes come from: the Testbed interface and its backends (local, g5k).

Reserving (adopt the enclosing job, reuse a live job by name, or submit), releasing,
walltime, deployment thresholds and the EnOSlib export are the same on both backends
and live here; a backend gives its OAR (`scheduler`), its nodes and its reimaging."""
from __future__ import annotations

import enum
import os
import re
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
from g5kdeploy.testbed.model import Cluster, Demand, Node, NodeSet, Reservation, expand_hostlist, heads, parse_walltime
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
    GATEWAYS = "programmable site gateways (where ViNe routers run)"


class Testbed(ABC):
    """The seam between the emulated and the real Grid'5000 (see DESIGN.md)."""
    kind: str                    # what testbed.open() calls it
    description: Description
    scheduler: Scheduler
    environments: tuple[str, ...]
    features: frozenset[Feature] = frozenset()
    queues = True                # a request that busy nodes cannot meet waits (False: refused at once)
    excluded: frozenset[str] = frozenset()   # sites left out of the description by configuration
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
    def deployments(self, nodes: NodeSet) -> dict[str, tuple[str, float]]:
        """Per node, its last deployment (environment, unix time) if that deployment succeeded
        on it (what Kadeploy knows; nodes with none, or whose last one failed, are left out)."""

    @abstractmethod
    def ssh_settings(self, deploy: bool = True) -> dict:
        """How to reach nodes: user, keyfile, port, an ssh gateway if any; root for deploy
        jobs' nodes, else the user and `sudo` (the command that gives root there)."""

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

    def gateway(self, site: str) -> tuple[str, list[str]]:
        """(public address, command prefix to run a program there) of a site's gateway: the
        one host of a site that others may reach, whatever its access (ViNe's routers)."""
        self.require(Feature.GATEWAYS)

    def require(self, *features: Feature) -> None:
        """A one-line UserError naming what this backend lacks."""
        if missing := [f.value for f in features if f not in self.features]:
            raise UserError(f"the {self.kind} testbed has no {' nor '.join(missing)}: "
                            "use the local testbed (--testbed local)")

    @abstractmethod
    def destroy(self) -> None:
        """Remove everything the testbed created."""

    # -- OAR ---------------------------------------------------------------------------------
    def reserve(self, request: dict, walltime: str | int = "1:00", name: str = "g5kdeploy",
                deploy: bool = True, properties: str | None = None, timeout: float | None = None,
                submitted_hook=None, queue: str | None = None, project: str | None = None,
                reservation: datetime | None = None) -> Reservation:
        """Nodes per site (see `demands`: a count, {cluster: count}, a hostlist or OAR resources
        per site). Inside an OAR job (OAR_JOB_ID, OAR_NODEFILE) that job's nodes are
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
        wanted = self.demands(request, deploy, queue)
        adopted = self._checked(wanted, name, deploy, queue)
        submitted: dict[str, int] = {}
        try:
            for site in (s for s in request if s not in adopted):
                submitted[site] = self.scheduler.submit(site, wanted[site].resources, seconds, name, HOLD, properties,
                                                        self._types(wanted[site], deploy), queue, project, start)
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
        for site, count in ((s, d.count) for s, d in wanted.items()):
            hosts = [h for h in states[site].hosts if self.node(h).site == site]
            if len(hosts) < count:
                self._end(submitted)
                raise UserError(f"OAR job {jobs[site]} ({states[site].name}) has {len(hosts)} nodes on {site}, "
                                f"{count} wanted: ask for {len(hosts)} or end it (invoke release "
                                f"--name {states[site].name})")
            nodes += [self.node(h) for h in hosts[:count]]
        res = Reservation(jobs, nodes, datetime.fromtimestamp(min(s.end for s in states.values())), name,
                          adopted={s: j.id for s, j in adopted.items()}, deploy=deploy)
        self.reservations.append(res)
        self.used.append(res)
        return res

    def check_request(self, request: dict, name: str, deploy: bool = True, queue: str | None = None) -> dict[str, Job]:
        """A one-line UserError for a request this testbed cannot meet now (see `demands`; nodes
        OAR will not give, dead or absent; a job to adopt that is not a deploy job when nodes
        are to be deployed; locally, nodes that other jobs hold); else the jobs it would adopt."""
        return self._checked(self.demands(request, deploy, queue), name, deploy, queue)

    def _checked(self, wanted: dict[str, Demand], name: str, deploy: bool, queue: str | None) -> dict[str, Job]:
        """check_request of the demands already made of a request."""
        self._check_alive(wanted, deploy, queue)
        adopted = self._adoptable(wanted, name)
        if deploy and (plain := [j for j in adopted.values() if "deploy" not in j.types]):
            j = plain[0]
            raise UserError(f"OAR job {j.id} ({j.name or 'no name'}) on {j.site} is not a deploy job, and Kadeploy "
                            f"deploys only nodes of one: end it (invoke release --name {j.name}) or use another name")
        if not self.queues:
            self._check_free({s: d for s, d in wanted.items() if s not in adopted}, deploy, queue)
        return adopted

    def _adoptable(self, request: dict, name: str) -> dict[str, Job]:
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

    def _check_alive(self, wanted: dict[str, Demand], deploy: bool, queue: str | None) -> None:
        """Refuse at once what the nodes OAR can give (not dead, absent, suspected) cannot."""
        for site, d in wanted.items():
            if not (down := self.scheduler.down(site)):
                continue
            fit = self.eligible(d, deploy, queue)
            if d.raw or d.count <= len(up := [n for n in fit if n.hostname not in down]):
                continue
            lost = ", ".join(f"{n.short} {down[n.hostname]}" for n in fit if n.hostname in down)
            raise UserError(f"{site}: {d.count} nodes wanted, {len(up)} that OAR can give ({lost}): "
                            f"ask for {len(up) or 'other nodes'}")

    def _check_free(self, wanted: dict[str, Demand], deploy: bool, queue: str | None) -> None:
        """Refuse at once what the nodes that other jobs leave free cannot give."""
        for site, d in ((s, d) for s, d in wanted.items() if not d.raw):    # OAR alone reads its own resources
            holders = [j for j in self.scheduler.on_site(site) if j.hosts]
            taken = {h for j in holders for h in j.hosts}
            count, free = d.count, len([n for n in self.eligible(d, deploy, queue) if n.hostname not in taken])
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

    def submit(self, task: str, request: dict, walltime: str | int, name: str) -> dict[str, int]:
        """An OAR batch job that runs `invoke <task>` on the frontend (a deploy job, as on
        Grid'5000) with the first site's nodes, and jobs of the same name on the other sites
        that the task adopts and that end with it. The jobs per site."""
        seconds = parse_walltime(walltime)
        wanted = self.demands(request)
        self._check_alive(wanted, True, None)
        if live := self.live(name, request):
            raise UserError(f"live OAR jobs are named {name!r} already ({', '.join(str(j.id) for j in live)}): "
                            f"choose another --name or end them (invoke release --name {name})")
        if not self.queues:
            self._check_free(wanted, True, None)
        jobs: dict[str, int] = {}
        try:
            first, *others = request
            for site in others:
                jobs[site] = self.scheduler.submit(site, wanted[site].resources, seconds, name, HOLD,
                                                   types=self._types(wanted[site], True))
            jobs[first] = self.scheduler.submit(first, wanted[first].resources, seconds, name,
                                                self.batch_command(task, name), types=self._types(wanted[first], True))
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

    def demands(self, request: dict, deploy: bool = True, queue: str | None = None) -> dict[str, Demand]:
        """Each site's part of a request, checked against the description (one-line UserErrors):
        per site a node count (`{"rennes": 4}`), nodes per cluster (`{"rennes": {"paradent":
        4}}`), a hostlist of its nodes (`"paradent-[1-4]"`), or OAR's own resources string
        (`"{gpu_count>0}/nodes=2"`, anything with `nodes=`: passed as is). A count must fit the
        nodes that such a job may have (Cluster.takes: the queue's clusters, deployable ones
        for a deploy job, exotic ones only when named)."""
        sites = self.description.sites
        if not request:
            raise UserError("empty reservation: ask for nodes per site, e.g. rennes:2,nancy:1")
        out: dict[str, Demand] = {}
        for site, want in request.items():
            if site in self.excluded:
                raise UserError(f"site {site} is excluded (excluded_sites in the configuration): "
                                f"use {', '.join(sites)}, or take it out of excluded_sites")
            if site not in sites:
                raise UserError(f"unknown site {site!r}: this testbed has {', '.join(sites)}")
            if sites[site].kind != "grid5000":
                raise UserError(f"site {site} is a FutureGrid cloud: nobody reserves its nodes; ask its cloud for "
                                f"instances (aws --profile {site} ec2 ..., the clouds file)")
            out[site] = d = _demand(site, want, self)
            for c in self._clusters(d):
                if not c.takes(queue, deploy, d.named):
                    kind = f"{queue or 'default'}-queue {'deploy ' if deploy else ''}jobs"
                    raise UserError(f"{site}: cluster {c.name} takes no {kind} (queues {', '.join(c.queues)}"
                                    f"{', exotic' if c.exotic else ''}{'' if c.deploy else ', not deployable'}): "
                                    "name another cluster, or another queue")
            if not d.raw and d.count > (room := len(self.eligible(d, deploy, queue))):
                if d.clusters or d.hosts or room == sites[site].size:
                    raise UserError(f"{site} has {room} nodes, {d.count} requested: ask for fewer")
                raise UserError(f"{site} has {room} nodes for {queue or 'default'}-queue {'deploy ' if deploy else ''}"
                                f"jobs (of {sites[site].size}; exotic ones only by name), {d.count} requested: "
                                "ask for fewer")
        return out

    def _clusters(self, d: Demand) -> list[Cluster]:
        """The clusters a demand names, by name or through its hosts."""
        named = {c for c, _ in d.clusters} | {self.node(h).cluster for h in d.hosts}
        return [c for c in self.description.sites[d.site].clusters if c.name in named]

    def eligible(self, d: Demand, deploy: bool = True, queue: str | None = None) -> NodeSet:
        """The nodes of its site that a job asking `d` may have (what the description says)."""
        clusters = {c.name: c for c in self.description.sites[d.site].clusters}
        named = {c for c, _ in d.clusters}
        return NodeSet(n for n in self.nodes() if n.site == d.site
                       and (n.hostname in d.hosts if d.hosts else n.cluster in named if named else True)
                       and clusters[n.cluster].takes(queue, deploy, d.named))

    def available(self, site: str, deploy: bool = True, queue: str | None = None) -> NodeSet:
        """The site's nodes that a job asking for a count may have now: those the description
        allows it (`eligible`) that OAR does not hold down (dead, absent, suspected)."""
        down = self.scheduler.down(site)
        return NodeSet(n for n in self.eligible(Demand(site, 0), deploy, queue) if n.hostname not in down)

    def _types(self, d: Demand, deploy: bool) -> tuple[str, ...]:
        """OAR job types: deploy, and exotic when it names exotic clusters (as Grid'5000 requires)."""
        return ("deploy",) * deploy + ("exotic",) * any(c.exotic for c in self._clusters(d))

    def node(self, host: str) -> Node:
        """The node of a hostname (full, `name.site` or short)."""
        return self.nodes(host)[0]

    # -- Kadeploy ------------------------------------------------------------------------------
    def deploy(self, nodes, environment: str = "debian12-g5kdeploy", min: int | None = None,
               tries: int = 2, force_deploy: bool = False) -> dict[str, Outcome]:
        """Deploy nodes, retrying those that fail. Goes on when at least `min` (default: all)
        succeeded, recording the others in `failed_nodes`; else a UserError naming them.
        Nodes that run `environment` already, deployed since their OAR job began, are left as
        they are (their outcome's value is "already deployed") unless `force_deploy`."""
        if self.environments and environment not in self.environments:
            raise UserError(f"unknown environment {environment!r}: available: {', '.join(self.environments)}")
        nodes = self.nodes(nodes) if isinstance(nodes, str) else NodeSet(nodes)
        need = len(nodes) if min is None else min
        ready = NodeSet() if force_deploy else self.deployed(nodes, environment)
        outcomes = {n.hostname: Outcome(n, True, "already deployed") for n in ready}
        if ready:
            console.print(f"deploy: {ready} run {environment} since their job began: not reimaged "
                          "(force_deploy=True reimages them)")
        todo = NodeSet(n for n in nodes if n not in ready)
        for _ in range(tries if todo else 0):
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

    def deployed(self, nodes: NodeSet, environment: str) -> NodeSet:
        """The nodes whose last deployment, made since the running job that holds them began,
        put `environment` on them (a node's job's end gives it back to its standard system).
        OAR and the API give whole seconds (OAR rounds its start): a second of slack."""
        began = {h: j.start for site in nodes.by_site() for h, j in self.scheduler.holders(site).items() if j.start}
        last = self.deployments(nodes)
        return NodeSet(n for n in nodes if n.hostname in last and n.hostname in began
                       and last[n.hostname][0] == self.kadeploy_name(environment)
                       and last[n.hostname][1] >= began[n.hostname] - 1)

    def kadeploy_name(self, environment: str) -> str:
        """What the environment is called where it is deployed."""
        return environment

    # -- interoperability ----------------------------------------------------------------------
    def roles(self, reservation: Reservation):
        """The reservation as EnOSlib `Roles`: one role per site and per cluster, and `all`."""
        from enoslib.objects import Host, Roles
        s = self.ssh_settings(reservation.deploy)
        extra = {k: s[k] for k in ("gateway", "gateway_user") if s.get(k)}
        roles: dict[str, list] = {}
        for n in reservation.nodes:
            host = Host(n.hostname, alias=n.short, user=s["user"], keyfile=s.get("keyfile"),
                        port=s.get("port", 22), extra=dict(extra))
            for role in (n.site, n.cluster, "all"):
                roles.setdefault(role, []).append(host)
        return Roles(roles)


def _demand(site: str, want, testbed: "Testbed") -> Demand:
    """One site's request (see Testbed.demands), its names checked against the testbed."""
    where = f"{site}: ask for a positive number of nodes, {{cluster: nodes}}, a hostlist or OAR resources"
    if isinstance(want, int) and not isinstance(want, bool):
        if want <= 0:
            raise UserError(f"{where} (got {want!r})")
        return Demand(site, want)
    if isinstance(want, dict) and want:
        clusters = {c.name: c for c in testbed.description.sites[site].clusters}
        for c, n in want.items():
            if c not in clusters:
                raise UserError(f"{site} has no cluster {c!r}: it has {', '.join(clusters)}")
            if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= clusters[c].nodes:
                raise UserError(f"{site}: cluster {c} has {clusters[c].nodes} nodes, {n!r} requested: ask for 1 to "
                                f"{clusters[c].nodes}")
        return Demand(site, sum(want.values()), tuple(want.items()))
    if isinstance(want, str) and "=" in want:
        if not (counts := [int(n) for n in re.findall(r"nodes=(\d+)", want)]) or not all(counts):
            raise UserError(f"{site}: OAR resources {want!r} ask for no nodes: write them like {{cluster='a'}}/nodes=2")
        return Demand(site, sum(counts), raw=want)
    if isinstance(want, str) and want.strip():
        try:
            hosts = testbed.nodes(",".join(f"{h}.{site}" if "." not in h else h for h in expand_hostlist(want)))
        except UserError as e:
            raise UserError(f"{site}:{want} is no node count, cluster=count nor hostlist of {site}'s nodes ({e})") from None
        if others := [n.short for n in hosts if n.site != site]:
            raise UserError(f"{site}: {', '.join(others)} are not nodes of {site}")
        return Demand(site, len(set(hosts)), hosts=tuple(sorted({n.hostname for n in hosts})))
    raise UserError(f"{where} (got {want!r})")


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
