"""What waiting before pulling buys (thesis §6.5.2.1, future work): 8 idle guests, 100 Mbit/s
WAN, Shrinker with `pull=at-once` (the thesis: a digest no destination host holds is pulled
from the source at once) and `pull=deferred` (retried, deferred to the next round, pulled
only once the guest is stopped), runs alternated, 3 each. Prints medians and ratios."""

import pandas as pd


from benchmarks import common
from experiments import shrinker
from g5kdeploy import engine
from g5kdeploy.results import load

POLICIES = ("at-once", "deferred")


def main(repeats: int = 3) -> None:
    tb = common.testbed()
    frames = []
    for r in range(repeats):
        for policy in POLICIES:
            run = engine.execute(shrinker.EXPERIMENT, tb, {"vmms_per_site": 4, "methods": ["shrinker"],
                                                "cluster_sizes": [8], "pull": policy, "warmup_s": 5})
            frames.append(load(run.dir).assign(pull=policy, repeat=r))
    df = pd.concat(frames)
    guests = df[df.level == "guest"].groupby(["pull", "repeat"])[["chunks_pulled", "chunks_retried"]].sum()
    cluster = df[df.level == "cluster"].set_index(["pull", "repeat"])[["total_time_s", "wan_bytes", "downtime_s"]]
    med = guests.join(cluster).groupby("pull").median()
    print(f"8 idle guests, medians of {repeats} (per cluster):")
    print(med.to_string())
    d, a = med.loc["deferred"], med.loc["at-once"]
    print(f"deferred/at-once: pulled chunks {d.chunks_pulled / max(a.chunks_pulled, 1):.2f}, "
          f"WAN bytes {d.wan_bytes / a.wan_bytes:.2f}, time {d.total_time_s / a.total_time_s:.2f}, "
          f"downtime {d.downtime_s / a.downtime_s:.2f}")


if __name__ == "__main__":
    main()
