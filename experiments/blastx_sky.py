"""blastx-sky: BLASTx on a sky-computing platform of several sites (thesis §3.3–3.7).

A Dask scheduler and the job's client on the master; workers on every site, joining over
the shaped WAN, each with `threads_per_worker` threads. `workers_on=nodes`: the master is
the first node of the first site, one worker per reserved node. `workers_on=instances`: the
master and the workers are instances (IMAGE: Dask and BLAST+) asked from each site's cloud
through its EC2 API: on a Grid'5000 site a Nimbus-style cloud deployed on the reservation
(one VMM per instance, plus one for the master on `scheduler_site`), on a FutureGrid site
the testbed's own cloud (testbed-up's; nothing reserved); each instance gets the sources,
the database, the queries and the platform's TLS credentials over ssh with a key pair of the
run's. When a site of the run is not open (firewalled, or behind NAT: sky.toml), the run
starts ViNe between its sites (`vine`), so that every instance reaches the master by its
private address. Guests run under TCG on this machine, ~9.5x slower than the nodes
(measured: blastx 18.1 s in a guest, 1.9 s on the host), so give instances small data;
their speedup is taken against a sequential run in one instance. The
data set is generated (seeded: queries back-translated from database proteins, with
mutations, and decoys, so the answer is known) unless query_file / database_fasta are
given; the database is built with makeblastdb and broadcast along a chain to every worker.
One task = blastx on one chunk of queries. Every run's merged hit table must equal the
sequential run's (sha256 of the sorted table).

  * static platforms (`platforms`, Table 3.2): makespan, speedup over the sequential run,
    efficiency. On this machine the cores of the host cap the speedup (every emulated node
    shares them): efficiency is what to read here; on Grid'5000 the same run scales out.
  * elastic extension (`elastic`, §3.7): start on `start`; when `at_fraction` of the tasks
    are done, workers of `add` are started and join the running job. Compared with the
    static run of `start` (baseline) and with the ideal t_x + (T_base - t_x)·c/(c + c_add).
  * worker loss (`loss`): at `at_fraction`, one worker (the last of `workers`) is killed
    (SIGKILL); Dask reschedules its tasks; the hits must not change.

Rows, by `level`:
  data: proteins, queries, database_residues, query_bases, database_bytes, true_found,
    true_total, decoys_hit (of the sequential hit table against the generator's truth)
  ship: host, bytes, time_s (the database's chain broadcast, until every copy is checked)
  sequential: repeat, host, time_s, hits, sha256 (of the sorted hit table)
  run: kind (static|elastic|loss), platform ("rennes:1,nancy:1"), repeat, sites, workers,
    cores, tasks, makespan_s (job submitted -> last task), speedup, efficiency, hits,
    hits_equal; elastic: extended_at_s, joined_at_s, added_cores, baseline_s, ideal_s;
    loss: lost_worker, lost_at_s
  task: kind, platform, repeat, chunk, worker, site, start_s, end_s, queries, hits
  cloud (workers_on=instances): the clouds' deployment rows (as deploy-nimbus)
  instance (workers_on=instances): kind, platform, repeat, name, site, boot_s (RunInstances
    -> sshd), ready_s (-> payload unpacked; the worker starts then)
Each task is also in events.jsonl (stage "blastx-task"), with the extension and the loss."""
from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from dataclasses import dataclass

from g5kdeploy import remote
from g5kdeploy.engine import Experiment, param, reserved, stage, sweep
from g5kdeploy.errors import UserError
from g5kdeploy.nimbus import deploy as clouds_api
from g5kdeploy.nimbus.config import INSTANCE_TYPES
from g5kdeploy.results import Run, pyplot, save_figure
from g5kdeploy.sky import blast, data, platform as sky
from g5kdeploy.testbed import NodeSet, Reservation, Testbed, heads
from g5kdeploy.vine.overlay import Overlay

WORKERS_ON = ("nodes", "instances")
NAN = float("nan")
VINE = ("auto", "on", "off")


@dataclass(frozen=True)
class Elastic:
    """§3.7: start on `start`; when `at_fraction` of the tasks are done, `add` joins."""
    start: dict[str, int]
    add: dict[str, int]
    at_fraction: float


@dataclass(frozen=True)
class Loss:
    """At `at_fraction` of the tasks, the last of `workers` is killed."""
    workers: dict[str, int]
    at_fraction: float


@dataclass(frozen=True)
class Params:
    platforms: list[dict[str, int]] = param([{"rennes": 1}, {"rennes": 2}, {"rennes": 1, "nancy": 1},
                                             {"rennes": 2, "nancy": 2}], "static platforms (Table 3.2)")
    elastic: Elastic | None = param(Elastic({"rennes": 1}, {"nancy": 1}, 0.3), "the elastic run; null: none")
    loss: Loss | None = param(Loss({"rennes": 1, "nancy": 1}, 0.3), "the worker-loss run; null: none")
    proteins: int = param(20000, "generated database proteins")
    queries: int = param(2400, "generated queries")
    decoys: int = param(600, "generated decoy queries (no true hit)")
    seed: int = param(1, "data generator seed")
    chunks: int = param(60, "tasks: query chunks")
    query_file: str | None = param(None, "your own nucleotide FASTA instead of generated queries")
    database_fasta: str | None = param(None, "your own protein FASTA instead of the generated database")
    workers_on: str = param("nodes", " or ".join(WORKERS_ON))
    instance_type: str = param("m1.large", "instances' type (workers_on=instances)")
    scheduler_site: str | None = param(None, "the site whose cloud runs the master (workers_on=instances; "
                                             "default: the first site of the first layout)")
    vine: str = param("auto", "ViNe between the run's sites (workers_on=instances): auto (when one of them is "
                              "not open), on, off")
    threads_per_worker: int = param(1, "threads of each Dask worker")
    repeats: int = param(1, "repeats of every run")
    walltime: str = param("2:00", "OAR walltime, H:MM")
    FULL = {"repeats": 3}


def label(workers: dict[str, int]) -> str:
    return ",".join(f"{s}:{n}" for s, n in workers.items())


def layouts(p: Params) -> list[dict[str, int]]:
    """Every worker layout the run uses."""
    out = list(p.platforms)
    if p.elastic:
        out += [p.elastic.start, p.elastic.add]
    if p.loss:
        out.append(p.loss.workers)
    return out


def first_site(p: Params) -> str:
    return next(iter(layouts(p)[0]))


def master_site(p: Params) -> str:
    return p.scheduler_site or first_site(p)


def sites_used(p: Params) -> list[str]:
    """Every site of the runs: their workers' and the master's."""
    return sorted({s for layout in layouts(p) for s in layout} | {master_site(p)})


def nodes_needed(p: Params, futuregrid=()) -> dict[str, int]:
    """Per site, the most workers any layout asks (the elastic run's start and add together),
    plus the master on the first site; for instances, plus each cloud's service node and the
    master's VMM, and nothing on the `futuregrid` sites (their clouds are the testbed's)."""
    need: dict[str, int] = {}
    grown = [{s: p.elastic.start.get(s, 0) + p.elastic.add.get(s, 0)
              for s in {**p.elastic.start, **p.elastic.add}}] if p.elastic else []
    for layout in list(p.platforms) + grown + ([p.loss.workers] if p.loss else []):
        for site, n in layout.items():
            need[site] = max(need.get(site, 0), n)
    if p.workers_on == "instances":
        need = {site: n + 1 for site, n in need.items() if site not in futuregrid}     # each cloud's service node
        if (master := master_site(p)) not in futuregrid:
            need[master] = need.get(master, 1) + 1
        return need
    need[first_site(p)] += 1
    return need


def _records(path, what: str) -> int:
    if not Path(path).is_file():
        raise UserError(f"{what} {path}: no such file; give a FASTA file, or leave it unset to generate the data")
    n = len(blast.records(Path(path).read_text()))
    if not n:
        raise UserError(f"{what} {path} holds no FASTA record")
    return n


def _check_fraction(value, what: str) -> None:
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = -1
    if not 0 < fraction < 1:
        raise UserError(f"{what} must be a fraction of the tasks between 0 and 1, not {value!r}")


def _spec(p: Params) -> data.Spec:
    return data.Spec(proteins=p.proteins, queries=p.queries, decoys=p.decoys, seed=p.seed)


def prepare(p: Params, work: Path) -> tuple[Path, Path, dict]:
    """The queries, the database (makeblastdb) and the truth when generated."""
    truth: dict = {}
    if p.query_file and p.database_fasta:
        queries, proteins, summary = Path(p.query_file), Path(p.database_fasta), {}
    else:
        summary = data.generate(_spec(p), work)
        queries = Path(p.query_file or work / "queries.fasta")
        proteins = Path(p.database_fasta or work / "proteins.fasta")
        if not p.query_file:
            truth = json.loads((work / "truth.json").read_text())
    db = data.make_database(proteins, work / "db").parent
    summary["database_bytes"] = sum(f.stat().st_size for f in db.iterdir())
    return queries, db, {**summary, "truth": truth}


def _task_rows(run: Run, events: list[dict], host, **key) -> list[dict]:
    t0 = next(e["t"] for e in events if e["event"] == "submitted")
    rows = []
    for e in (e for e in events if e["event"] == "task"):
        row = {"chunk": e["chunk"], "worker": e["worker"], "site": e["worker"].split("/")[0],
               "start_s": e["start"] - t0, "end_s": e["end"] - t0, "queries": e["queries"], "hits": e["chunk_hits"]}
        run.row(level="task", **key, **row)
        run.event("blastx-task", "end", host(e["worker"]), **key, **row)
        rows.append(row)
    return rows


class Workers:
    """Where a layout's workers come from: reserved nodes (one worker each), or instances
    asked from each site's cloud (`clouds`: the clouds file's entries; the run's key pair in
    each, its instances tagged with `owner`)."""

    def __init__(self, nodes: dict[str, list] | None = None, clouds: dict | None = None, instance_type: str = "",
                 owner: str = ""):
        self.free, self.instance_type, self.clouds = nodes or {}, instance_type, {}
        try:
            for site, cloud in (clouds or {}).items():
                self.clouds[site] = sky.Cloud(clouds_api.client(cloud), owner)
                self.clouds[site].open()
        except BaseException:
            self.release()
            raise

    def nodes(self, layout: dict[str, int], taken=()) -> list:
        return [n for site, k in layout.items() for n in [m for m in self.free[site] if m not in taken][:k]]

    def master(self, site: str, payload: Path):
        """An instance of the site's cloud for the scheduler and the job's client; its guest."""
        return sky.ready(self.clouds[site].launch(site, 1, self.instance_type, "dask-scheduler")[0], payload)

    def add(self, plat: sky.Platform, layout: dict[str, int], beside: dict[str, int] | None = None) -> list[str]:
        """Workers of `layout` for a platform (besides those of `beside`, already in it); their names."""
        if self.clouds:
            return [name for site, k in layout.items()
                    for name in plat.add_instances(self.clouds[site], site, k, self.instance_type)]
        return plat.add_workers(self.nodes(layout, taken=self.nodes(beside or {})))

    def release(self) -> None:
        """Terminate the run's instances and delete its key pairs (what runs in the clouds
        besides is not ours: FutureGrid's are shared)."""
        failed = []
        for site, cloud in self.clouds.items():
            try:
                cloud.close()
            except Exception as e:
                failed.append(f"{site}: {e}")
        if failed:
            raise RuntimeError("the run's instances or key pairs were not all removed: " + "; ".join(failed))

    def host(self, worker: str) -> str:
        """The node a worker runs on (its name for an instance)."""
        return next((n.hostname for ns in self.free.values() for n in ns if sky.worker_name(n) == worker), worker)


class Runs:
    """The job runs of one experiment, each on a fresh platform."""

    def __init__(self, run: Run, p: Params, master, workers: Workers, payload: Path | None = None):
        self.run, self.p, self.master, self.workers, self.payload = run, p, master, workers, payload
        self.reference: dict = {}
        self.static: dict[str, list[float]] = {}
        for r in run.rows:            # a resumed run's static runs, done before
            if r.get("level") == "run" and r.get("kind") == "static":
                self.static.setdefault(r["platform"], []).append(r["makespan_s"])

    def one(self, kind: str, layout: dict[str, int], repeat: int, actions=None, chunks: int | None = None) -> dict:
        """Start a platform on `layout`, run the job; its run row (makespan, speedup...)."""
        threads = self.p.threads_per_worker
        with sky.Platform(self.master, threads, self.payload).running() as plat:
            self.workers.add(plat, layout)
            events = plat.job(chunks or self.p.chunks, actions(plat) if actions else None)
            instances = plat.instances()
        key = {"kind": kind, "platform": label(layout), "repeat": repeat}
        for i in instances:           # booted (or not) by now: the platform waited for them
            t = i.times
            self.run.row(level="instance", **key, name=i.name, site=i.site, boot_s=t.get("booted", NAN) - t["asked"],
                         ready_s=t.get("ready", NAN) - t["asked"], error=i.error)
        tasks = _task_rows(self.run, events, self.workers.host, **key)
        submitted = next(e["t"] for e in events if e["event"] == "submitted")
        done = next(e for e in events if e["event"] == "done")
        makespan = done["t"] - submitted
        workers = sum(layout.values())
        reference = self.reference or {"time_s": makespan, "sha256": done["sha256"]}
        row = {**key, "sites": len(layout), "workers": workers, "cores": workers * threads, "tasks": len(tasks),
               "makespan_s": makespan, "speedup": reference["time_s"] / makespan,
               "hits": done["hits"], "hits_equal": done["sha256"] == reference["sha256"],
               "submitted_at": submitted, "events": events, "sha256": done["sha256"]}
        row["efficiency"] = row["speedup"] / row["cores"]
        return row

    def record(self, row: dict) -> dict:
        self.run.row(level="run", **{k: v for k, v in row.items() if k not in ("events", "submitted_at", "sha256")})
        if row["kind"] == "static":
            self.static.setdefault(row["platform"], []).append(row["makespan_s"])
        return row

    def baseline(self, layout: dict[str, int], repeat: int) -> float:
        """The static makespan of a layout (measured now if no static run had it)."""
        if label(layout) not in self.static:
            self.record(self.one("static", layout, repeat))
        return statistics.median(self.static[label(layout)])

    def elastic(self, repeat: int) -> dict:
        e = self.p.elastic
        start, add = e.start, e.add
        row = self.one("elastic", start, repeat,
                       lambda plat: {e.at_fraction: lambda: self.workers.add(plat, add, beside=start)})
        extension = next(x for x in row["events"] if x["event"] == "action")
        joined = min((x["start"] for x in row["events"] if x["event"] == "task" and x["worker"] in extension["result"]),
                     default=float("nan"))      # nan: the job ended before the new workers took a task
        t_x = extension["t"] - row["submitted_at"]
        c, c_add = row["cores"], sum(add.values()) * self.p.threads_per_worker
        base = self.baseline(start, repeat)
        self.run.event("elastic", "extend", None, at_s=t_x, workers=extension["result"], fraction=e.at_fraction)
        row.update(platform=f"{label(start)}+{label(add)}", extended_at_s=t_x,
                   joined_at_s=joined - row["submitted_at"], added_cores=c_add, baseline_s=base,
                   ideal_s=t_x + (base - t_x) * c / (c + c_add))
        return self.record(row)

    def loss(self, repeat: int) -> dict:
        def lose(plat):
            def kill():
                victim = list(plat.workers)[-1]
                plat.kill_worker(victim)
                return victim
            return {self.p.loss.at_fraction: kill}
        row = self.one("loss", self.p.loss.workers, repeat, lose)
        kill = next(x for x in row["events"] if x["event"] == "action")
        row.update(lost_worker=kill["result"], lost_at_s=kill["end"] - row["submitted_at"])   # once the kill returned
        self.run.event("loss", "kill", None, worker=kill["result"], at_s=row["lost_at_s"])
        return self.record(row)


def _deploy(run: Run, testbed: Testbed, nodes) -> None:
    with stage(run, "deploy", nodes):
        testbed.deploy(nodes)


def platform_nodes(run: Run, testbed: Testbed, res, p: Params):
    """Deploy the reservation: the master and the workers' nodes, or one cloud per Grid'5000
    site (its first node the service, the others VMMs) beside the FutureGrid sites' own.
    The master (None for instances: an instance, once the data is made), the nodes that get
    the database, and where workers come from."""
    sites = heads(res.nodes)
    if p.workers_on == "nodes":
        first = first_site(p)
        master = sites[first][0]
        rest = {s: ([] if s == first else [head]) + list(others) for s, (head, others) in sites.items()}
        _deploy(run, testbed, res.nodes)
        return master, [n for ns in rest.values() for n in ns], Workers(nodes=rest)
    clouds = clouds_api.build(run, testbed, res, time.time(), stage, vmm_memory_mb=INSTANCE_TYPES[p.instance_type],
                              guests=(sky.IMAGE,), level="cloud") if res.nodes else {}
    clouds |= {s: c for s, c in clouds_api.kept(clouds_api.CLOUDS).items() if s in sites_used(p) and s not in clouds}
    return None, [], Workers(clouds=clouds, instance_type=p.instance_type, owner=run.run_id)


@contextlib.contextmanager
def overlay(run: Run, testbed: Testbed, p: Params):
    """ViNe between the run's sites for the block, if `p.vine` asks it (auto: when one of
    them is not open); one already up on them (invoke vine-up) is used as it is."""
    sites = sites_used(p)
    closed = [s for s in sites if testbed.description.sites[s].access != "open"]
    if p.workers_on != "instances" or p.vine == "off" or (p.vine == "auto" and not closed) or len(sites) < 2:
        yield None
        return
    try:
        up = Overlay.attach(testbed)
    except UserError:
        up = None
    if up and set(sites) <= set(up.sites):
        yield up
        return
    if up:
        raise UserError(f"ViNe is up on {', '.join(up.sites)}, not on every site of the run ({', '.join(sites)}): "
                        f"invoke vine-down, or vine-up --sites {','.join(sites)}")
    with stage(run, "vine"):
        vine = Overlay(testbed, sites).start()
    try:
        yield vine
    finally:
        with stage(run, "vine-down", cleanup=True):
            vine.stop()


def table_3_2(df):
    """Table 3.2 redrawn from the static runs, medians over repeats; with `busy`, the share of
    the workers' time spent in blastx (Σ task time / (makespan · cores): what the platform
    loses to scheduling and stragglers), `task_s` (the median task, which grows when the
    host's cores are contended) and the host's cores, which cap the speedup here."""
    import os
    keys = ["kind", "platform", "repeat"]
    runs = df[(df.level == "run") & (df.kind == "static")]
    tasks = df[df.level == "task"].assign(task_s=lambda t: t.end_s - t.start_s)
    runs = runs.merge(tasks.groupby(keys).task_s.agg(busy_s="sum", task_s="median").reset_index(), on=keys)
    runs = runs.assign(busy=runs.busy_s / (runs.makespan_s * runs.cores))
    t = (runs.groupby(["platform", "sites", "workers", "cores"], sort=False)
         .agg(makespan_s=("makespan_s", "median"), speedup=("speedup", "median"), efficiency=("efficiency", "median"),
              busy=("busy", "median"), task_s=("task_s", "median"), hits_equal=("hits_equal", "all"),
              repeats=("makespan_s", "size")).reset_index())
    t["host_cores"] = os.cpu_count()
    return t


def _gantt(ax, tasks, title: str, mark: float, what: str) -> None:
    workers = sorted(tasks.worker.unique())
    colors = {s: f"C{i}" for i, s in enumerate(sorted(tasks.site.unique()))}
    for t in tasks.itertuples():
        ax.barh(workers.index(t.worker), t.end_s - t.start_s, left=t.start_s, color=colors[t.site], edgecolor="white")
    ax.axvline(mark, color="tab:red", lw=0.8, label=what)
    ax.set_yticks(range(len(workers)), workers, fontsize=7)
    ax.set(xlabel="time since submission (s)", title=title)
    ax.legend(fontsize=7)


class BlastxSky(Experiment):
    name = "blastx-sky"
    Params = Params

    def validate(self, p: Params, testbed: Testbed) -> None:
        if not p.platforms and not p.elastic and not p.loss:
            raise UserError("nothing to run: give platforms, elastic or loss")
        for layout in layouts(p):
            if not isinstance(layout, dict) or not layout or min(layout.values(), default=0) < 1:
                raise UserError(f"bad worker layout {layout!r}: use {{site: workers, ...}} with at least 1 worker per site")
            self.known_sites(testbed, layout)
        if p.elastic:
            _check_fraction(p.elastic.at_fraction, "elastic.at_fraction")
        if p.loss:
            _check_fraction(p.loss.at_fraction, "loss.at_fraction")
            if sum(p.loss.workers.values()) < 2:
                raise UserError("loss.workers needs at least 2 workers: one is killed, the others finish the job")
        self.one_of("workers_on", p.workers_on, WORKERS_ON)
        self.one_of("instance type", p.instance_type, INSTANCE_TYPES)
        self.one_of("vine", p.vine, VINE)
        if p.scheduler_site:
            self.known_sites(testbed, [p.scheduler_site])
        self._check_futuregrid(p, testbed)
        if p.chunks < 1 or p.threads_per_worker < 1 or p.repeats < 1:
            raise UserError("chunks, threads_per_worker and repeats must be at least 1")
        if p.query_file:
            _records(p.query_file, "query_file")
        if p.database_fasta:
            _records(p.database_fasta, "database_fasta")
        if not (p.query_file and p.database_fasta):
            _spec(p).check()
        sizes = {s: site.size for s, site in testbed.description.sites.items()}
        for site, n in self.request(p, testbed).items():
            if n > sizes[site]:
                raise UserError(f"the runs need {n} nodes on {site} (workers, the master on the first site, the "
                                f"clouds' service nodes for instances), "
                                f"which has {sizes[site]}: ask fewer workers or use a larger testbed")

    @staticmethod
    def _check_futuregrid(p: Params, testbed: Testbed) -> None:
        """FutureGrid sites have clouds only, up (testbed-up) with the workers' image."""
        if not (fg := [s for s in sites_used(p) if s in testbed.description.futuregrid()]):
            return
        if p.workers_on == "nodes":
            raise UserError(f"{', '.join(fg)}: FutureGrid sites have no nodes to reserve, only clouds: "
                            f"use workers_on=instances")
        up = clouds_api.kept(clouds_api.CLOUDS)
        if missing := [s for s in fg if s not in up]:
            raise UserError(f"the FutureGrid cloud(s) {', '.join(missing)} are not up: invoke testbed-up "
                            f"--guests {sky.IMAGE}")
        for s in fg:
            images = {i["ImageId"] for i in clouds_api.client(up[s]).describe_images()["Images"]}
            if sky.IMAGE not in images:
                raise UserError(f"the FutureGrid cloud {s} has no {sky.IMAGE} image: invoke testbed-destroy, then "
                                f"testbed-up --guests {sky.IMAGE}")

    def request(self, p: Params, testbed: Testbed) -> dict[str, int]:
        return nodes_needed(p, testbed.description.futuregrid())

    def main(self, run: Run, testbed: Testbed, p: Params) -> None:
        need = self.request(p, testbed)
        nothing = contextlib.nullcontext(Reservation({}, NodeSet(), datetime.max, self.job_name))
        with reserved(run, testbed, need, p.walltime, self.job_name) if need else nothing as res:
            master, hosts, workers = platform_nodes(run, testbed, res, p)
            try:
                with overlay(run, testbed, p), tempfile.TemporaryDirectory(prefix="g5kdeploy-sky-") as tmp:
                    self._runs(run, p, master, hosts, workers, Path(tmp))
            finally:
                workers.release()

    def _runs(self, run: Run, p: Params, master, hosts: list, workers: Workers, tmp: Path) -> None:
        """Configure the platform's nodes, make and ship the data (or start the master
        instance with it), time the sequential reference, then every run of the sweep."""
        platforms, elastic, loss, repeats, workers_on = p.platforms, p.elastic, p.loss, p.repeats, p.workers_on
        if workers_on == "nodes":
            with stage(run, "configure", [master, *hosts]):
                sky.configure([master, *hosts], logdir=run.dir / "chef")
                sky.credentials([master, *hosts])
        with stage(run, "data"):
            queries, db, summary = prepare(p, tmp)
            payload = sky.payload(db, queries, tmp / "payload.tar") if workers_on == "instances" else None
        with stage(run, "ship", hosts or None):
            if payload:
                t0 = time.time()
                master = workers.master(master_site(p), payload)
                run.row(level="ship", host=master.short, bytes=payload.stat().st_size, time_s=time.time() - t0)
            else:
                for r in sky.ship(db, queries, hosts, [master, hosts[0]]):
                    run.row(level="ship", **r)
        runs = Runs(run, p, master, workers, payload)
        with stage(run, "sequential", hosts[:1] or None):
            times = []
            for i in range(repeats):
                if workers_on == "instances":     # the reference runs where the workers do
                    one = runs.one("sequential", {first_site(p): 1}, i, chunks=1)
                    ref = {"host": "instance", "time_s": one["makespan_s"], "hits": one["hits"], "sha256": one["sha256"]}
                else:
                    ref = sky.sequential(hosts[0])
                times.append(ref["time_s"])
                run.row(level="sequential", repeat=i, **ref)
            runs.reference = {**ref, "time_s": statistics.median(times)}
        truth = summary.pop("truth")
        if truth:
            where, table = ((hosts[0], "hits-sequential.tsv") if workers_on == "nodes" else (master, "hits.tsv"))
            remote.get([where], [f"{sky.ROOT}/{table}"], tmp)
            summary.update(blast.recall((tmp / table).read_text().splitlines(), truth))
        run.row(level="data", **summary)
        grid = [dict(repeat=i, run="static", platform=layout) for i in range(repeats) for layout in platforms]
        grid += [dict(repeat=i, run=kind) for i in range(repeats) for kind, on in (("elastic", elastic), ("loss", loss))
                 if on]
        grid.sort(key=lambda q: q["repeat"])       # per repeat: the platforms, then elastic, then loss

        def measure(q: dict) -> None:
            if q["run"] == "static":
                runs.record(runs.one("static", q["platform"], q["repeat"]))
            else:
                getattr(runs, q["run"])(q["repeat"])

        sweep(run, grid, measure, name=lambda q: f"static {label(q['platform'])}" if q["run"] == "static" else q["run"])

    def summary(self, df) -> list[str]:
        out = []
        seq = df[df.level == "sequential"]
        if not seq.empty:
            out.append(f"sequential blastx: {seq.time_s.median():.1f} s, {int(seq.hits.iloc[0])} hits (median of {len(seq)})")
        d = df[df.level == "data"]
        if not d.empty and "true_found" in d and d.true_found.notna().all():
            r = d.iloc[0]
            out.append(f"data: {int(r.queries)} queries, {int(r.proteins)} proteins; best hit = source protein for "
                       f"{int(r.true_found)}/{int(r.true_total)}, decoys with a hit {int(r.decoys_hit)}")
        for r in table_3_2(df).itertuples():
            out.append(f"static  {r.platform:22} {int(r.cores):2d} cores  {r.makespan_s:7.1f} s  speedup {r.speedup:5.2f}  "
                       f"efficiency {r.efficiency:5.1%}  busy {r.busy:5.1%}  task {r.task_s:4.2f} s  "
                       f"hits equal: {r.hits_equal}  (host cores: {r.host_cores})")
        for r in df[(df.level == "run") & (df.kind == "elastic")].itertuples():
            out.append(f"elastic {r.platform:22} extended at {r.extended_at_s:.1f} s, first task of the new workers at "
                       f"{r.joined_at_s:.1f} s; makespan {r.makespan_s:.1f} s vs baseline {r.baseline_s:.1f} s "
                       f"({r.makespan_s / r.baseline_s:.2f}) vs ideal {r.ideal_s:.1f} s ({r.makespan_s / r.ideal_s:.2f}); "
                       f"hits equal: {r.hits_equal}")
        for r in df[(df.level == "run") & (df.kind == "loss")].itertuples():
            out.append(f"loss    {r.platform:22} {r.lost_worker} killed at {r.lost_at_s:.1f} s; makespan {r.makespan_s:.1f} s; "
                       f"{int(r.tasks)} tasks done; hits equal: {r.hits_equal}")
        return out

    def figures(self, df, outdir) -> list:
        """table-3.2.csv; fig-3.2-speedup.png (speedup and efficiency against cores, static
        runs); fig-3.7-elastic.png: (a) tasks completed over time, elastic run vs its baseline
        vs the ideal, the extension instant marked, (b) the elastic run's tasks per worker,
        (c) the worker-loss run's tasks, the kill marked."""
        if "kind" not in df:            # no job ran (a run that failed before)
            return []
        plt = pyplot()
        paths = []
        table = table_3_2(df)
        if not table.empty:
            table.to_csv(outdir / "table-3.2.csv", index=False)
            fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
            a.plot(table.cores, table.speedup, "o", label="measured")
            top = max(table.cores)
            a.plot([1, top], [1, top], "--", color="gray", label="linear")
            a.axhline(table.host_cores.iloc[0], color="tab:red", lw=0.8, label="host cores")
            for r in table.itertuples():
                a.annotate(r.platform, (r.cores, r.speedup), fontsize=7, xytext=(3, 3), textcoords="offset points")
            a.set(xlabel="worker cores", ylabel="speedup over sequential blastx", title="BLASTx speedup (Table 3.2)")
            a.legend(fontsize=8)
            b.bar(range(len(table)), table.efficiency * 100)
            b.set_xticks(range(len(table)), table.platform, fontsize=7, rotation=20)
            b.axhline(85, color="gray", ls="--", lw=0.8)
            b.set(ylabel="parallel efficiency (%)", title="efficiency")
            save_figure(fig, outdir / "fig-3.2-speedup.png")
            paths += [outdir / "table-3.2.csv", outdir / "fig-3.2-speedup.png"]
        runs, tasks = df[df.level == "run"], df[df.level == "task"]
        elastic = runs[runs.kind == "elastic"]
        if elastic.empty:
            return paths
        e = elastic.iloc[0]
        start = e.platform.split("+")[0]
        fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
        mine = tasks[(tasks.kind == "elastic") & (tasks.repeat == e["repeat"])]
        base = tasks[(tasks.kind == "static") & (tasks.platform == start) & (tasks.repeat == e["repeat"])]
        if base.empty:
            base = tasks[(tasks.kind == "static") & (tasks.platform == start)]
        for t, name in ((base, f"not extended ({start})"), (mine, f"extended ({e.platform})")):
            ends = sorted(t.end_s)
            a.step([0, *ends], range(len(ends) + 1), where="post", label=name)
        ideal = sorted(x if x <= e.extended_at_s else e.extended_at_s + (x - e.extended_at_s) * e.cores / (e.cores + e.added_cores)
                       for x in base.end_s)
        a.step([0, *ideal], range(len(ideal) + 1), where="post", ls="--", color="gray", label="ideal")
        a.axvline(e.extended_at_s, color="tab:red", lw=0.8, label="extension requested")
        a.axvline(e.joined_at_s, color="tab:red", ls=":", lw=0.8, label="first task on new workers")
        a.set(xlabel="time since submission (s)", ylabel="tasks completed", title="(a) elastic extension (§3.7)")
        a.legend(fontsize=7)
        _gantt(b, mine, "(b) tasks of the extended run", e.extended_at_s, "extension")
        loss = runs[runs.kind == "loss"]
        if loss.empty:
            c.axis("off")
        else:
            l = loss.iloc[0]
            _gantt(c, tasks[(tasks.kind == "loss") & (tasks.repeat == l["repeat"])],
                   f"(c) worker loss: {l.lost_worker} killed", l.lost_at_s, "kill")
        save_figure(fig, outdir / "fig-3.7-elastic.png")
        return paths + [outdir / "fig-3.7-elastic.png"]


EXPERIMENT = BlastxSky()
