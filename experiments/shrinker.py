"""shrinker: live migration of a virtual cluster from one site to another over the shaped
WAN (thesis ch. 6): stock QEMU pre-copy (plain, multifd, multifd + zstd), Shrinker
(distributed deduplication + content-based addressing, QEMU moving only device state) and
Shrinker without deduplication.

Trials: every workload x cluster size x method at the first WAN rate and the largest chunk
size; then the first workload at the largest size for each other WAN rate (Fig 6.7) and,
Shrinker only, for each other chunk size (Fig 6.8). `--param full=true` runs the full grid
(FULL); parameters given beside it still win, e.g. `--param repeats=1`.

`retries`: the destination's wait-and-retry passes before a digest is deferred (0: none);
`pull`: `deferred` (digests no host of the destination site has yet wait for a later round and
are pulled from the source once the guest is stopped) or `at-once` (pulled at once, the thesis).

Rows, by `level`: one per guest and trial (guest), one per trial (cluster), one per Shrinker
pre-copy round (round; round 0 is the last one, guest stopped):
  trial, method, workload, cluster_size, wan_mbit, chunk, guest, total_time_s,
  downtime_s (QEMU's run-state trace: source vCPU stop -> destination start, every method),
  reported_downtime_s (QEMU's query-migrate, or the source agent's stop -> destination running),
  bytes_sent (self-reported), wan_bytes (cluster rows: the source site's uplink counters),
  rounds, chunks_full, chunks_dedup, chunks_uniform, chunks_pulled, chunks_peer, chunks_local,
  chunks_retried, forced_stop (stopped after the last allowed round, not converged), ram_verified, runs_at_destination, source_gone, ok;
  round rows: round, chunks, full, dedup, uniform, bytes, time_s, deferred"""
from __future__ import annotations

import itertools
import time

from g5kdeploy.engine import stage, sweep
from g5kdeploy.errors import UserError
from g5kdeploy.results import Run
from g5kdeploy.shrinker import cluster
from g5kdeploy.shrinker.destination import PULL_POLICIES
from g5kdeploy.testbed import Testbed
from g5kdeploy.testbed.description import parse_rate
from g5kdeploy.vm import image as vm_image

NAME = "shrinker"
PARAMS = {"source": "rennes", "destination": "nancy", "hypervisors_per_site": 2,
          "methods": ["stock", "shrinker", "shrinker-nodedup"], "workloads": ["idle"], "cluster_sizes": [1, 2],
          "wan_rates": ["100mbit"], "chunk_sizes": [4096], "repeats": 1, "memory_mb": 128, "workload_mb": 48,
          "dirty_rate_mb": 4, "digest": "sha1", "retries": 2, "pull": "deferred", "warmup_s": 3, "walltime": "1:00", "full": False}
FULL = {"hypervisors_per_site": 4, "walltime": "8:00",
        "methods": ["stock", "stock-multifd", "stock-zstd", "shrinker", "shrinker-nodedup"],
        "workloads": ["idle", "memory", "dirty", "pagecache"], "cluster_sizes": [1, 2, 4, 8],
        "wan_rates": ["100mbit", "250mbit", "500mbit", "1000mbit"], "chunk_sizes": [4096, 512, 1024, 2048],
        "repeats": 3}
WORKLOADS = ("idle", "memory", "dirty", "pagecache")


def trials(p: dict) -> list[dict]:
    """The grid: main trials, then the bandwidth and granularity sweeps."""
    main = [dict(workload=w, cluster_size=n, method=m, wan_rate=p["wan_rates"][0], chunk=max(p["chunk_sizes"]))
            for w, n, m in itertools.product(p["workloads"], p["cluster_sizes"], p["methods"])]
    big, w0 = max(p["cluster_sizes"]), p["workloads"][0]
    rates = [dict(workload=w0, cluster_size=big, method=m, wan_rate=r, chunk=max(p["chunk_sizes"]))
             for r in p["wan_rates"][1:] for m in p["methods"]]
    chunks = [dict(workload=w0, cluster_size=big, method="shrinker", wan_rate=p["wan_rates"][0], chunk=c)
              for c in sorted(p["chunk_sizes"]) if c != max(p["chunk_sizes"])]
    return [dict(t, repeat=r) for r in range(p["repeats"]) for t in main + rates + chunks]


def check_params(p: dict, description=None) -> None:
    for m in p["methods"]:
        if m not in cluster.METHODS:
            raise UserError(f"unknown method {m!r}: use {', '.join(cluster.METHODS)}")
    for w in p["workloads"]:
        if w not in WORKLOADS:
            raise UserError(f"unknown workload {w!r}: use {', '.join(WORKLOADS)}")
    for c in p["chunk_sizes"]:
        if c < 64 or c & (c - 1) or c > 65536:
            raise UserError(f"chunk size {c} is not a power of two between 64 and 65536")
    for r in p["wan_rates"]:
        parse_rate(r)
    if p["pull"] not in PULL_POLICIES:
        raise UserError(f"unknown pull policy {p['pull']!r}: use {' or '.join(PULL_POLICIES)}")


def main(run: Run, testbed: Testbed, **p) -> None:
    p.pop("full")                      # the engine applied FULL and checked the parameters
    hvs = int(p["hypervisors_per_site"])
    with stage(run, "reserve"):
        res = testbed.reserve({p["source"]: 1 + hvs, p["destination"]: 1 + hvs}, p["walltime"], name="shrinker")
    failures = []
    try:
        with stage(run, "deploy"):
            testbed.deploy(res.nodes)
        src, dst = cluster.sites(res.nodes, p["source"], p["destination"])
        with stage(run, "configure"):
            cluster.configure(src, dst, vm_image.build(), run.dir / "logs")
        before = testbed.rates()["wan"].get("|".join(sorted((p["source"], p["destination"]))))
        try:
            grid = trials(p)
            sweep(run, grid, lambda t: failures.extend(_trial(run, testbed, src, dst, grid.index(t), t, p)),
                  name=lambda t: f"trial {t['method']} {t['workload']} x{t['cluster_size']} {t['wan_rate']} "
                                 f"{t['chunk']} B")
        finally:
            if before:
                testbed.shape(p["source"], p["destination"], f"{before}bit")
    finally:
        testbed.release(res)
    if failures:
        raise RuntimeError("failed trials or checks: " + "; ".join(failures))


def _trial(run: Run, testbed: Testbed, src, dst, k: int, t: dict, p: dict) -> list[str]:
    testbed.shape(p["source"], p["destination"], t["wan_rate"])
    cluster.flush_redis(src, dst)
    plans = cluster.plan_cluster(src, dst, t["cluster_size"], f"t{k}g")
    shrinker = t["method"].startswith("shrinker")
    common = dict(trial=k, repeat=t["repeat"], method=t["method"], workload=t["workload"],
                  cluster_size=t["cluster_size"], wan_mbit=parse_rate(t["wan_rate"]) / 1e6, chunk=t["chunk"])
    try:
        cluster.start_cluster(plans, t["workload"], p["memory_mb"], p["workload_mb"], p["dirty_rate_mb"])
        time.sleep(p["warmup_s"])            # the workload reaches its steady state (thesis: 30 s)
        if shrinker:
            cluster.start_agents(dst, f"--retries {int(p['retries'])} --pull {p['pull']}")
        counters = testbed.wan_bytes() if hasattr(testbed, "wan_bytes") else None
        t0 = time.time()
        try:
            reports = cluster.migrate(plans, t["method"], src, dst, chunk=t["chunk"], digest=p["digest"],
                                      rate_mbit=parse_rate(t["wan_rate"]) / 1e6)
        except RuntimeError as e:            # recorded; the grid goes on, the run fails at its end
            run.row(**common, level="cluster", guest="", ok=False, error=str(e)[:1000])
            return [f"trial {k}: {e}"]
        t1 = time.time()
        after = testbed.wan_bytes() if counters else None
        checks = {c["guest"]: c for c in cluster.check(plans)}
    finally:
        if shrinker:
            cluster.stop_agents(dst)
        cluster.stop_cluster(plans)
    guests = [{**common, "level": "guest", **_guest_metrics(r, shrinker), **checks[r["guest"]]} for r in reports]
    for g in guests:
        g["ok"] = bool(g["ram_verified"] and g["runs_at_destination"] and g["source_gone"]
                       and g["downtime_s"] is not None)
        run.row(**g)
    for r in reports:
        for x in r.get("rounds", []):     # Shrinker's rounds (round 0: the last, guest stopped)
            run.row(**common, level="round", guest=r["guest"], **{k: v for k, v in x.items() if k != "chunk_size"})
    failures = [f"trial {k} {g['guest']}" for g in guests if not g["ok"]]
    wan = after[p["source"]]["tx"] - counters[p["source"]]["tx"] if counters else None
    run.row(**common, level="cluster", guest="", total_time_s=round(t1 - t0, 4),
            downtime_s=max((g["downtime_s"] or 0) for g in guests),
            reported_downtime_s=max(g["reported_downtime_s"] for g in guests), wan_bytes=wan,
            bytes_sent=sum(g["bytes_sent"] for g in guests), ok=not failures)
    return failures


def _guest_metrics(r: dict, shrinker: bool) -> dict:
    if not shrinker:   # QEMU's query-migrate: times in ms
        ram = r.get("ram", {})
        return dict(guest=r["guest"], total_time_s=r["wall_s"], forced_stop=r["forced_stop"], reported_total_time_s=r.get("total-time", 0) / 1000,
                    reported_downtime_s=r.get("downtime", 0) / 1000, bytes_sent=ram.get("transferred", 0),
                    rounds=ram.get("dirty-sync-count", 0), chunks_full=ram.get("normal", 0),
                    chunks_uniform=ram.get("duplicate", 0), chunks_dedup=0, chunks_pulled=0, chunks_peer=0,
                    chunks_local=0, ram_verified=r.get("status") == "completed")
    d = r["destination"]
    rounds = r["rounds"]
    return dict(guest=r["guest"], total_time_s=r["total_time_s"], reported_downtime_s=r["downtime_s"],
                forced_stop=r["forced_stop"],
                bytes_sent=r["bytes_sent"], rounds=len(rounds), ram_chunks=r["ram_bytes"] // rounds[0]["chunk_size"],
                first_round_chunks=rounds[0]["full"] + rounds[0]["dedup"] + rounds[0]["uniform"], chunks_full=sum(x["full"] for x in rounds),
                chunks_dedup=sum(x["dedup"] for x in rounds), chunks_uniform=sum(x["uniform"] for x in rounds),
                chunks_pulled=d.get("pulled", 0), chunks_peer=d.get("peer", 0), chunks_local=d.get("local", 0),
                chunks_retried=d.get("retried", 0), ram_verified=True,
                **{f"downtime_{k}": v for k, v in r.get("downtime_phases", {}).items()},
                **{f"destination_{k}": d[k] for k in ("final_resolve_s", "final_pulls", "snapshot_s", "cont_s") if k in d})


def summary(rows) -> list[str]:
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
    ok = rows[rows.level == "guest"]["ok"]
    return out + [f"correctness: {int(ok.sum())}/{len(ok)} guests verified (RAM equal at stop, running at the "
                  f"destination, gone at the source)"]


def figures(df, outdir) -> list:
    """Like the thesis: per workload (Figs 6.4-6.6) (a) total migration time, (b) data on the WAN,
    (c) chunks per VM by type (Shrinker), (d) longest downtime, vs cluster size; Fig 6.7 time vs
    WAN rate; Fig 6.8 memory per VM fully sent vs deduplicated, vs chunk size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    c, g = df[df.level == "cluster"], df[df.level == "guest"]
    paths = []
    if "total_time_s" not in c or c.total_time_s.isna().all():     # every trial failed
        return paths
    c = c[c.total_time_s.notna()]

    def save(fig, name):
        fig.tight_layout()
        paths.append(outdir / f"shrinker-{name}.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)

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
