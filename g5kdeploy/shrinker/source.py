"""Source agent: migrates one guest's RAM to a destination agent, then lets QEMU move the
device state, over a channel authenticated with the migration's key (left by the orchestrator
in the key directory, removed once read). The source guest stays paused until the destination's
copy of its RAM is verified equal to its own.
`python3 -m g5kdeploy.shrinker.source --ram F --qmp S --to HOST:PORT ...` prints one JSON object: rounds, chunks (full / dedup / uniform / pulled), bytes, times."""
from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import socket
import sys
import threading
import time
from pathlib import Path

from g5kdeploy.shrinker import channel as F, chunks as C
from g5kdeploy.vm.qemu import QMP

BATCH = 1024          # SETNX queries per pipeline


class Source:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.hash = C.digest_fn(a.digest)
        self.fd = os.open(a.ram, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.sent: list[bytes] = []              # the RAM as the destination has it, by block
        self.resend: set[int] = set()            # chunks pulled since the last round started
        self.resend_lock = threading.Lock()
        self.redis = None
        if a.redis:
            self.redis, self.unavailable = C.site_redis(a.redis)
        self.sock = socket.create_connection(C.hostport(a.to), timeout=60)
        self.sock.settimeout(None)    # a round can send for minutes with nothing coming back
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.chan = F.Channel(self.sock.makefile("rb", buffering=1 << 16), self.sock.makefile("wb", buffering=1 << 20),
                              F.read_key(a.guest, Path(a.keys), remove=True), "source")
        self.lock = threading.Lock()
        self.replies: dict[int, tuple[int, bytes]] = {}
        self.replied = threading.Condition()
        self.stats = {"rounds": [], "pulled": 0}
        self.compressor = F.compressor(a.compression, a.level)

    # -- channel -------------------------------------------------------------------------
    def send(self, kind: int, index: int = 0, payload: bytes = b"") -> int:
        with self.lock:
            return self.chan.send(kind, index, payload)

    def flush(self) -> None:
        with self.lock:
            self.chan.flush()

    def reader(self) -> None:
        """Serve the destination's pulls (current content) and collect its control replies."""
        try:
            while True:
                kind, index, payload = self.chan.receive()
                if kind == F.PULL:
                    if index * self.a.chunk >= self.size:
                        raise F.Refused(f"a pull of chunk {index}, beyond the RAM")
                    # the current content, which may be newer than the digest it replaces:
                    # the next round sends this chunk again, whatever it holds then
                    with self.resend_lock:
                        data = os.pread(self.fd, self.a.chunk, index * self.a.chunk)
                        self.resend.add(index)
                    self.stats["pulled"] += 1
                    self.send(F.PULL_REPLY, index, data)
                    self.flush()
                else:
                    with self.replied:
                        self.replies[kind] = (index, payload)
                        self.replied.notify_all()
        except (ConnectionError, OSError, ValueError) as e:
            with self.replied:
                self.replies.setdefault(F.ABORT, (0, f"channel closed ({type(e).__name__}: {e})".encode()))
                self.replied.notify_all()

    def wait_reply(self, kind: int, timeout: float = 300) -> bytes:
        with self.replied:
            ok = self.replied.wait_for(lambda: kind in self.replies or F.ABORT in self.replies, timeout)
            if kind in self.replies:                     # arrived, even if the channel closed after
                return self.replies.pop(kind)[1]
            reason = self.replies.get(F.ABORT, (0, b"no answer" if ok else b"timeout"))[1]
            raise RuntimeError(f"destination: {reason.decode(errors='replace')}")

    # -- rounds --------------------------------------------------------------------------
    def round(self, number: int) -> dict:
        """Send every chunk (first round), then every chunk changed since it was sent."""
        t0 = time.monotonic()
        r = {"round": number, "full": 0, "dedup": 0, "uniform": 0, "bytes": 0, "chunks": 0, "chunk_size": self.a.chunk}
        pending: list[tuple[int, bytes, bytes]] = []
        with self.resend_lock:
            resend, self.resend = self.resend, set()
        chunks = (C.changed_chunks(self.fd, self.size, self.a.chunk, self.sent) if self.sent else
                  C.read_chunks(self.fd, self.size, self.a.chunk, self.sent))
        for index, data in itertools.chain(chunks, self._pulled_chunks(resend)):
            resend.discard(index)
            r["chunks"] += 1
            byte = C.uniform(data)
            if byte is not None:
                r["uniform"] += 1
                r["bytes"] += self.send(F.UNIFORM, index, bytes([byte]))
                continue
            pending.append((index, self.hash(data), data))
            if len(pending) >= BATCH:
                self._send_batch(pending, r)
                pending = []
        self._send_batch(pending, r)
        r["bytes"] += self.send(F.ROUND_END, number)
        self.flush()
        r["time_s"] = round(time.monotonic() - t0, 4)
        self.stats["rounds"].append(r)
        return r

    def _pulled_chunks(self, resend: set[int]):
        """The chunks pulled before this round started that it has not sent as changed
        (evaluated once those are sent: `resend` shrinks meanwhile)."""
        for index in sorted(resend):
            yield index, os.pread(self.fd, self.a.chunk, index * self.a.chunk)

    def _send_batch(self, pending: list[tuple[int, bytes, bytes]], r: dict) -> None:
        """First sender of a digest in the source site ships the data, the others the digest
        (SETNX queries pipelined: one round trip per batch, not per chunk); the data of a
        batch goes compressed together (PACKED frames), unless compression is off."""
        if not pending:
            return
        first = [True] * len(pending)       # no coordination (or unreachable): send the data
        if self.redis is not None:
            pipe = self.redis.pipeline(transaction=False)
            for _, d, _ in pending:
                pipe.setnx(self.a.key_prefix + d.hex(), 1)
            try:
                first = pipe.execute()
            except self.unavailable:
                self.stats["coordination_failures"] = self.stats.get("coordination_failures", 0) + 1
        full = []
        for (index, d, data), is_first in zip(pending, first):
            if is_first:
                full.append((index, d + data))
            else:
                r["dedup"] += 1
                r["bytes"] += self.send(F.DIGEST, index, d)
        r["full"] += len(full)
        if self.compressor is None:
            for index, body in full:
                r["bytes"] += self.send(F.FULL, index, body)
            return
        per_frame = F.pack_count(C.ALGORITHMS[self.a.digest] + self.a.chunk)
        for k in range(0, len(full), per_frame):
            entries = full[k:k + per_frame]
            r["bytes"] += self.send(F.PACKED, len(entries), F.pack(entries, self.compressor))

    # -- the whole migration -------------------------------------------------------------
    def migrate(self) -> dict:
        a, t0 = self.a, time.monotonic()
        hello = {"guest": a.guest, "size": self.size, "chunk": a.chunk, "digest": a.digest,
                 "compression": a.compression}
        self.send(F.HELLO, 0, json.dumps(hello).encode())
        self.flush()
        threading.Thread(target=self.reader, daemon=True).start()
        self.wait_reply(F.HELLO)
        # pre-copy until what is left (dirtied chunks, and digests the destination site
        # cannot resolve yet) fits the downtime target, or the rounds or time run out
        target_bytes = a.downtime_ms / 1000 * a.rate_mbit * 1e6 / 8
        deadline, number, dirty_rounds, forced = time.monotonic() + a.precopy_s, 0, 0, False
        fewest, progress_at = None, time.monotonic()
        while True:
            number += 1
            r = self.round(number)
            r["deferred"] = json.loads(self.wait_reply(F.ROUND_ACK))["deferred"]
            converged = number > 1 and r["chunks"] * a.chunk <= target_bytes
            # deferred digests are pulled over the WAN once stopped, while every other guest
            # of the cluster migrates too: wait until peers hold (nearly) all of them
            if converged and r["deferred"] <= a.max_deferred:
                break
            if not converged:
                dirty_rounds += 1
                if dirty_rounds >= a.max_rounds:
                    forced = True
                    break
                continue
            now = time.monotonic()
            if fewest is None or r["deferred"] < fewest:
                fewest, progress_at = r["deferred"], now
            if now > deadline or now - progress_at > a.stall_s:   # the other guests' copies
                break                                            # are not coming (any more)
            time.sleep(a.poll_ms / 1000)
        with QMP(a.qmp) as qmp:
            qmp.execute("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
            stop = time.monotonic()
            qmp.execute("stop")
            phases, handed_over = {}, False
            try:
                self.round(0)                                  # the last delta, guest stopped
                self.send(F.FINAL)
                self.flush()
                phases["last_round_s"] = time.monotonic() - stop
                self.wait_reply(F.SNAPSHOT)                    # every chunk is in place there
                phases["resolve_s"] = time.monotonic() - stop - phases["last_round_s"]
                qmp.execute("migrate", uri=f"tcp:{a.device_to}")
                info = qmp.wait_migration(0.005, timeout=60)
                if info["status"] != "completed":
                    raise RuntimeError(f"device state migration {info['status']}: {info.get('error-desc', '')}")
                phases["device_state_s"] = time.monotonic() - stop - phases["last_round_s"] - phases["resolve_s"]
                self.send(F.CONT)
                self.flush()
                handed_over = True
                dest = json.loads(self.wait_reply(F.CONTINUED))
            except BaseException:
                if not handed_over:           # the guest keeps running at the source
                    qmp.execute("cont")       # (never once the destination may own the RAM)
                raise
            downtime = time.monotonic() - stop
            phases["cont_s"] = downtime - sum(phases.values())
            # the check: this (paused) RAM against the destination's copy taken at the stop; on
            # a difference the guest is still here, for the orchestrator to resume
            verified = json.loads(self.wait_reply(F.VERIFIED))
            if verified["digest"] != C.file_digest(a.ram):
                raise RuntimeError("the destination RAM differed from the source RAM at the stop")
            qmp.execute("quit")
        dest["resolver_cpu_s"] = verified["cpu_s"]
        return {**self.stats, "guest": a.guest, "total_time_s": round(time.monotonic() - t0, 4),
                "downtime_s": round(downtime, 4), "downtime_phases": {k: round(v, 4) for k, v in phases.items()},
                "destination": dest, "ram_bytes": self.size, "forced_stop": forced,
                "bytes_sent": sum(r["bytes"] for r in self.stats["rounds"]), "cpu_s": cpu_seconds()}


def cpu_seconds() -> float:
    """This process's CPU time so far (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 4)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="g5kdeploy.shrinker.source")
    p.add_argument("--guest", required=True)
    p.add_argument("--ram", required=True)
    p.add_argument("--qmp", required=True)
    p.add_argument("--to", required=True, help="destination agent host:port")
    p.add_argument("--device-to", required=True, help="destination QEMU's incoming host:port")
    p.add_argument("--keys", default=str(F.KEYS), help="root-only directory holding <guest>.key")
    p.add_argument("--redis", default="", help="source-site coordination Redis host:port (empty: no dedup)")
    p.add_argument("--key-prefix", default="shrinker:")
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--digest", default="sha1", choices=sorted(C.ALGORITHMS))
    p.add_argument("--compression", default="zstd", choices=F.COMPRESSIONS, help="of full chunks ('': none)")
    p.add_argument("--level", type=int, default=3, help="zstd level")
    p.add_argument("--max-rounds", type=int, default=8)
    p.add_argument("--downtime-ms", type=float, default=300)
    p.add_argument("--rate-mbit", type=float, default=100)
    p.add_argument("--precopy-s", type=float, default=60, help="longest wait for other guests' chunks")
    p.add_argument("--poll-ms", type=float, default=200)
    p.add_argument("--stall-s", type=float, default=5, help="stop waiting once the deferred digests stop decreasing")
    p.add_argument("--max-deferred", type=int, default=16, help="unresolved digests the stop may leave to pulls")
    try:
        result = Source(p.parse_args(argv)).migrate()
    except Exception as e:  # one line for the orchestrator
        json.dump({"error": f"{type(e).__name__}: {e}"}, sys.stdout)
        sys.exit(1)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
