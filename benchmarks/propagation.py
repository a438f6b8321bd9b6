"""Image propagation on the default testbed against the wire (thesis §3.5): a 256 MiB image,
N = 1..16 VMs on as many VMMs, 250 Mbit/s LAN, medians of 3 runs (methods interleaved).
Goals: chain T(N) <= 1.25 x its wire limit S/B + (N-1)c/B for every N, and T(16)/T(1) <= 1.3;
scp within +-15 % of its model N.S/B; pre-propagated qcow: instantiation per VM <= 0.5 s and
flat in N (boot reported apart). T = propagation time (start -> last VMM's copy checked)."""


from benchmarks import common
from experiments import propagation
from g5kdeploy import engine
from g5kdeploy.results import load


def main() -> None:
    tb = common.testbed()
    run = engine.execute(propagation.EXPERIMENT, tb, {"methods": ["scp", "chain", "qcow"], "repeats": 3})
    df = load(run.dir)
    r = df[df.level == "request"].astype({"n_vms": int})
    med = r.groupby(["method", "n_vms"])[["propagation_s", "total_s", "wire_limit_s", "model_scp_s",
                                          "instantiation_s", "boot_s"]].median()
    vm = df[(df.level == "vm") & (df.method == "qcow")].astype({"n_vms": int})
    per_vm = vm.groupby("n_vms")["instantiation_s"].agg(["median", "max"])
    print(f"{'method':6} {'N':>3} {'T (s)':>7} {'model (s)':>9} {'T/model':>8} {'total (s)':>9} "
          f"{'inst. (s)':>9} {'boot (s)':>8}")
    for (m, n), x in med.iterrows():
        model = x.model_scp_s if m == "scp" else x.wire_limit_s if m == "chain" else float("nan")
        print(f"{m:6} {n:3d} {x.propagation_s:7.2f} {model:9.2f} {x.propagation_s / model:8.2f} {x.total_s:9.1f} "
              f"{x.instantiation_s:9.2f} {x.boot_s:8.1f}")
    chain = med.loc["chain"]
    scp = med.loc["scp"]
    print(f"chain: worst T(N)/wire limit {(chain.propagation_s / chain.wire_limit_s).max():.2f} (goal <= 1.25); "
          f"T(16)/T(1) {chain.propagation_s.iloc[-1] / chain.propagation_s.iloc[0]:.2f} (goal <= 1.3)")
    ratio = scp.propagation_s / scp.model_scp_s
    print(f"scp: T(N)/model from {ratio.min():.2f} to {ratio.max():.2f} (goal 0.85..1.15)")
    print(f"qcow: instantiation per VM, median {per_vm['median'].min():.2f}..{per_vm['median'].max():.2f} s, "
          f"worst {per_vm['max'].max():.2f} s over N = {', '.join(map(str, per_vm.index))} (goal <= 0.5, flat)")
    print(f"rows: {run.dir}")


if __name__ == "__main__":
    main()
