"""Measure the network between nodes with real tools: iperf3 throughput, ping RTT."""
from __future__ import annotations

import json
import re
import statistics
import time

from g5kdeploy.remote import run
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
