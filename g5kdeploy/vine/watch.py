"""What a client VM sees of a guest across a migration, asked from the VMM it runs on
(standard library only): `python3 -m g5kdeploy.vine.watch counter|bulk CLIENT ...`, JSON on
stdout. The client VM (workload `client`, g5kdeploy/vm/guest/workload) watches the guest it
was booted with and answers on its port 7002 one question per connection; the times are the
VMM's, taken as the client's lines arrive across the VMM's bridge.

* counter CLIENT: the guest's counter (its TCP port 7000: numbered lines, one every 10 ms) as
  the client reads it, and the client's pings of the guest every 10 ms, until SIGTERM; then
  every line's arrival time (epoch s), every answer's time and round trip (ms), the numbers
  skipped, and how the client's connection ended (`open`, `closed`, `reset`...).
* bulk CLIENT SECONDS: the bytes the client read of the guest's bulk stream (its TCP port
  7001) in SECONDS (whole): bytes/s."""
from __future__ import annotations

import json
import re
import signal
import socket
import sys
import threading
import time

COUNTER_PORT, BULK_PORT, CLIENT_PORT = 7000, 7001, 7002
ANSWER = re.compile(rb"^\d+ bytes from .* time=([\d.]+) ms")


def ask(client: str, question: str, timeout: float = 5) -> socket.socket:
    """A connection to the client VM that asked it `question`."""
    s = socket.create_connection((client, CLIENT_PORT), timeout=timeout)
    s.sendall(question.encode() + b"\n")
    s.settimeout(None)
    return s


def lines(s: socket.socket):
    """(arrival time, line) of what the client sends, until it closes."""
    buf = b""
    for chunk in iter(lambda: s.recv(4096), b""):
        *done, buf = (buf + chunk).split(b"\n")
        t = time.time()
        yield from ((t, x) for x in done)


def counter(client: str) -> dict:
    terminated = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    state = {"lines": [], "first": None, "last": None, "skipped": 0, "ended": "open"}
    answers: list[list[float]] = []
    streams = [ask(client, "counter"), ask(client, "ping")]
    threading.Thread(target=_read, args=(streams[0], state), daemon=True).start()
    threading.Thread(target=lambda: answers.extend([t, float(m.group(1))] for t, x in lines(streams[1])
                                                   if (m := ANSWER.match(x))), daemon=True).start()
    terminated.wait()
    for s in streams:
        s.close()
    return {**state, "lines": list(state["lines"]), "pings": list(answers)}


def _read(s: socket.socket, state: dict) -> None:
    """The counter's lines into `state` (arrival times, numbers skipped) until it ends; a line
    that is not a number is the client's nc saying why its connection ended."""
    try:
        for t, x in lines(s):
            if not x.strip().isdigit():
                state["ended"] = "reset" if b"reset" in x else f"error: {x.decode(errors='replace')[:200]}"
                return
            n = int(x)
            if state["last"] is not None and n != state["last"] + 1:
                state["skipped"] += abs(n - state["last"] - 1)
            state["first"] = n if state["first"] is None else state["first"]
            state["last"] = n
            state["lines"].append(t)
        state["ended"] = "closed"
    except OSError as e:
        if state["ended"] == "open" and s.fileno() != -1:
            state["ended"] = f"error: {e}"


def bulk(client: str, seconds: int) -> dict:
    with ask(client, f"bulk {seconds}") as s:
        s.settimeout(seconds + 30)
        out = b"".join(iter(lambda: s.recv(4096), b"")).strip()
    if not out.isdigit():
        raise SystemExit(f"client {client}: no bulk count ({out[-200:]!r})")
    return {"bytes": int(out), "seconds": seconds, "bytes_per_s": round(int(out) / seconds, 1)}


def main(argv: list[str]) -> None:
    out = counter(argv[1]) if argv[0] == "counter" else bulk(argv[1], int(argv[2]))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
