"""blastx-sky: BLASTx on a sky-computing platform of several sites (thesis §3.3–3.7).

A Dask scheduler on the master (first node of the first site); workers on nodes of the
sites, one per node with `threads_per_worker` threads, joining over the shaped WAN. The
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
  sequential: repeat, host, time_s, hits
  run: kind (static|elastic|loss), platform ("rennes:1,nancy:1"), repeat, sites, workers,
    cores, tasks, makespan_s (job submitted -> last task), speedup, efficiency, hits,
    hits_equal; elastic: extended_at_s, joined_at_s, added_cores, baseline_s, ideal_s;
    loss: lost_worker, lost_at_s
  task: kind, platform, repeat, chunk, worker, site, start_s, end_s, queries, hits
Each task is also in events.jsonl (stage "blastx-task"), with the extension and the loss."""
from __future__ import annotations

import ipaddress
import json
import statistics
import tempfile
from pathlib import Path

from g5kdeploy import remote
from g5kdeploy.engine import stage
from g5kdeploy.errors import UserError
from g5kdeploy.results import Run
from g5kdeploy.sky import blast, data, platform as sky
from g5kdeploy.testbed import Testbed

NAME = "blastx-sky"
PARAMS = {"platforms": [{"rennes": 1}, {"rennes": 2}, {"rennes": 1, "nancy": 1}, {"rennes": 2, "nancy": 2}],
          "elastic": {"start": {"rennes": 1}, "add": {"nancy": 1}, "at_fraction": 0.3},
          "loss": {"workers": {"rennes": 1, "nancy": 1}, "at_fraction": 0.3},
          "proteins": 20000, "queries": 2400, "decoys": 600, "seed": 1, "chunks": 60,
          "query_file": None, "database_fasta": None,
          "threads_per_worker": 1, "repeats": 1, "walltime": "2:00"}
FULL = {"repeats": 3}


def label(workers: dict[str, int]) -> str:
    return ",".join(f"{s}:{n}" for s, n in workers.items())


def layouts(p: dict) -> list[dict[str, int]]:
    """Every worker layout the run uses."""
    out = list(p["platforms"])
    if p["elastic"]:
        out += [p["elastic"]["start"], p["elastic"]["add"]]
    if p["loss"]:
        out.append(p["loss"]["workers"])
    return out


def nodes_needed(p: dict) -> dict[str, int]:
    """Per site, the most workers any layout asks (the elastic run's start and add together),
    plus the master on the first site."""
    need: dict[str, int] = {}
    grown = [{s: p["elastic"]["start"].get(s, 0) + p["elastic"]["add"].get(s, 0)
              for s in {**p["elastic"]["start"], **p["elastic"]["add"]}}] if p["elastic"] else []
    for layout in list(p["platforms"]) + grown + ([p["loss"]["workers"]] if p["loss"] else []):
        for site, n in layout.items():
            need[site] = max(need.get(site, 0), n)
    first = next(iter(layouts(p)[0]))
    need[first] = need.get(first, 0) + 1
    return need


def _records(path, what: str) -> int:
    if not Path(path).is_file():
        raise UserError(f"{what} {path}: no such file; give a FASTA file, or leave it unset to generate the data")
    n = len(blast.records(Path(path).read_text()))
    if not n:
        raise UserError(f"{what} {path} holds no FASTA record")
    return n


def check_params(p: dict, description) -> None:
    if not p["platforms"] and not p["elastic"] and not p["loss"]:
        raise UserError("nothing to run: give platforms, elastic or loss")
    for layout in layouts(p):
        if not isinstance(layout, dict) or not layout or min(layout.values(), default=0) < 1:
            raise UserError(f"bad worker layout {layout!r}: use {{site: workers, ...}} with at least 1 worker per site")
        for site in layout:
            if site not in description.sites:
                raise UserError(f"unknown site {site}: the testbed has {', '.join(description.sites)}")
    if p["elastic"]:
        sky.check_fraction(p["elastic"]["at_fraction"], "elastic.at_fraction")
    if p["loss"]:
        sky.check_fraction(p["loss"]["at_fraction"], "loss.at_fraction")
        if sum(p["loss"]["workers"].values()) < 2:
            raise UserError("loss.workers needs at least 2 workers: one is killed, the others finish the job")
    if int(p["chunks"]) < 1 or int(p["threads_per_worker"]) < 1 or int(p["repeats"]) < 1:
        raise UserError("chunks, threads_per_worker and repeats must be at least 1")
    if p["query_file"]:
        _records(p["query_file"], "query_file")
    if p["database_fasta"]:
        _records(p["database_fasta"], "database_fasta")
    if not (p["query_file"] and p["database_fasta"]):
        _spec(p).check()
    sizes = {s: sum(1 for n in description.nodes() if n.site == s) for s in description.sites}
    for site, n in nodes_needed(p).items():
        if n > sizes[site]:
            raise UserError(f"the runs need {n} nodes on {site} (workers + the master on the first site), "
                            f"which has {sizes[site]}: ask fewer workers or use a larger testbed")


def _spec(p: dict) -> data.Spec:
    return data.Spec(proteins=int(p["proteins"]), queries=int(p["queries"]), decoys=int(p["decoys"]),
                     seed=int(p["seed"]))


def prepare(run: Run, p: dict, work: Path) -> tuple[Path, Path, dict]:
    """The queries, the database (makeblastdb) and the truth when generated."""
    truth: dict = {}
    if p["query_file"] and p["database_fasta"]:
        queries, proteins, summary = Path(p["query_file"]), Path(p["database_fasta"]), {}
    else:
        summary = data.generate(_spec(p), work)
        queries = Path(p["query_file"] or work / "queries.fasta")
        proteins = Path(p["database_fasta"] or work / "proteins.fasta")
        if not p["query_file"]:
            truth = json.loads((work / "truth.json").read_text())
    db = data.make_database(proteins, work / "db").parent
    summary["database_bytes"] = sum(f.stat().st_size for f in db.iterdir())
    return queries, db, {**summary, "truth": truth}


def _task_rows(run: Run, events: list[dict], nodes_by_worker: dict, **key) -> list[dict]:
    t0 = next(e["t"] for e in events if e["event"] == "submitted")
    rows = []
    for e in (e for e in events if e["event"] == "task"):
        row = {"chunk": e["chunk"], "worker": e["worker"], "site": e["worker"].split("/")[0],
               "start_s": e["start"] - t0, "end_s": e["end"] - t0, "queries": e["queries"], "hits": e["chunk_hits"]}
        run.row(level="task", **key, **row)
        run.event("blastx-task", "end", nodes_by_worker.get(e["worker"]), **key, **row)
        rows.append(row)
    return rows


class Runs:
    """The job runs of one experiment on one set of nodes, each on a fresh platform."""

    def __init__(self, run: Run, p: dict, master, workers: dict, reference: dict):
        self.run, self.p, self.master, self.free, self.reference = run, p, master, workers, reference
        self.static: dict[str, list[float]] = {}

    def _nodes(self, layout: dict[str, int], taken=()) -> list:
        return [n for site, k in layout.items() for n in [m for m in self.free[site] if m not in taken][:k]]

    def one(self, kind: str, layout: dict[str, int], repeat: int, actions=None, platform=None) -> dict:
        """Start a platform on `layout`, run the job; its run row (makespan, speedup...)."""
        threads = int(self.p["threads_per_worker"])
        plat = platform or sky.Platform(self.master, threads).start()
        try:
            if not plat.workers:
                plat.add_workers(self._nodes(layout))
            events = plat.job(int(self.p["chunks"]), actions(plat) if actions else None)
        finally:
            plat.stop()
        key = {"kind": kind, "platform": label(layout), "repeat": repeat}
        names = {sky.worker_name(n): n.hostname for ns in self.free.values() for n in ns}
        tasks = _task_rows(self.run, events, names, **key)
        submitted = next(e["t"] for e in events if e["event"] == "submitted")
        done = next(e for e in events if e["event"] == "done")
        makespan = done["t"] - submitted
        workers = sum(layout.values())
        row = {**key, "sites": len(layout), "workers": workers, "cores": workers * threads, "tasks": len(tasks),
               "makespan_s": makespan, "speedup": self.reference["time_s"] / makespan,
               "hits": done["hits"], "hits_equal": done["sha256"] == self.reference["sha256"],
               "submitted_at": submitted, "events": events}
        row["efficiency"] = row["speedup"] / row["cores"]
        return row

    def record(self, row: dict) -> dict:
        self.run.row(level="run", **{k: v for k, v in row.items() if k not in ("events", "submitted_at")})
        if row["kind"] == "static":
            self.static.setdefault(row["platform"], []).append(row["makespan_s"])
        return row

    def baseline(self, layout: dict[str, int], repeat: int) -> float:
        """The static makespan of a layout (measured now if no static run had it)."""
        if label(layout) not in self.static:
            self.record(self.one("static", layout, repeat))
        return statistics.median(self.static[label(layout)])

    def elastic(self, repeat: int) -> dict:
        e = self.p["elastic"]
        start, add = e["start"], e["add"]
        added = self._nodes(add, taken=self._nodes(start))
        row = self.one("elastic", start, repeat, lambda plat: {e["at_fraction"]: lambda: plat.add_workers(added)})
        extension = next(x for x in row["events"] if x["event"] == "action")
        joined = min(x["start"] for x in row["events"] if x["event"] == "task" and x["worker"] in extension["result"])
        t_x = extension["t"] - row["submitted_at"]
        c, c_add = row["cores"], sum(add.values()) * int(self.p["threads_per_worker"])
        base = self.baseline(start, repeat)
        self.run.event("elastic", "extend", None, at_s=t_x, workers=extension["result"], fraction=e["at_fraction"])
        row.update(platform=f"{label(start)}+{label(add)}", extended_at_s=t_x,
                   joined_at_s=joined - row["submitted_at"], added_cores=c_add, baseline_s=base,
                   ideal_s=t_x + (base - t_x) * c / (c + c_add))
        return self.record(row)

    def loss(self, repeat: int) -> dict:
        layout = self.p["loss"]["workers"]
        victim = sky.worker_name(self._nodes(layout)[-1])

        def lose(plat):
            return {self.p["loss"]["at_fraction"]: lambda: plat.kill_worker(victim) or victim}
        row = self.one("loss", layout, repeat, lose)
        kill = next(x for x in row["events"] if x["event"] == "action")
        row.update(lost_worker=victim, lost_at_s=kill["end"] - row["submitted_at"])   # once the kill returned
        self.run.event("loss", "kill", None, worker=victim, at_s=row["lost_at_s"])
        return self.record(row)


def main(run: Run, testbed: Testbed, platforms, elastic, loss, chunks, threads_per_worker, repeats, walltime, **p):
    p.update(platforms=platforms, elastic=elastic, loss=loss, chunks=chunks, threads_per_worker=threads_per_worker)
    need = nodes_needed(p)
    with stage(run, "reserve"):
        res = testbed.reserve(need, walltime=walltime, name=NAME)
    try:
        with stage(run, "deploy", res.nodes):
            outcomes = testbed.deploy(res.nodes)
        if failed := [f"{h}: {o.error}" for h, o in outcomes.items() if not o.ok]:
            raise RuntimeError("deployment failed on " + "; ".join(failed))
        by_site = {s: sorted(ns, key=lambda n: ipaddress.ip_address(n.address)) for s, ns in res.nodes.by_site().items()}
        first = next(iter(need))
        master, workers = by_site[first][0], {s: [n for n in ns if n is not by_site[first][0]] for s, ns in by_site.items()}
        every_worker = [n for ns in workers.values() for n in ns]
        with stage(run, "configure", res.nodes):
            sky.configure(list(res.nodes), logdir=run.dir / "chef")
        with tempfile.TemporaryDirectory(prefix="g5kdeploy-sky-") as tmp:
            with stage(run, "data"):
                queries, db, summary = prepare(run, p, Path(tmp))
            with stage(run, "ship", every_worker):
                for r in sky.ship(db, queries, every_worker, [master, every_worker[0]]):
                    run.row(level="ship", **r)
        with stage(run, "sequential", [every_worker[0]]):
            times = []
            for i in range(repeats):
                ref = sky.sequential(every_worker[0])
                times.append(ref["time_s"])
                run.row(level="sequential", repeat=i, **ref)
            ref["time_s"] = statistics.median(times)
        truth = summary.pop("truth")
        with tempfile.TemporaryDirectory(prefix="g5kdeploy-sky-") as tmp:
            remote.get([every_worker[0]], [f"{sky.ROOT}/hits-sequential.tsv"], tmp)
            hits = (Path(tmp) / "hits-sequential.tsv").read_text().splitlines()
        run.row(level="data", **summary, **(blast.recall(hits, truth) if truth else {}))
        runs = Runs(run, p, master, workers, ref)
        for i in range(repeats):
            for layout in platforms:
                with stage(run, f"static {label(layout)}"):
                    runs.record(runs.one("static", layout, i))
            if elastic:
                with stage(run, "elastic"):
                    runs.elastic(i)
            if loss:
                with stage(run, "loss"):
                    runs.loss(i)
    finally:
        with stage(run, "release"):
            testbed.release(res)


def table_3_2(df):
    """Table 3.2 redrawn from the static runs: medians over repeats, with the host's cores
    (which cap the speedup of the emulated testbed)."""
    import os
    runs = df[(df.level == "run") & (df.kind == "static")]
    t = (runs.groupby(["platform", "sites", "workers", "cores"], sort=False)
         .agg(makespan_s=("makespan_s", "median"), speedup=("speedup", "median"), efficiency=("efficiency", "median"),
              hits_equal=("hits_equal", "all"), repeats=("makespan_s", "size")).reset_index())
    t["host_cores"] = os.cpu_count()
    return t


def summary(df) -> list[str]:
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
                   f"efficiency {r.efficiency:5.1%}  hits equal: {r.hits_equal}  (host cores: {r.host_cores})")
    for r in df[(df.level == "run") & (df.kind == "elastic")].itertuples():
        out.append(f"elastic {r.platform:22} extended at {r.extended_at_s:.1f} s, first task of the new workers at "
                   f"{r.joined_at_s:.1f} s; makespan {r.makespan_s:.1f} s vs baseline {r.baseline_s:.1f} s "
                   f"({r.makespan_s / r.baseline_s:.2f}) vs ideal {r.ideal_s:.1f} s ({r.makespan_s / r.ideal_s:.2f}); "
                   f"hits equal: {r.hits_equal}")
    for r in df[(df.level == "run") & (df.kind == "loss")].itertuples():
        out.append(f"loss    {r.platform:22} {r.lost_worker} killed at {r.lost_at_s:.1f} s; makespan {r.makespan_s:.1f} s; "
                   f"{int(r.tasks)} tasks done; hits equal: {r.hits_equal}")
    return out


def figures(df, outdir) -> list:
    """table-3.2.csv; fig-3.2-speedup.png (speedup and efficiency against cores, static
    runs); fig-3.7-elastic.png: (a) tasks completed over time, elastic run vs its baseline
    vs the ideal, the extension instant marked, (b) the elastic run's tasks per worker,
    (c) the worker-loss run's tasks, the kill marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
        fig.tight_layout()
        fig.savefig(outdir / "fig-3.2-speedup.png", dpi=100)
        plt.close(fig)
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
    if not loss.empty:
        l = loss.iloc[0]
        _gantt(c, tasks[(tasks.kind == "loss") & (tasks.repeat == l["repeat"])],
               f"(c) worker loss: {l.lost_worker} killed", l.lost_at_s, "kill")
    fig.tight_layout()
    fig.savefig(outdir / "fig-3.7-elastic.png", dpi=100)
    plt.close(fig)
    return paths + [outdir / "fig-3.7-elastic.png"]


def _gantt(ax, tasks, title: str, mark: float, what: str) -> None:
    workers = sorted(tasks.worker.unique())
    colors = {s: f"C{i}" for i, s in enumerate(sorted(tasks.site.unique()))}
    for t in tasks.itertuples():
        ax.barh(workers.index(t.worker), t.end_s - t.start_s, left=t.start_s, color=colors[t.site], edgecolor="white")
    ax.axvline(mark, color="tab:red", lw=0.8, label=what)
    ax.set_yticks(range(len(workers)), workers, fontsize=7)
    ax.set(xlabel="time since submission (s)", title=title)
    ax.legend(fontsize=7)
