"""testbed-check: measure the testbed itself — the template every experiment follows.

Rows (metric = throughput | rtt | exec_latency):
  throughput: src, dst, scope (intra|inter), throughput_mbit_s, configured_mbit_s
  rtt:        src, dst, scope, rtt_ms (median of 10 pings; no delay emulation here)
  exec_latency: method (ssh|taktuk), nodes, repeat, time_s ("hostname" on that many nodes)
"""
from __future__ import annotations

import statistics
import time

from g5kdeploy import remote
from g5kdeploy.engine import stage
from g5kdeploy.remote import probe
from g5kdeploy.results import Run
from g5kdeploy.testbed import NodeSet, Testbed

NAME = "testbed-check"
PARAMS = {"walltime": "0:30", "exec_nodes": [1, 4, 16], "methods": ["ssh", "taktuk"], "repeats": 3,
          "iperf_seconds": 3}


def paths(nodes: NodeSet) -> list[tuple]:
    """Two nodes of each site (intra) and the first node of each pair of sites, both ways (inter)."""
    sites = nodes.by_site()
    out = [(s[0], s[1], "intra") for s in sites.values() if len(s) > 1]
    firsts = [s[0] for s in sites.values()]
    out += [(a, b, "inter") for a in firsts for b in firsts if a is not b]
    return out


def configured_mbit(testbed: Testbed, src, dst) -> float:
    rates = testbed.rates() if hasattr(testbed, "rates") else {}
    if not rates:
        return float("nan")
    if src.site == dst.site:
        return rates["lan"][src.site] / 1e6
    return rates["wan"]["|".join(sorted((src.site, dst.site)))] / 1e6


def measure_throughput(testbed: Testbed, nodes: NodeSet, seconds: float, run: Run | None = None) -> list[dict]:
    rows = []
    for src, dst, scope in paths(nodes):
        rows.append({"metric": "throughput", "src": src.hostname, "dst": dst.hostname, "scope": scope,
                     "throughput_mbit_s": probe.throughput(src, dst, seconds) / 1e6,
                     "configured_mbit_s": configured_mbit(testbed, src, dst)})
        if run:
            run.row(**rows[-1])
    return rows


def main(run: Run, testbed: Testbed, walltime, exec_nodes, methods, repeats, iperf_seconds):
    request = {s: site.size for s, site in testbed.description.sites.items()}
    with stage(run, "reserve"):
        res = testbed.reserve(request, walltime=walltime, name=NAME)
    try:
        with stage(run, "throughput", res.nodes):
            measure_throughput(testbed, res.nodes, iperf_seconds, run)
        with stage(run, "rtt", res.nodes):
            for src, dst, scope in paths(res.nodes):
                run.row(metric="rtt", src=src.hostname, dst=dst.hostname, scope=scope,
                        rtt_ms=probe.rtt_ms(src, dst))
        with stage(run, "exec_latency", res.nodes):
            for method in methods:
                for n in [k for k in exec_nodes if k <= len(res.nodes)]:
                    for i in range(repeats):
                        t0 = time.monotonic()
                        results = remote.run("hostname", res.nodes[:n], method=method)
                        run.row(metric="exec_latency", method=method, nodes=n, repeat=i,
                                time_s=time.monotonic() - t0, hosts_ok=len(results.ok))
    finally:
        with stage(run, "release"):
            testbed.release(res)


def summary(df) -> list[str]:
    """Lines for the console: medians per path / per method and size."""
    lines = []
    for r in df[df.metric == "throughput"].itertuples():
        lines.append(f"throughput {r.scope:5} {r.src.split('.')[0]:>12} -> {r.dst.split('.')[0]:<12} "
                     f"{r.throughput_mbit_s:8.1f} Mbit/s (configured {r.configured_mbit_s:.0f})")
    for r in df[df.metric == "rtt"].itertuples():
        lines.append(f"rtt        {r.scope:5} {r.src.split('.')[0]:>12} -> {r.dst.split('.')[0]:<12} {r.rtt_ms:8.3f} ms")
    lat = df[df.metric == "exec_latency"]
    for (method, n), g in lat.groupby(["method", "nodes"]):
        lines.append(f"exec       {method:6} on {int(n):2d} nodes: median {statistics.median(g.time_s):.2f} s")
    return lines


def figures(df, outdir) -> list:
    """exec latency vs nodes per method; measured vs configured throughput per path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    lat = df[df.metric == "exec_latency"].groupby(["method", "nodes"]).time_s.median().unstack(0)
    lat.plot(ax=a, marker="o")
    a.set(xlabel="nodes", ylabel="median time of `hostname` (s)", title="remote execution latency")
    thr = df[df.metric == "throughput"]
    labels = [f"{s.split('.')[0]}\n→{d.split('.')[0]}" for s, d in zip(thr.src, thr.dst)]
    x = range(len(thr))
    b.bar([i - 0.2 for i in x], thr.configured_mbit_s, 0.4, label="configured", color="lightgray")
    b.bar([i + 0.2 for i in x], thr.throughput_mbit_s, 0.4, label="measured (iperf3)")
    b.set_xticks(list(x), labels, fontsize=7)
    b.set(ylabel="Mbit/s", yscale="log", title="throughput")
    b.legend()
    fig.tight_layout()
    path = outdir / "testbed-check.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
