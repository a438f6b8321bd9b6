"""What a client host sees of a guest across a migration, run on the client (standard library
and ping only): `python3 -m g5kdeploy.vine.watch counter|bulk ...`, JSON on stdout.

* counter IP: reads the guest's counter (TCP port 7000: numbered lines, one every 10 ms) and
  pings it every 10 ms until SIGTERM; then prints every line's arrival time (epoch s), every
  answer's time and round trip (ms), the numbers skipped, and how the connection ended
  (`open`, `closed`, `reset`...).
* bulk IP SECONDS: the guest's bulk stream (TCP port 7001) read for SECONDS: bytes/s."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

COUNTER_PORT, BULK_PORT = 7000, 7001
PING_INTERVAL_S = 0.01
ANSWER = re.compile(rb"^\[(\d+\.\d+)\] \d+ bytes from .* time=([\d.]+) ms")


def counter(ip: str) -> dict:
    terminated = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    state = {"lines": [], "first": None, "last": None, "skipped": 0, "ended": "open"}
    threading.Thread(target=_read, args=(ip, state), daemon=True).start()
    ping = subprocess.Popen(["ping", "-n", "-D", "-i", str(PING_INTERVAL_S), ip], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    answers: list[list[float]] = []
    threading.Thread(target=lambda: answers.extend([float(m.group(1)), float(m.group(2))] for line in ping.stdout
                                                   if (m := ANSWER.match(line))), daemon=True).start()
    terminated.wait()
    ping.terminate()
    ping.wait()
    return {**state, "lines": list(state["lines"]), "pings": list(answers)}


def _read(ip: str, state: dict) -> None:
    """The counter's lines into `state` (arrival times, numbers skipped) until it ends."""
    try:
        with socket.create_connection((ip, COUNTER_PORT), timeout=5) as s:
            s.settimeout(None)
            buf = b""
            for chunk in iter(lambda: s.recv(4096), b""):
                *done, buf = (buf + chunk).split(b"\n")
                t = time.time()
                for x in done:
                    n = int(x)
                    if state["last"] is not None and n != state["last"] + 1:
                        state["skipped"] += abs(n - state["last"] - 1)
                    state["first"] = n if state["first"] is None else state["first"]
                    state["last"] = n
                    state["lines"].append(t)
            state["ended"] = "closed"
    except ConnectionResetError:
        state["ended"] = "reset"
    except (OSError, ValueError) as e:
        state["ended"] = f"error: {e}"


def bulk(ip: str, seconds: float) -> dict:
    with socket.create_connection((ip, BULK_PORT), timeout=5) as s:
        s.settimeout(5)
        got, t0 = 0, time.monotonic()
        while (elapsed := time.monotonic() - t0) < seconds:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            got += len(chunk)
    return {"bytes": got, "seconds": round(elapsed, 4), "bytes_per_s": round(got / elapsed, 1)}


def main(argv: list[str]) -> None:
    out = counter(argv[1]) if argv[0] == "counter" else bulk(argv[1], float(argv[2]))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
