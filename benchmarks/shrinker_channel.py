"""What authenticating Shrinker's channel costs per frame, without a testbed: the frames of one
idle 128 MiB guest's first round (as measured: ~84 % uniform chunks, the rest full 4 KiB chunks
with their SHA-1), sent and received through a socket pair with bare frames (type, index,
length, payload: the unauthenticated protocol) and with the channel's HMAC-SHA256 tags, the
destination's digest check of full chunks included; alternated, median of 5. Prints the CPU
time per guest each way and the ratio."""

import hashlib
import os
import socket
import statistics
import threading
import time

from g5kdeploy.shrinker import channel as F

CHUNKS, FULL_SHARE, CHUNK = 32768, 0.16, 4096


def frames() -> list[tuple[int, int, bytes]]:
    out = []
    for i in range(CHUNKS):
        if i % 100 < FULL_SHARE * 100:
            data = os.urandom(CHUNK)
            out.append((F.FULL, i, hashlib.sha1(data).digest() + data))
        else:
            out.append((F.UNIFORM, i, b"\0"))
    return out


def bare(todo, inp, out) -> None:
    """The unauthenticated protocol: header and payload, nothing checked."""
    for kind, index, payload in todo:
        out.write(F.HEADER.pack(kind, index, len(payload)) + payload)
    out.flush()


def bare_receive(inp, n) -> None:
    for _ in range(n):
        _, _, length = F.HEADER.unpack(inp.read(F.HEADER.size))
        inp.read(length)


def authenticated(todo, inp, out) -> None:
    chan = F.Channel(inp, out, KEY, "source")
    for frame in todo:
        chan.send(*frame)
    chan.flush()


def authenticated_receive(inp, n) -> None:
    chan = F.Channel(inp, None, KEY, "destination", limit=20 + CHUNK)
    for _ in range(n):
        kind, _, payload = chan.receive()
        if kind == F.FULL and hashlib.sha1(payload[20:]).digest() != payload[:20]:
            raise RuntimeError("digest")


KEY = os.urandom(32)


def once(send, receive, todo) -> tuple[float, float]:
    """(sender CPU s, receiver CPU s) for the frames through a socket pair."""
    a, b = socket.socketpair()
    cpu = {}

    def reader():
        t = time.thread_time()
        receive(b.makefile("rb", buffering=1 << 16), len(todo))
        cpu["receive"] = time.thread_time() - t
    r = threading.Thread(target=reader)
    r.start()
    t = time.thread_time()
    send(todo, None, a.makefile("wb", buffering=1 << 20))
    cpu["send"] = time.thread_time() - t
    r.join()
    a.close()
    b.close()
    return cpu["send"], cpu["receive"]


def main(repeats: int = 5) -> None:
    todo = frames()
    results = {"bare": [], "authenticated": []}
    for _ in range(repeats):
        results["bare"].append(once(bare, bare_receive, todo))
        results["authenticated"].append(once(authenticated, authenticated_receive, todo))
    med = {k: tuple(statistics.median(x[i] for x in v) for i in (0, 1)) for k, v in results.items()}
    for k, (s, r) in med.items():
        print(f"{k:13}: send {s * 1000:6.1f} ms, receive {r * 1000:6.1f} ms CPU per guest ({len(todo)} frames)")
    (bs, br), (as_, ar) = med["bare"], med["authenticated"]
    print(f"authenticated/bare: send {as_ / bs:.2f}, receive (with the digest check) {ar / br:.2f}; "
          f"extra CPU for 8 guests: {8 * ((as_ - bs) + (ar - br)):.2f} s; extra bytes per frame: {F.TAG}")


if __name__ == "__main__":
    main()
