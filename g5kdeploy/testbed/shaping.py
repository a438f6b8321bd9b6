"""`tc` command lines that shape links: tbf for one-rate links, htb+u32 for per-peer rates.

No netem in this kernel: rates only, no delay or loss emulation; tbf and htb are FIFOs,
so parallel flows share the rate unfairly (aggregate exact)."""
from __future__ import annotations

HZ = 250                 # kernel timer frequency here: burst must cover rate/HZ
UNLIMITED = 10 * 10**9   # the default htb class: traffic not to/from a shaped peer


def burst_bytes(rate: int) -> int:
    """10 ms worth of bytes, at least 32 kB (>= rate/HZ with margin)."""
    return max(rate // 8 // 100, 32000, rate // 8 // HZ + 1600)


def tbf(ns: str, dev: str, rate: int) -> list[list[str]]:
    """One link direction limited to `rate` bit/s."""
    return [["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf",
             "rate", f"{rate}bit", "burst", str(burst_bytes(rate)), "latency", "20ms"]]


def htb(ns: str, dev: str, peers: dict[str, tuple[int, list[str]]], match: str) -> list[list[str]]:
    """Egress of `dev` shaped per peer: name -> (rate, the networks that are that peer),
    matched on `match` ('dst' or 'src'); the rest unlimited."""
    assert match in ("dst", "src")
    cmds = [clear(ns, dev),
            ["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1"],
            _htb_class(ns, dev, "1:1", UNLIMITED)]
    for k, (_, (rate, networks)) in enumerate(sorted(peers.items()), start=10):
        cmds.append(_htb_class(ns, dev, f"1:{k}", rate))
        cmds += [["tc", "-n", ns, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip",
                  "prio", "1", "u32", "match", "ip", match, net, "flowid", f"1:{k}"] for net in networks]
    return cmds


def _htb_class(ns: str, dev: str, classid: str, rate: int) -> list[str]:
    b = str(burst_bytes(rate))
    return ["tc", "-n", ns, "class", "add", "dev", dev, "parent", "1:", "classid", classid, "htb",
            "rate", f"{rate}bit", "burst", b, "cburst", b, "quantum", "1514"]


def clear(ns: str, dev: str) -> list[str]:
    return ["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"]
