"""ViNe's cost, side by side in one run on the default testbed (rennes and nancy, 100 Mbit/s
WAN): iperf3 throughput and ping RTT between two sites' nodes through ViNe, with the
kernel's data plane (VXLAN) and with a user-level router (as the original ViNe), beside the
same pair routed directly (the sites are open, so every path exists); the same within a
site (which must not go through a VR); the time for a GNDT entry made on one VR to be in
the other's (changed -> learned, from their event logs); then the WAN at 1 Gbit/s, where the
routers' own speed shows. Goal (issue 20): ViNe costs <= 10 % of inter-site throughput at
100 Mbit/s, nothing intra-site. The settings alternate, 3 rounds, medians."""
import statistics
import time

from benchmarks import common
from g5kdeploy.remote import probe
from g5kdeploy.vine.overlay import DATAPLANES, Overlay

ROUNDS, SECONDS, LEARN = 3, 5, 10


def measure(a, b, c) -> dict:
    return {"inter": probe.throughput(a, c, SECONDS) / 1e6, "intra": probe.throughput(a, b, SECONDS) / 1e6,
            "rtt": probe.rtt_ms(a, c, 20), "rtt_intra": probe.rtt_ms(a, b, 20)}


def main() -> None:
    tb = common.testbed()
    by_site = tb.nodes().by_site()
    a, b, c = by_site["rennes"][0], by_site["rennes"][1], by_site["nancy"][0]
    runs: dict[str, list[dict]] = {"direct": [], **{plane: [] for plane in DATAPLANES}}
    learned = []
    overlays = {plane: Overlay(tb, ["rennes", "nancy"], dataplane=plane) for plane in DATAPLANES}
    try:
        for _ in range(ROUNDS):
            runs["direct"].append(measure(a, b, c))
            for plane, overlay in overlays.items():
                overlay.start()
                runs[plane].append(measure(a, b, c))
                for k in range(LEARN if plane == "kernel" else 0):
                    seq = overlay.ask("nancy", "add-network", f"198.19.{200 + k}.0/24")["seq"]
                    overlay.wait_converged()
                    changed = next(e["t"] for e in overlay.events("nancy")
                                   if e["event"] == "changed" and e["seq"] == seq)
                    got = next(e["t"] for e in overlay.events("rennes") if e["event"] == "learned" and e["seq"] == seq)
                    learned.append((got - changed) * 1000)
                overlay.stop()
                time.sleep(0.5)
        tb.shape("rennes", "nancy", "1gbit")             # where the router's own speed shows
        fast = {"direct": probe.throughput(a, c, SECONDS) / 1e6}
        for plane, overlay in overlays.items():
            overlay.start()
            fast[plane] = probe.throughput(a, c, SECONDS) / 1e6
            overlay.stop()
    finally:
        for overlay in overlays.values():
            overlay.stop()
        tb.shape("rennes", "nancy", "100mbit")

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])
    for key, unit, label in (("inter", "Mbit/s", "rennes -> nancy"), ("intra", "Mbit/s", "rennes -> rennes"),
                             ("rtt", "ms", "RTT rennes -> nancy"), ("rtt_intra", "ms", "RTT rennes -> rennes")):
        d = med("direct", key)
        print(f"{label:22} direct {d:8.2f} {unit:6}" + "".join(
            f"  {plane} {med(plane, key):8.2f} {unit} ({med(plane, key) / d:.3f} of direct; runs "
            f"{', '.join(f'{r[key]:.1f}' for r in runs[plane])})" for plane in DATAPLANES))
    for plane in DATAPLANES:
        print(f"inter-site throughput cost of ViNe, {plane} data plane: "
              f"{100 * (1 - med(plane, 'inter') / med('direct', 'inter')):.1f} % (goal <= 10 %)")
    print("at 1 Gbit/s: " + ", ".join(f"{k} {v:.0f} Mbit/s" for k, v in fast.items()) +
          f" (kernel/user = {fast['kernel'] / fast['user']:.2f})")
    print(f"a GNDT entry made on nancy's VR is in rennes's after {statistics.median(learned):.1f} ms "
          f"(median of {len(learned)}; max {max(learned):.1f} ms)")


if __name__ == "__main__":
    main()
