"""Shrinker vs every QEMU method on the default testbed, measured side by side in one run: idle
guests, 100 Mbit/s WAN, 4 hypervisors per site, median of 3 (sizes and methods interleaved).
Goals, 8 guests: against stock-zstd (multifd + zstd) WAN bytes <= 0.6 x, total time <= 0.8 x,
downtime <= 1 x; against stock WAN bytes <= 0.25 x, total time <= 0.4 x; 1 guest: total time
<= 1.05 x the fastest QEMU method. Shrinker without compression and without deduplication are
printed beside it. Downtime: the longest of the cluster, from QEMU's run-state trace (source
vCPU stop -> destination start), the same measure for every method."""


from benchmarks import common
from experiments import shrinker
from g5kdeploy import engine
from g5kdeploy.results import load

METHODS = ["stock", "stock-zstd", "shrinker", "shrinker-uncompressed", "shrinker-nodedup"]
GOALS = {8: {"stock-zstd": {"wan_bytes": 0.6, "total_time_s": 0.8, "downtime_s": 1.0},
             "stock": {"wan_bytes": 0.25, "total_time_s": 0.4}}}


def main() -> None:
    tb = common.testbed()
    run = engine.execute(shrinker.EXPERIMENT, tb, {"vmms_per_site": 4, "methods": METHODS,
                                                   "cluster_sizes": [1, 8], "repeats": 3, "warmup_s": 5})
    c = load(run.dir)
    c = c[c.level == "cluster"]
    for n in (8, 1):
        med = c[c.cluster_size == n].groupby("method")[
            ["total_time_s", "wan_bytes", "downtime_s", "reported_downtime_s"]].median()
        print(f"{n} idle guest(s), medians of 3:")
        for m, r in med.iterrows():
            print(f"  {m:22} {r.total_time_s:5.1f} s, {r.wan_bytes / 1e6:6.1f} MB, downtime "
                  f"{r.downtime_s * 1000:5.0f} ms (self-reported {r.reported_downtime_s * 1000:4.0f} ms)")
        for base, goals in GOALS.get(n, {}).items():
            for metric, goal in goals.items():
                ratio = med.loc["shrinker", metric] / med.loc[base, metric]
                print(f"  shrinker/{base} {metric}: {ratio:.2f} (goal <= {goal})")
        if n == 1:
            fastest = med.loc[[m for m in med.index if m.startswith("stock")], "total_time_s"].min()
            print(f"  shrinker/fastest QEMU method total_time_s: {med.loc['shrinker', 'total_time_s'] / fastest:.2f} "
                  f"(goal <= 1.05)")
    print(f"rows: {run.dir}")


if __name__ == "__main__":
    main()
