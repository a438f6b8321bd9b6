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
from g5kdeploy.engine import stage, sweep
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


def throughput_row(testbed: Testbed, src, dst, scope: str, seconds: float) -> dict:
    return {"metric": "throughput", "src": src.hostname, "dst": dst.hostname, "scope": scope,
            "throughput_mbit_s": probe.throughput(src, dst, seconds) / 1e6,
            "configured_mbit_s": configured_mbit(testbed, src, dst)}


def measure_throughput(testbed: Testbed, nodes: NodeSet, seconds: float) -> list[dict]:
    return [throughput_row(testbed, src, dst, scope, seconds) for src, dst, scope in paths(nodes)]


def grid(nodes: NodeSet, exec_nodes, methods, repeats) -> list[dict]:
    """Every measurement as a sweep point: a path's throughput and rtt, one timed `hostname`."""
    out = [{"metric": m, "src": a.hostname, "dst": b.hostname, "scope": scope}
           for m in ("throughput", "rtt") for a, b, scope in paths(nodes)]
    out += [{"metric": "exec_latency", "method": method, "nodes": n, "repeat": i}
            for method in methods for n in exec_nodes if n <= len(nodes) for i in range(repeats)]
    return out


def main(run: Run, testbed: Testbed, walltime, exec_nodes, methods, repeats, iperf_seconds):
    request = {s: site.size for s, site in testbed.description.sites.items()}
    with stage(run, "reserve"):
        res = testbed.reserve(request, walltime=walltime, name=NAME)
    node = {n.hostname: n for n in res.nodes}

    def measure(p: dict) -> None:
        if p["metric"] == "throughput":
            run.row(**throughput_row(testbed, node[p["src"]], node[p["dst"]], p["scope"], iperf_seconds))
        elif p["metric"] == "rtt":
            run.row(**p, rtt_ms=probe.rtt_ms(node[p["src"]], node[p["dst"]]))
        else:
            t0 = time.monotonic()
            results = remote.run("hostname", res.nodes[:p["nodes"]], method=p["method"])
            run.row(**p, time_s=time.monotonic() - t0, hosts_ok=len(results.ok))

    try:
        sweep(run, grid(res.nodes, exec_nodes, methods, repeats), measure, name=lambda p: p["metric"])
    finally:
        with stage(run, "release", cleanup=True):
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
