"""shrinker: live migration of a virtual cluster from one site to another over the shaped
WAN (thesis ch. 6): stock QEMU pre-copy (plain, multifd, multifd + zstd), Shrinker
(distributed deduplication + content-based addressing, full chunks zstd-compressed in
batches, QEMU moving only device state), Shrinker without deduplication and Shrinker without
compression.

Needs link shaping, the configured rates and WAN byte counters (the local testbed).

Trials: every workload x cluster size x method at the first WAN rate and the largest chunk
size; then the first workload at the largest size for each other WAN rate (Fig 6.7) and,
Shrinker only, for each other chunk size (Fig 6.8). `--param full=true` runs the full grid
(Params.FULL); parameters given beside it still win, e.g. `--param repeats=1`.

`retries`: the destination's wait-and-retry passes before a digest is deferred (0: none);
`pull`: `deferred` (digests no host of the destination site has yet wait for a later round and
are pulled from the source once the guest is stopped) or `at-once` (pulled at once, the thesis).

Rows, by `level`, each with trial, repeat, method, workload, cluster_size, wan_mbit, chunk, guest:
  cluster (one per trial): total_time_s, downtime_s (the longest), reported_downtime_s,
    bytes_sent, wan_bytes (the source site's uplink counters), outcome (ok|failed), error
  guest (one per guest and trial): total_time_s, downtime_s (QEMU's run-state trace: source
    vCPU stop -> destination start, every method), reported_downtime_s (QEMU's query-migrate,
    or the source agent's stop -> destination running), bytes_sent (self-reported), rounds,
    chunks_full, chunks_dedup, chunks_uniform, chunks_pulled, chunks_peer, chunks_local,
    forced_stop (stopped after the last allowed round, not converged), ram_verified (the
    destination's RAM equal to the source's at the stop: Shrinker, its agents' check; stock,
    the source's as sent against the twin's before it started), runs_at_destination,
    source_gone, ticks_before, ticks_after, diagnosis (of a guest that stopped ticking),
    outcome (ok|failed); stock: reported_total_time_s, settle_copy_s (the twin's RAM copied
    for the check, inside its downtime as Shrinker's snapshot is); Shrinker: ram_chunks,
    first_round_chunks, chunks_retried, source_cpu_s (the source agent's CPU time),
    destination_cpu_s (its destination threads' CPU time), downtime_{last_round,resolve,device_state,cont}_s,
    destination_{final_resolve_s,final_pulls,snapshot_s,cont_s}
  round (one per Shrinker pre-copy round; round 0 is the last one, guest stopped): round,
    chunks, full, dedup, uniform, bytes, time_s, deferred"""
from __future__ import annotations

import itertools
import time
from contextlib import nullcontext
from dataclasses import dataclass

from g5kdeploy.engine import Experiment, param, reserved, stage, sweep
from g5kdeploy.errors import UserError
from g5kdeploy.results import Run, pyplot, save_figure
from g5kdeploy.shrinker import cluster
from g5kdeploy.shrinker.chunks import ALGORITHMS, MAX_CHUNK, MIN_CHUNK
from g5kdeploy.shrinker.destination import PULL_POLICIES
from g5kdeploy.testbed import Feature, Testbed
from g5kdeploy.testbed.description import parse_rate

WORKLOADS = ("idle", "memory", "dirty", "pagecache")


@dataclass(frozen=True)
class Params:
    source: str = param("rennes", "site the virtual cluster starts on")
    destination: str = param("nancy", "site it migrates to")
    vmms_per_site: int = param(2, "VMM nodes per site (each site also has a Redis node)")
    methods: list[str] = param(["stock", "stock-zstd", "shrinker", "shrinker-nodedup"], ", ".join(cluster.METHODS))
    workloads: list[str] = param(["idle"], ", ".join(WORKLOADS))
    cluster_sizes: list[int] = param([1, 2], "guests per virtual cluster")
    wan_rates: list[str] = param(["100mbit"], "WAN rates; the first is the main trials'")
    chunk_sizes: list[int] = param([4096], "Shrinker chunk sizes (bytes); the largest is the main trials'")
    repeats: int = param(1, "repeats of the whole grid")
    memory_mb: int = param(128, "guest RAM")
    workload_mb: int = param(48, "memory the workload fills")
    dirty_rate_mb: int = param(4, "MiB/s the dirty workload rewrites")
    digest: str = param("sha1", "chunk digest")
    retries: int = param(2, "destination's wait-and-retry passes before a digest is deferred")
    pull: str = param("deferred", " or ".join(PULL_POLICIES))
    warmup_s: float = param(3.0, "seconds the workload runs before migrating")
    walltime: str = param("1:00", "OAR walltime, H:MM")
    FULL = {"vmms_per_site": 4, "walltime": "8:00",
            "methods": list(cluster.METHODS),
            "workloads": ["idle", "memory", "dirty", "pagecache"], "cluster_sizes": [1, 2, 4, 8],
            "wan_rates": ["100mbit", "250mbit", "500mbit", "1000mbit"], "chunk_sizes": [4096, 512, 1024, 2048],
            "repeats": 3}


def trials(p: Params) -> list[dict]:
    """The grid: main trials, then the bandwidth and granularity sweeps."""
    biggest = max(p.chunk_sizes)
    main = [dict(workload=w, cluster_size=n, method=m, wan_rate=p.wan_rates[0], chunk=biggest)
            for w, n, m in itertools.product(p.workloads, p.cluster_sizes, p.methods)]
    big, w0 = max(p.cluster_sizes), p.workloads[0]
    rates = [dict(workload=w0, cluster_size=big, method=m, wan_rate=r, chunk=biggest)
             for r in p.wan_rates[1:] for m in p.methods]
    chunks = [dict(workload=w0, cluster_size=big, method="shrinker", wan_rate=p.wan_rates[0], chunk=c)
              for c in sorted(p.chunk_sizes) if c != biggest]
    return [dict(t, repeat=r) for r in range(p.repeats) for t in main + rates + chunks]


class Shrinker(Experiment):
    name = "shrinker"
    Params = Params

    def request(self, p: Params, testbed: Testbed) -> dict[str, int]:
        return {p.source: 1 + p.vmms_per_site, p.destination: 1 + p.vmms_per_site}    # Redis + VMMs

    def needs(self, p: Params) -> set:
        return {Feature.SHAPING, Feature.RATES, Feature.WAN_BYTES}

    def validate(self, p: Params, testbed: Testbed) -> None:
        self.known_sites(testbed, [p.source, p.destination])
        if p.source == p.destination:
            raise UserError("source and destination must be two sites: the migration crosses the WAN")
        self.one_of("method", p.methods, cluster.METHODS)
        self.one_of("workload", p.workloads, WORKLOADS)
        self.one_of("pull policy", p.pull, PULL_POLICIES)
        self.one_of("digest", p.digest, ALGORITHMS)
        for c in p.chunk_sizes:
            if c < MIN_CHUNK or c & (c - 1) or c > MAX_CHUNK:
                raise UserError(f"chunk size {c} is not a power of two between {MIN_CHUNK} and {MAX_CHUNK}")
        for r in p.wan_rates:
            parse_rate(r)
        if not (p.methods and p.workloads and p.cluster_sizes and p.wan_rates and p.chunk_sizes):
            raise UserError("methods, workloads, cluster_sizes, wan_rates and chunk_sizes each need a value")
        if p.vmms_per_site < 1:
            raise UserError("vmms_per_site must be at least 1")

    def main(self, run: Run, testbed: Testbed, p: Params) -> None:
        failures = []
        with reserved(run, testbed, self.request(p, testbed), p.walltime, self.job_name) as res:
            src, dst = cluster.prepare(testbed, res.nodes, p.source, p.destination, run.dir / "logs",
                                       around=lambda step: stage(run, step))
            before = testbed.rates()["wan"].get("|".join(sorted((p.source, p.destination))))
            try:
                grid = trials(p)
                sweep(run, grid, lambda t: failures.extend(_trial(run, testbed, src, dst, grid.index(t), t, p)),
                      name=lambda t: f"trial {t['method']} {t['workload']} x{t['cluster_size']} {t['wan_rate']} "
                                     f"{t['chunk']} B")
            finally:
                if before:
                    testbed.shape(p.source, p.destination, f"{before}bit")
        if failures:
            raise RuntimeError("failed trials or checks: " + "; ".join(failures))

    def summary(self, rows) -> list[str]:
        c = rows[rows.level == "cluster"]
        out = []
        for (w, n, rate, chunk), g in c.groupby(["workload", "cluster_size", "wan_mbit", "chunk"]):
            med = g.groupby("method")[["total_time_s", "wan_bytes", "downtime_s"]].median()
            line = f"{w:9} x{n:<2} {rate:5.0f} Mbit/s {chunk:5d} B |"
            for m, r in med.iterrows():
                line += f" {m}: {r.total_time_s:5.1f} s {r.wan_bytes / 1e6:6.1f} MB down {r.downtime_s * 1000:4.0f} ms |"
            if {"stock", "shrinker"} <= set(med.index):
                s, k = med.loc["stock"], med.loc["shrinker"]
                line += f" shrinker/stock: time {k.total_time_s / s.total_time_s:.2f} WAN {k.wan_bytes / s.wan_bytes:.2f}"
            out.append(line)
        ok = rows[rows.level == "guest"]["outcome"] == "ok"
        return out + [f"correctness: {int(ok.sum())}/{len(ok)} guests verified (RAM equal at stop, running at the "
                      f"destination, gone at the source)"]


    def figures(self, df, outdir) -> list:
        """Like the thesis: per workload (Figs 6.4-6.6) (a) total migration time, (b) data on the WAN,
        (c) chunks per VM by type (Shrinker), (d) longest downtime, vs cluster size; Fig 6.7 time vs
        WAN rate; Fig 6.8 memory per VM fully sent vs deduplicated, vs chunk size."""
        plt = pyplot()
        c, g = df[df.level == "cluster"], df[df.level == "guest"]
        paths = []
        if "total_time_s" not in c or c.total_time_s.isna().all():     # every trial failed
            return paths
        c = c[c.total_time_s.notna()]

        def save(fig, name):
            paths.append(save_figure(fig, outdir / f"shrinker-{name}.png"))

        def lines(ax, data, x, col, scale, xlabel, ylabel):
            (data.groupby([x, "method"])[col].median().unstack() * scale).plot(ax=ax, marker="o")
            ax.set(xlabel=xlabel, ylabel=ylabel)

        base_rate, base_chunk = c.wan_mbit.min(), c.chunk.max()
        base = (c.wan_mbit == base_rate) & (c.chunk == base_chunk)
        for w, cw in c[base].groupby("workload"):
            fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
            lines(axes[0], cw, "cluster_size", "total_time_s", 1, "virtual machines", "(a) total migration time (s)")
            lines(axes[1], cw, "cluster_size", "wan_bytes", 1e-6, "virtual machines", "(b) data on the WAN (MB)")
            s = g[(g.workload == w) & (g.method == "shrinker") & (g.wan_mbit == base_rate) & (g.chunk == base_chunk)]
            if len(s):
                types = s.groupby("cluster_size")[["chunks_full", "chunks_dedup", "chunks_pulled"]].mean()
                types.columns = ["fully sent", "deduplicated", "pulled from source"]
                types.plot.bar(ax=axes[2], rot=0)
            axes[2].set(xlabel="virtual machines", ylabel="(c) Shrinker chunks per VM")
            lines(axes[3], cw, "cluster_size", "downtime_s", 1e3, "virtual machines", "(d) longest downtime (ms)")
            fig.suptitle(f"{w} guests, {base_rate:.0f} Mbit/s WAN, {base_chunk} B chunks")
            save(fig, w)
        big = (c.cluster_size == c.cluster_size.max()) & (c.workload == c.workload.iloc[0])
        rates = c[big & (c.chunk == base_chunk)]
        if rates.wan_mbit.nunique() > 1:                     # Fig 6.7
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
            lines(axes[0], rates, "wan_mbit", "total_time_s", 1, "WAN rate (Mbit/s)", "total migration time (s)")
            lines(axes[1], rates, "wan_mbit", "wan_bytes", 1e-6, "WAN rate (Mbit/s)", "data on the WAN (MB)")
            save(fig, "bandwidth")
        sizes = g[(g.method == "shrinker") & (g.wan_mbit == base_rate) & (g.cluster_size == c.cluster_size.max())
                  & (g.workload == c.workload.iloc[0])]
        if sizes.chunk.nunique() > 1:                        # Fig 6.8
            per_vm = sizes.assign(full_mb=sizes.chunks_full * sizes.chunk / 1e6,
                                  dedup_mb=sizes.chunks_dedup * sizes.chunk / 1e6).groupby("chunk")[["full_mb", "dedup_mb"]]
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
            per_vm.mean().rename(columns={"full_mb": "fully transferred", "dedup_mb": "deduplicated"}).plot.bar(ax=axes[0], rot=0)
            axes[0].set(xlabel="chunk size (bytes)", ylabel="memory per VM (MB)")
            lines(axes[1], c[big & (c.method == "shrinker") & (c.wan_mbit == base_rate)], "chunk", "total_time_s", 1,
                  "chunk size (bytes)", "total migration time (s)")
            save(fig, "granularity")
        return paths


def _trial(run: Run, testbed: Testbed, src, dst, k: int, t: dict, p: Params) -> list[str]:
    testbed.shape(p.source, p.destination, t["wan_rate"])
    cluster.flush_redis(src, dst)
    plans = cluster.plan_cluster(src, dst, t["cluster_size"], f"t{k}g")
    shrinker = t["method"].startswith("shrinker")
    common = dict(trial=k, repeat=t["repeat"], method=t["method"], workload=t["workload"],
                  cluster_size=t["cluster_size"], wan_mbit=parse_rate(t["wan_rate"]) / 1e6, chunk=t["chunk"])
    agents = ["--retries", p.retries, "--pull", p.pull]
    with cluster.guests_running(plans, t["workload"], p.memory_mb, p.workload_mb, p.dirty_rate_mb):
        time.sleep(p.warmup_s)            # the workload reaches its steady state (thesis: 30 s)
        with cluster.agents_running(dst, *agents) if shrinker else nullcontext():
            counters = testbed.wan_bytes()
            t0 = time.time()
            try:
                reports = cluster.migrate(plans, t["method"], src, dst, chunk=t["chunk"], digest=p.digest,
                                          rate_mbit=parse_rate(t["wan_rate"]) / 1e6)
            except RuntimeError as e:            # recorded; the grid goes on, the run fails at its end
                run.row(**common, level="cluster", guest="", outcome="failed", error=str(e)[:1000])
                return [f"trial {k}: {e}"]
            t1 = time.time()
            after = testbed.wan_bytes()
            checks = {c["guest"]: c for c in cluster.check(plans)}
    guests = [{**common, "level": "guest", **_guest_metrics(r, shrinker), **checks[r["guest"]]} for r in reports]
    for g in guests:
        ok = g["ram_verified"] and g["runs_at_destination"] and g["source_gone"] and g["downtime_s"] is not None
        g["outcome"] = "ok" if ok else "failed"
        run.row(**g)
    for r in reports:
        for x in r.get("rounds", []):     # Shrinker's rounds (round 0: the last, guest stopped)
            run.row(**common, level="round", guest=r["guest"], **{k: v for k, v in x.items() if k != "chunk_size"})
    failures = [f"trial {k} {g['guest']}" for g in guests if g["outcome"] != "ok"]
    run.row(**common, level="cluster", guest="", total_time_s=round(t1 - t0, 4),
            downtime_s=max((g["downtime_s"] or 0) for g in guests),
            reported_downtime_s=max(g["reported_downtime_s"] for g in guests),
            wan_bytes=after[p.source]["tx"] - counters[p.source]["tx"],
            bytes_sent=sum(g["bytes_sent"] for g in guests), outcome="failed" if failures else "ok")
    return failures


def _guest_metrics(r: dict, shrinker: bool) -> dict:
    if not shrinker:   # QEMU's query-migrate: times in ms
        ram = r.get("ram", {})
        return dict(guest=r["guest"], total_time_s=r["wall_s"], forced_stop=r["forced_stop"], reported_total_time_s=r.get("total-time", 0) / 1000,
                    reported_downtime_s=r.get("downtime", 0) / 1000, bytes_sent=ram.get("transferred", 0),
                    rounds=ram.get("dirty-sync-count", 0), chunks_full=ram.get("normal", 0),
                    chunks_uniform=ram.get("duplicate", 0), chunks_dedup=0, chunks_pulled=0, chunks_peer=0,
                    chunks_local=0, ram_verified=r.get("ram_verified", False), settle_copy_s=r.get("settle_copy_s"))
    d = r["destination"]
    rounds = r["rounds"]
    return dict(guest=r["guest"], total_time_s=r["total_time_s"], reported_downtime_s=r["downtime_s"],
                forced_stop=r["forced_stop"],
                bytes_sent=r["bytes_sent"], rounds=len(rounds), ram_chunks=r["ram_bytes"] // rounds[0]["chunk_size"],
                first_round_chunks=rounds[0]["full"] + rounds[0]["dedup"] + rounds[0]["uniform"], chunks_full=sum(x["full"] for x in rounds),
                chunks_dedup=sum(x["dedup"] for x in rounds), chunks_uniform=sum(x["uniform"] for x in rounds),
                chunks_pulled=d.get("pulled", 0), chunks_peer=d.get("peer", 0), chunks_local=d.get("local", 0),
                chunks_retried=d.get("retried", 0), ram_verified=True, source_cpu_s=r.get("cpu_s"),
                destination_cpu_s=d.get("reader_cpu_s", 0) + d.get("resolver_cpu_s", 0),
                **{f"downtime_{k}": v for k, v in r.get("downtime_phases", {}).items()},
                **{f"destination_{k}": d[k] for k in ("final_resolve_s", "final_pulls", "snapshot_s", "cont_s") if k in d})


EXPERIMENT = Shrinker()
