"""Measure the network between nodes with real tools: iperf3 throughput, ping RTT."""
from __future__ import annotations

import json
import re
import statistics
import time

from g5kdeploy.remote import run
from g5kdeploy.testbed import Feature
from g5kdeploy.testbed.model import Node

IPERF_PORT = 5201


def throughput(src: Node, dst: Node, seconds: float = 3) -> float:
    """TCP goodput src -> dst in bit/s (iperf3, first second omitted)."""
    server = run(f"iperf3 -s -1 -D -p {IPERF_PORT}", dst)
    if server.failed:
        raise RuntimeError(f"iperf3 server on {dst}: {server.summary()}")
    for _ in range(10):   # the daemonized server may not listen yet
        client = run(f"iperf3 -c {dst.address} -p {IPERF_PORT} -t {seconds} -O 1 -J", src, timeout=seconds + 30)
        if client.ok:
            return float(json.loads(client[0].stdout)["end"]["sum_received"]["bits_per_second"])
        time.sleep(0.2)
    raise RuntimeError(f"iperf3 {src} -> {dst}: {client.summary()}")


def rtt_ms(src: Node, dst: Node, count: int = 10) -> float:
    """Median round-trip time src -> dst in ms (ping)."""
    r = run(f"ping -n -c {count} -i 0.05 {dst.address}", src, timeout=30)
    if r.failed:
        raise RuntimeError(f"ping {src} -> {dst}: {r.summary()}")
    times = [float(t) for t in re.findall(r"time=([\d.]+) ms", r[0].stdout)]
    return statistics.median(times)


def paths(nodes) -> list[tuple]:
    """Two nodes of each site (intra) and the first node of each pair of sites, both ways (inter)."""
    sites = nodes.by_site()
    out = [(s[0], s[1], "intra") for s in sites.values() if len(s) > 1]
    firsts = [s[0] for s in sites.values()]
    return out + [(a, b, "inter") for a in firsts for b in firsts if a is not b]


def configured_mbit(testbed, src: Node, dst: Node) -> float:
    """The rate the testbed gives the path src -> dst (NaN where it does not say)."""
    if Feature.RATES not in testbed.features:
        return float("nan")
    rates = testbed.rates()
    if src.site == dst.site:
        return rates["lan"][src.site] / 1e6
    return rates["wan"]["|".join(sorted((src.site, dst.site)))] / 1e6


def throughput_row(testbed, src: Node, dst: Node, scope: str, seconds: float) -> dict:
    """One measured path beside its configured rate."""
    return {"metric": "throughput", "src": src.hostname, "dst": dst.hostname, "scope": scope,
            "throughput_mbit_s": throughput(src, dst, seconds) / 1e6,
            "configured_mbit_s": configured_mbit(testbed, src, dst)}
