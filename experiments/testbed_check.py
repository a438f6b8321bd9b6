"""testbed-check: measure the testbed itself: throughput, round trips, remote execution
(the smallest experiment; the interface and its template: g5kdeploy/engine/experiment.py).

Rows (metric = throughput | rtt | exec_latency):
  throughput: src, dst, scope (intra|inter), throughput_mbit_s, configured_mbit_s (NaN where
    the testbed does not say)
  rtt:        src, dst, scope, rtt_ms (median of 10 pings; no delay emulation here)
  exec_latency: method (ssh|taktuk), nodes, repeat, time_s, hosts_ok ("hostname" on that many nodes)
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from g5kdeploy import remote
from g5kdeploy.engine import Experiment, param, reserved, sweep
from g5kdeploy.remote import probe
from g5kdeploy.results import Run, pyplot, save_figure
from g5kdeploy.testbed import NodeSet, Testbed


@dataclass(frozen=True)
class Params:
    walltime: str = param("0:30", "OAR walltime, H:MM")
    exec_nodes: list[int] = param([1, 4, 16], "node counts `hostname` is timed on")
    methods: list[str] = param(["ssh", "taktuk"], "remote execution methods")
    repeats: int = param(3, "repeats of each timing")
    iperf_seconds: float = param(3.0, "length of each iperf3 flow")
    FULL = {"repeats": 10, "iperf_seconds": 10.0}


def grid(nodes: NodeSet, p: Params) -> list[dict]:
    """Every measurement as a sweep point: a path's throughput and rtt, one timed `hostname`."""
    out = [{"metric": m, "src": a.hostname, "dst": b.hostname, "scope": scope}
           for m in ("throughput", "rtt") for a, b, scope in probe.paths(nodes)]
    out += [{"metric": "exec_latency", "method": method, "nodes": n, "repeat": i}
            for method in p.methods for n in p.exec_nodes if n <= len(nodes) for i in range(p.repeats)]
    return out


class TestbedCheck(Experiment):
    name = "testbed-check"
    Params = Params

    def request(self, p: Params, testbed: Testbed) -> dict[str, int]:
        return {s: n for s in testbed.description.sites if (n := len(testbed.available(s)))}   # every live node

    def validate(self, p: Params, testbed: Testbed) -> None:
        self.one_of("method", p.methods, remote.METHODS)

    def main(self, run: Run, testbed: Testbed, p: Params) -> None:
        with reserved(run, testbed, self.request(p, testbed), p.walltime, self.job_name) as res:
            node = {n.hostname: n for n in res.nodes}

            def measure(q: dict) -> None:
                if q["metric"] == "throughput":
                    run.row(**probe.throughput_row(testbed, node[q["src"]], node[q["dst"]], q["scope"],
                                                   p.iperf_seconds))
                elif q["metric"] == "rtt":
                    run.row(**q, rtt_ms=probe.rtt_ms(node[q["src"]], node[q["dst"]]))
                else:
                    t0 = time.monotonic()
                    results = remote.run("hostname", res.nodes[:q["nodes"]], method=q["method"])
                    run.row(**q, time_s=time.monotonic() - t0, hosts_ok=len(results.ok))

            sweep(run, grid(res.nodes, p), measure, name=lambda q: q["metric"])

    def summary(self, df) -> list[str]:
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


    def figures(self, df, outdir) -> list:
        """exec latency vs nodes per method; measured vs configured throughput per path."""
        plt = pyplot()
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
        path = save_figure(fig, outdir / "testbed-check.png")
        return [path]


EXPERIMENT = TestbedCheck()
