"""Shrinker vs stock QEMU on the default testbed, measured side by side in one run: idle
guests, 100 Mbit/s WAN, 4 hypervisors per site, median of 3 (sizes and methods interleaved).
Goals: 8 guests: WAN bytes <= 0.4 x stock, total time <= 0.5 x stock, downtime <= stock's;
1 guest: total time <= 1.05 x stock. Downtime: the longest of the cluster, from QEMU's run-state
trace (source vCPU stop -> destination start), the same measure for both methods."""


from benchmarks import common
from experiments import shrinker
from g5kdeploy import engine
from g5kdeploy.results import load


def main() -> None:
    tb = common.testbed()
    run = engine.execute(shrinker.EXPERIMENT, tb, {"vmms_per_site": 4, "methods": ["stock", "shrinker"],
                                        "cluster_sizes": [1, 8], "repeats": 3, "warmup_s": 5})
    c = load(run.dir)
    c = c[c.level == "cluster"]
    for n, goals in ((8, {"wan_bytes": 0.4, "total_time_s": 0.5, "downtime_s": 1.0}), (1, {"total_time_s": 1.05})):
        med = c[c.cluster_size == n].groupby("method")[
            ["total_time_s", "wan_bytes", "downtime_s", "reported_downtime_s"]].median()
        print(f"{n} idle guest(s), medians of 3: " + "; ".join(
            f"{m}: {r.total_time_s:.1f} s, {r.wan_bytes / 1e6:.1f} MB, downtime {r.downtime_s * 1000:.0f} ms "
            f"(self-reported {r.reported_downtime_s * 1000:.0f} ms)" for m, r in med.iterrows()))
        for metric, goal in goals.items():
            ratio = med.loc["shrinker", metric] / med.loc["stock", metric]
            print(f"  shrinker/stock {metric}: {ratio:.2f} (goal <= {goal})")
    print(f"rows: {run.dir}")


if __name__ == "__main__":
    main()
