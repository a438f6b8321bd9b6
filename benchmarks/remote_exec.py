"""`hostname` on 1, 4, 16 nodes with ssh (execo Remote) vs TakTuk (execo TaktukRemote),
side by side in one run on the running testbed (`invoke testbed-up` first)."""
import statistics
import time

from g5kdeploy import remote, testbed

REPEATS = 5


def main() -> None:
    nodes = testbed.open("local").nodes()
    for n in (1, 4, 16):
        if n > len(nodes):
            break
        med = {}
        for method in ("ssh", "taktuk"):
            times = []
            for _ in range(REPEATS):
                t0 = time.monotonic()
                res = remote.run("hostname", nodes[:n], method=method)
                times.append(time.monotonic() - t0)
                assert not res.failed, res.summary()
            med[method] = statistics.median(times)
        print(f"{n:2d} nodes: ssh {med['ssh']:.2f} s, taktuk {med['taktuk']:.2f} s, "
              f"taktuk/ssh = {med['taktuk'] / med['ssh']:.2f} (medians of {REPEATS})")


if __name__ == "__main__":
    main()
