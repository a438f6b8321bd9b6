"""Destination agent, one per destination hypervisor: receives migrations (chunks written
in place into each guest's RAM file), resolves digests through the destination-site index
(Redis SADD/SRANDMEMBER/SREM), fetches chunks from peers and verifies them, pulls from the
source when no peer has them, and serves its own chunks to peers.
A migration is accepted only with the key the orchestrator left for its guest (used once); peers
prove the site key; every frame is authenticated (`channel`), every chunk checked against its
index, length and digest before it is written.
`python3 -m g5kdeploy.shrinker.destination --listen ADDR:PORT --redis HOST:PORT ...`"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path

from g5kdeploy.shrinker import channel as F, chunks as C
from g5kdeploy.vm.qemu import QMP, QMP_SOCKET, RAM, VMS
BATCH = 1024
PULL_POLICIES = ("deferred", "at-once")
FIRST_FRAME_S, IDLE_S = 10, 300          # a silent connection is closed


class Index:
    """What this host holds, by digest (to serve peers), mirrored in the site's Redis."""

    def __init__(self, redis_address: str, me: str, prefix: str):
        self.redis, self.unavailable = C.site_redis(redis_address)
        self.me, self.prefix = me, prefix
        self.failures = 0
        self.holders: dict[bytes, set] = defaultdict(set)     # digest -> {(guest, index)}
        self.content: dict[tuple, bytes] = {}                # (guest, index) -> digest
        self.files: dict[str, tuple[int, int]] = {}          # guest -> (fd, chunk size)
        self.lock = threading.Lock()
        self.added: set[bytes] = set()
        self.removed: set[bytes] = set()

    def record(self, guest: str, index: int, digest: bytes | None) -> None:
        with self.lock:
            old = self.content.pop((guest, index), None)
            if old is not None:
                self.holders[old].discard((guest, index))
                if not self.holders[old]:
                    del self.holders[old]
                    self.removed.add(old)
                    self.added.discard(old)
            if digest is not None:
                if digest not in self.holders:
                    self.added.add(digest)
                    self.removed.discard(digest)
                self.holders[digest].add((guest, index))
                self.content[(guest, index)] = digest

    def flush(self) -> None:
        """Publish what changed; an unreachable index loses the update (peers then pull)."""
        with self.lock:
            added, removed, self.added, self.removed = self.added, self.removed, set(), set()
        if added or removed:
            pipe = self.redis.pipeline(transaction=False)
            for d in added:
                pipe.sadd(self.prefix + d.hex(), self.me)
            for d in removed:
                pipe.srem(self.prefix + d.hex(), self.me)
            try:
                pipe.execute()
            except self.unavailable:
                self.failures += 1

    def locate(self, digests: list[bytes]) -> list[str | None]:
        """A holder of each digest, by the index (None for all while it is unreachable)."""
        pipe = self.redis.pipeline(transaction=False)
        for d in digests:
            pipe.srandmember(self.prefix + d.hex())
        try:
            return [h.decode() if h else None for h in pipe.execute()]
        except self.unavailable:
            self.failures += 1
            return [None] * len(digests)

    def read(self, digest: bytes) -> bytes | None:
        with self.lock:
            where = next(iter(self.holders.get(digest, ())), None)
            if where is None:
                return None
            fd, chunk = self.files[where[0]]
        try:
            return os.pread(fd, chunk, where[1] * chunk)
        except OSError:            # its guest was just forgotten (the reader verifies what it gets)
            return None

    def forget(self, guest: str) -> None:
        """Unregister a guest's chunks and let its RAM file go."""
        with self.lock:
            mine = [k for k in self.content if k[0] == guest]
        for guest_index in mine:
            self.record(*guest_index, None)
        self.flush()
        with self.lock:
            fd = self.files.pop(guest, (None, 0))[0]
        if fd is not None:
            os.close(fd)


class Peers:
    """Connections to other destination agents, to fetch chunks by digest (pipelined)."""

    def __init__(self, key: bytes, chunk: int):
        self.key, self.chunk = key, chunk
        self.conns: dict[str, F.Channel] = {}

    def fetch(self, host: str, digests: list[bytes]) -> list[bytes]:
        if host not in self.conns:
            s = socket.create_connection(C.hostport(host), timeout=30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns[host] = F.Channel(s.makefile("rb"), s.makefile("wb"), self.key, "source", self.chunk)
        chan = self.conns[host]
        for d in digests:
            chan.send(F.PULL, 0, d)
        chan.flush()
        return [chan.receive()[2] for _ in digests]


class Migration:
    """One incoming guest: writes, digest resolution, the final check, `cont`."""

    def __init__(self, agent: "Agent", chan: F.Channel, hello: dict):
        self.agent, self.chan = agent, chan
        self.guest, self.chunk = hello["guest"], hello["chunk"]
        self.hash, self.dsize = C.digest_fn(hello["digest"]), C.ALGORITHMS[hello["digest"]]
        self.chunks = hello["size"] // self.chunk
        self.decompressor = F.decompressor(hello.get("compression", ""))
        chan.limit = self.dsize + self.chunk                  # a FULL frame's payload
        if self.decompressor:
            chan.limits[F.PACKED] = F.packed_limit(chan.limit)
        self.path = RAM.format(name=self.guest)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW)
        st = os.fstat(self.fd)
        if st.st_uid != os.geteuid():
            os.close(self.fd)
            raise PermissionError(f"{self.path} belongs to uid {st.st_uid}, not to this agent's")
        if st.st_size != hello["size"]:
            os.close(self.fd)
            raise RuntimeError(f"{self.path} is not {hello['size']} bytes: is the destination QEMU started?")
        agent.index.files[self.guest] = (self.fd, self.chunk)
        self.latest: dict[int, int] = {}
        self.seq = 0
        self.queue: list[tuple[int, bytes, int]] = []
        self.pulled: dict[int, bytes] = {}
        self.pull_ready = threading.Condition()
        self.wlock = threading.Lock()            # the channel's writer
        self.state = threading.Lock()            # latest message per chunk, and its write
        self.stats = defaultdict(int)
        self.peers = Peers(agent.peer_key, self.chunk)
        self.deferred: list[tuple[int, bytes, int]] = []   # digests no host of the site has yet
        self.snapshot = bytearray(hello["size"])   # the RAM file's copy for the check (allocated now)
        self.written: set[int] | None = None       # chunks written since the copy was taken

    def send(self, kind: int, index: int = 0, payload: bytes = b"") -> None:
        with self.wlock:
            self.chan.send(kind, index, payload)
            self.chan.flush()

    def chunk_frame(self, kind: int, index: int, payload: bytes) -> bytes | None:
        """The data of a FULL or UNIFORM frame (None for a DIGEST), refused unless its index
        is in the RAM and its length and digest are right."""
        if index >= self.chunks:
            raise F.Refused(f"chunk {index} is beyond the RAM's {self.chunks}")
        if kind == F.FULL:
            digest, data = payload[:self.dsize], payload[self.dsize:]
            if len(data) != self.chunk or self.hash(data) != digest:
                raise F.Refused(f"chunk {index}: its data does not match its digest and length")
            return data
        if len(payload) != {F.UNIFORM: 1, F.DIGEST: self.dsize}[kind]:
            raise F.Refused(f"chunk {index}: a {len(payload)}-byte payload")
        return payload * self.chunk if kind == F.UNIFORM else None

    def chunk_received(self, kind: int, index: int, payload: bytes) -> None:
        """A FULL or UNIFORM chunk written, a DIGEST queued for the resolver."""
        data = self.chunk_frame(kind, index, payload)
        with self.state:
            self.seq += 1
            self.latest[index] = self.seq
            if kind == F.FULL:
                self.write(index, data, payload[:self.dsize])
            elif kind == F.UNIFORM:
                self.write(index, data, None)
            else:
                self.queue.append((index, payload, self.seq))
        self.stats[{F.FULL: "full", F.UNIFORM: "uniform", F.DIGEST: "dedup"}[kind]] += 1

    def write(self, index: int, data: bytes, digest: bytes | None) -> None:
        os.pwrite(self.fd, data, index * self.chunk)
        if self.written is not None:
            self.written.add(index)
        self.agent.index.record(self.guest, index, digest)

    def write_if_current(self, index: int, seq: int, data: bytes, digest: bytes) -> bool:
        """Write unless a later message for this chunk came meanwhile (its data is newer)."""
        with self.state:
            if self.latest.get(index) != seq:
                return False
            self.write(index, data, digest)
            return True

    def run(self) -> None:
        """Read the channel; digests go, a round at a time, to one resolver thread (the reader
        never waits for it: pull replies arrive on this same channel)."""
        cpu = time.thread_time()
        self.qmp = QMP(str(VMS / self.guest / QMP_SOCKET))      # opened now: `cont` must be quick
        self.send(F.HELLO)
        work: queue.Queue = queue.Queue()
        resolver = threading.Thread(target=self.resolver, args=(work,), daemon=True)
        resolver.start()
        while True:
            kind, index, payload = self.chan.receive()
            if kind == F.PACKED and self.decompressor:
                for i, body in F.unpack(payload, index, self.dsize + self.chunk, self.decompressor):
                    self.chunk_received(F.FULL, i, body)
            elif kind in (F.FULL, F.UNIFORM, F.DIGEST):
                self.chunk_received(kind, index, payload)
                if len(self.queue) >= BATCH:       # resolve while the round goes on: the other
                    work.put((self.queue, None))   # guests' copies are in the index now
                    self.queue = []
            elif kind == F.PULL_REPLY:
                if len(payload) != self.chunk:
                    raise F.Refused(f"a pulled chunk of {len(payload)} bytes")
                with self.pull_ready:
                    self.pulled[index] = payload
                    self.pull_ready.notify_all()
            elif kind == F.ROUND_END:
                self.agent.index.flush()
                work.put((self.queue, index))          # round 0: the last, the guest is stopped
                self.queue = []
            elif kind == F.FINAL:
                work.put(None)
            elif kind == F.CONT:
                t = time.monotonic()
                # QEMU starts the guest once the device state is loaded (the source leaves its
                # run state out of the stream); `cont` it if it stayed paused
                while (status := self.qmp.execute("query-status")["status"]) == "inmigrate":
                    if time.monotonic() - t > 30:
                        raise RuntimeError("the destination QEMU did not receive the device state")
                    time.sleep(0.001)
                if status != "running":
                    self.qmp.execute("cont")
                self.qmp.close()
                self.stats["cont_s"] = round(time.monotonic() - t, 4)
                self.stats["index_failures"] = self.agent.index.failures
                self.agent.done.add(self.guest)
                self.stats["reader_cpu_s"] = round(time.thread_time() - cpu, 4)
                self.send(F.CONTINUED, 0, json.dumps(self.stats).encode())
                # its chunks stay indexed for the guests still migrating: most of a running
                # guest's pages do not change, and whoever fetches one verifies it
                resolver.join()                         # the digest of the snapshot is still to send
                return
            else:
                raise F.Refused(f"a frame of type {kind} in a migration")

    def resolver(self, work: queue.Queue) -> None:
        cpu = time.thread_time()
        while True:
            item = work.get()
            try:
                if item is None:
                    # FINAL: every digest is resolved. Copy the RAM as it is at the stop (a copy
                    # is ~4x cheaper than a digest, and the copy is all the downtime pays for),
                    # let the guest go, digest the copy: the source compares.
                    t = time.monotonic()
                    self.update_snapshot()
                    self.stats["snapshot_s"] = round(time.monotonic() - t, 4)
                    self.send(F.SNAPSHOT)
                    digest = "0" * 64 if self.agent.corrupt_snapshot else hashlib.sha256(self.snapshot).hexdigest()
                    self.send(F.VERIFIED, 0, json.dumps({"digest": digest,
                                                         "cpu_s": round(time.thread_time() - cpu, 4)}).encode())
                    return
                batch, number = item
                t = time.monotonic()
                self.resolve(batch, final=number == 0)
                if number == 0:
                    self.stats["final_resolve_s"] = round(time.monotonic() - t, 4)
                if number is not None:
                    self.send(F.ROUND_ACK, number, json.dumps({"deferred": len(self.deferred)}).encode())
                if number == 1:               # most of the RAM is in place: copy it now, out of
                    self.update_snapshot()    # the downtime; the stop re-reads what changes after
            except Exception as e:  # the source resumes its guest
                traceback.print_exc()
                self.send(F.ABORT, 0, f"{type(e).__name__}: {e}".encode())
                return

    def update_snapshot(self) -> None:
        """Bring the copy of the RAM file up to date: whole the first time, then the chunks
        written since (whatever is written while it copies is re-read the next time)."""
        with self.state:
            written, self.written = self.written, set()
        if written is None:
            C.read_into(self.fd, self.snapshot)
            return
        for index in written:
            offset = index * self.chunk
            self.snapshot[offset:offset + self.chunk] = os.pread(self.fd, self.chunk, offset)

    def fresh(self, items: list) -> list:
        """Items not superseded by a later message for their chunk."""
        return [t for t in items if self.latest.get(t[0]) == t[2]]

    def resolve(self, batch: list[tuple[int, bytes, int]], final: bool = False) -> None:
        """Digests -> data: from this host, or from a peer (verified). What no host of the
        site has yet is retried a few times, then deferred to the next round (its first
        sender's copy is likely on its way) and pulled from the source only in the last
        round, when the guest is stopped; with `--pull at-once` (the thesis), pulled at once."""
        todo = self._from_site(self.fresh(self.deferred + batch))
        if not (final or self.agent.pull_at_once):
            for _ in range(self.agent.retries):
                todo = self.fresh(todo)
                if not todo:
                    break
                self.stats["retried"] += len(todo)
                time.sleep(self.agent.retry_wait)
                todo = self._from_site(todo)
            self.deferred = self.fresh(todo)
            return
        self.deferred, todo = [], self.fresh(todo)
        if final:
            self.stats["final_pulls"] = len(todo)
        self._pull(todo)

    def _from_site(self, todo: list) -> list:
        """Resolve through the index; returns what could not be resolved."""
        missing = []
        by_holder: dict[str, list] = defaultdict(list)
        for i in range(0, len(todo), BATCH):
            part = todo[i:i + BATCH]
            for item, holder in zip(part, self.agent.index.locate([d for _, d, _ in part])):
                if holder is None:
                    missing.append(item)
                else:
                    by_holder[holder].append(item)
        for holder, items in by_holder.items():
            if holder == self.agent.me:
                datas = [self.agent.index.read(d) for _, d, _ in items]
                source = "local"
            else:
                try:
                    datas = self.peers.fetch(holder, [d for _, d, _ in items])
                except OSError:
                    datas = [None] * len(items)
                source = "peer"
            for (index, d, seq), data in zip(items, datas):
                if data is None or len(data) != self.chunk or self.hash(data) != d:
                    self.stats["corrupt" if data else "unavailable"] += 1
                    missing.append((index, d, seq))
                elif self.write_if_current(index, seq, data, d):
                    self.stats[source] += 1
        self.agent.index.flush()
        return missing

    def _pull(self, todo: list) -> None:
        if not todo:
            return
        with self.wlock:
            for index, _, _ in todo:
                self.chan.send(F.PULL, index)
            self.chan.flush()
        with self.pull_ready:
            self.pull_ready.wait_for(lambda: all(i in self.pulled for i, _, _ in todo), timeout=120)
            replies = {i: self.pulled.pop(i, None) for i, _, _ in todo}
        for index, d, seq in todo:
            data = replies[index]
            if data is None:
                raise RuntimeError(f"source did not answer the pull of chunk {index}")
            if self.write_if_current(index, seq, data, self.hash(data)):
                self.stats["pulled"] += 1


class Agent(socketserver.ThreadingTCPServer):
    daemon_threads = allow_reuse_address = True

    def __init__(self, a: argparse.Namespace):
        self.me, self.retries, self.retry_wait = a.listen, a.retries, a.retry_ms / 1000
        self.pull_at_once = a.pull == "at-once"
        self.keys = Path(a.keys)
        self.peer_key = F.read_key(F.PEERS, self.keys, remove=True)
        self.index = Index(a.redis, a.listen, a.key_prefix)
        self.corrupt_every, self.corrupt_snapshot, self.served, self.done = a.corrupt_every, a.corrupt_snapshot, 0, set()
        super().__init__(C.hostport(a.listen), Handler)


def checked_hello(payload: bytes) -> dict:
    """A HELLO's fields, refused unless well formed and within bounds."""
    try:
        hello = json.loads(payload)
    except ValueError:
        raise F.Refused("a HELLO that is not JSON") from None
    if not isinstance(hello, dict) or not isinstance(hello.get("guest"), str):
        raise F.Refused("a HELLO without a guest")
    chunk, size = hello.get("chunk"), hello.get("size")
    if type(chunk) is not int or not C.MIN_CHUNK <= chunk <= C.MAX_CHUNK or chunk & (chunk - 1):
        raise F.Refused(f"chunk size {chunk!r} is not a power of two in [{C.MIN_CHUNK}, {C.MAX_CHUNK}]")
    if type(size) is not int or size <= 0 or size % chunk:
        raise F.Refused(f"RAM size {size!r} is not a multiple of the chunk size")
    if hello.get("digest") not in C.ALGORITHMS:
        raise F.Refused(f"unknown digest {hello.get('digest')!r}")
    if hello.get("compression", "") not in F.COMPRESSIONS:
        raise F.Refused(f"unknown compression {hello.get('compression')!r}")
    return hello


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection.settimeout(FIRST_FRAME_S)
        agent: Agent = self.server
        try:
            head, payload, tag = F.read_frame(self.rfile)
            if F.kind_of(head) == F.HELLO:
                hello = checked_hello(payload)
                chan = F.Channel(self.rfile, self.wfile, F.read_key(hello["guest"], agent.keys), "destination")
                chan.verify(head, payload, tag)
                F.read_key(hello["guest"], agent.keys, remove=True)       # used once
            elif F.kind_of(head) == F.PULL:
                chan = F.Channel(self.rfile, self.wfile, agent.peer_key, "destination", limit=64)
                chan.verify(head, payload, tag)
            else:
                raise F.Refused(f"a first frame of type {F.kind_of(head)}")
        except (F.Refused, ConnectionError, OSError) as e:      # not authenticated: nothing is answered
            print(f"{self.client_address[0]}: refused: {e}", file=sys.stderr, flush=True)
            return
        self.connection.settimeout(IDLE_S)
        if F.kind_of(head) == F.HELLO:
            self.migrate(chan, hello)
        else:
            self.serve_peer(chan, payload)

    def serve_peer(self, chan: F.Channel, digest: bytes) -> None:
        """Answer a peer's PULLs (by digest) until it closes the channel."""
        agent: Agent = self.server
        with contextlib.suppress(ConnectionError, OSError, F.Refused):
            while True:
                data = agent.index.read(digest) or b""
                agent.served += 1
                if data and agent.corrupt_every and agent.served % agent.corrupt_every == 0:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]          # fault injection (tests)
                chan.send(F.PULL_REPLY, 0, data)
                chan.flush()
                kind, _, digest = chan.receive()
                if kind != F.PULL:
                    return

    def migrate(self, chan: F.Channel, hello: dict) -> None:
        agent: Agent = self.server
        migration = None
        try:
            migration = Migration(agent, chan, hello)
            migration.run()
        except ConnectionError:
            if migration and migration.guest not in agent.done:     # its source went away
                print(f"{migration.guest}: the source closed the channel", file=sys.stderr, flush=True)
                agent.index.forget(migration.guest)
        except Exception as e:  # reported to the source, then the channel closes
            traceback.print_exc()
            with contextlib.suppress(OSError):
                chan.send(F.ABORT, 0, f"{type(e).__name__}: {e}"[:1000].encode())
                chan.flush()
            if migration:
                agent.index.forget(migration.guest)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="g5kdeploy.shrinker.destination")
    p.add_argument("--listen", required=True, help="this agent's address:port (what peers use)")
    p.add_argument("--redis", required=True, help="destination-site index Redis host:port")
    p.add_argument("--key-prefix", default="shrinker-index:")
    p.add_argument("--retries", type=int, default=2, help="wait-and-retry rounds before pulling from the source")
    p.add_argument("--retry-ms", type=float, default=50)
    p.add_argument("--pull", choices=PULL_POLICIES, default="deferred",
                   help="digests no host of the site has: retried, deferred and pulled once the guest is stopped "
                        "(deferred), or pulled from the source at once (at-once, as in the thesis)")
    p.add_argument("--keys", default=str(F.KEYS), help="root-only directory of the migrations' keys and peers.key")
    p.add_argument("--corrupt-every", type=int, default=0, help="serve every Nth chunk corrupted (fault test)")
    p.add_argument("--corrupt-snapshot", action="store_true", help="report a wrong RAM digest at the stop (fault test)")
    Agent(p.parse_args(argv)).serve_forever()


if __name__ == "__main__":
    main()
