"""Shrinker's channels under attack, on loopback: a real destination agent (real Redis, a real
QEMU answering QMP) and clients that lack the key, forge or replay frames, send chunks that do
not match their digest or length, or ask for 8 GiB. Each is refused and nothing is written."""
import argparse
import io
import json
import os
import socket
import subprocess
import threading
import time

import pytest
import zstandard

from conftest import free_port
from g5kdeploy.shrinker import channel as F, destination
from g5kdeploy.shrinker.chunks import digest_fn

GUEST, CHUNK, SIZE = "g1", 4096, 16 * 4096
SHA1 = digest_fn("sha1")


def write_key(keys, name) -> bytes:
    key = os.urandom(32)
    (keys / f"{name}.key").write_text(F.key_text(key))
    return key


@pytest.fixture
def agent(tmp_path, redis_address, monkeypatch):
    """A destination agent on loopback, expecting a migration of GUEST (its RAM file, its
    QEMU's QMP socket): (address, keys directory, RAM file, the site's peers key)."""
    keys, vms = tmp_path / "keys", tmp_path / "vms"
    keys.mkdir(mode=0o700)
    (vms / GUEST).mkdir(parents=True)
    ram = tmp_path / f"ram-{GUEST}"
    ram.write_bytes(b"\0" * SIZE)
    monkeypatch.setattr(destination, "RAM", str(tmp_path / "ram-{name}"))
    monkeypatch.setattr(destination, "VMS", vms)
    qmp = vms / GUEST / "qmp.sock"
    qemu = subprocess.Popen(["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
                             "-qmp", f"unix:{qmp},server=on,wait=off"], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not qmp.exists():
            assert time.monotonic() < deadline and qemu.poll() is None, "QEMU did not start"
            time.sleep(0.05)
        peers = write_key(keys, F.PEERS)
        address = f"127.0.0.1:{free_port()}"
        server = destination.Agent(argparse.Namespace(listen=address, redis=redis_address, key_prefix="chan-test:",
                                                      retries=0, retry_ms=0, pull="deferred", keys=str(keys),
                                                      corrupt_every=0, corrupt_snapshot=False))
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        try:
            yield address, keys, ram, peers
        finally:
            server.shutdown()
            server.server_close()
    finally:
        qemu.kill()
        qemu.wait()


def connect(address):
    host, port = address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    return s, s.makefile("rb"), s.makefile("wb")


def hello(chunk=CHUNK, size=SIZE, guest=GUEST, compression="zstd") -> bytes:
    return json.dumps({"guest": guest, "size": size, "chunk": chunk, "digest": "sha1",
                       "compression": compression}).encode()


def open_migration(address, key, payload=None):
    """A source's side of a migration: HELLO sent, its answer read."""
    s, inp, out = connect(address)
    chan = F.Channel(inp, out, key, "source")
    chan.send(F.HELLO, 0, payload or hello())
    chan.flush()
    return s, chan


def closed_without_answer(s) -> bool:
    s.settimeout(10)
    return s.recv(1) == b""


def test_frames_are_tagged_both_ways_and_refused_when_altered():
    key = os.urandom(32)
    wire = io.BytesIO()
    src = F.Channel(io.BytesIO(), wire, key, "source")
    src.send(F.FULL, 3, b"a" * 100)
    src.send(F.ROUND_END, 1)
    frames = wire.getvalue()
    dst = F.Channel(io.BytesIO(frames), io.BytesIO(), key, "destination", limit=200)
    assert dst.receive() == (F.FULL, 3, b"a" * 100) and dst.receive() == (F.ROUND_END, 1, b"")
    tampered = bytearray(frames)
    tampered[20] ^= 1                                                     # one payload bit
    reordered = frames[len(frames) - 25:] + frames[:len(frames) - 25]     # the second frame first
    for wire_bytes, k, role in ((bytes(tampered), key, "destination"), (reordered, key, "destination"),
                                (frames, os.urandom(32), "destination"),  # another key
                                (frames, key, "source")):                 # reflected back to its sender
        with pytest.raises(F.Refused):
            F.Channel(io.BytesIO(wire_bytes), io.BytesIO(), k, role, limit=200).receive()
    replay = F.Channel(io.BytesIO(frames[:len(frames) - 25] * 2), io.BytesIO(), key, "destination", limit=200)
    replay.receive()
    with pytest.raises(F.Refused):                                        # the same frame again
        replay.receive()
    with pytest.raises(F.Refused, match="at most 200"):                   # too long: not even read
        F.Channel(io.BytesIO(F.HEADER.pack(F.FULL, 0, 300 << 20)), io.BytesIO(), key, "destination",
                  limit=200).receive()


def test_a_migration_without_its_key_gets_no_answer(agent):
    address, keys, ram, _ = agent
    s, _ = open_migration(address, os.urandom(32))              # no key was left for GUEST
    assert closed_without_answer(s)
    write_key(keys, GUEST)
    s, _ = open_migration(address, os.urandom(32))              # a key, but not this one
    assert closed_without_answer(s)
    assert (keys / f"{GUEST}.key").exists()                     # a forger does not use it up
    assert ram.read_bytes() == b"\0" * SIZE


def test_a_migration_key_serves_once(agent):
    address, keys, _, _ = agent
    key = write_key(keys, GUEST)
    s, chan = open_migration(address, key)
    assert chan.receive()[0] == F.HELLO                         # accepted
    assert not (keys / f"{GUEST}.key").exists()
    s.close()
    write_key(keys, GUEST)                                      # even with a new key there,
    s, _ = open_migration(address, key)                         # the old one is refused
    assert closed_without_answer(s)


def test_hello_sizes_are_bounded(agent):
    address, keys, _, _ = agent
    key = write_key(keys, GUEST)
    for bad in (hello(chunk=2 ** 33), hello(chunk=3000), hello(size=SIZE + 1), hello(guest="../../etc/x"),
                hello(compression="lz4"), b"[1, 2]", b"\xff"):
        s, _ = open_migration(address, key, bad)
        assert closed_without_answer(s), bad
    s = connect(address)[0]
    s.sendall(F.HEADER.pack(F.HELLO, 0, 300 << 20))             # a 300 MiB HELLO: refused unread
    assert closed_without_answer(s)
    assert (keys / f"{GUEST}.key").exists()


@pytest.mark.parametrize("data, digest", [(b"x" * (CHUNK - 1), None),                 # short
                                          (b"x" * CHUNK, SHA1(b"y" * CHUNK))])      # not the digest's data
def test_a_full_chunk_unlike_its_digest_or_length_is_refused(agent, data, digest):
    address, keys, ram, _ = agent
    s, chan = open_migration(address, write_key(keys, GUEST))
    assert chan.receive()[0] == F.HELLO
    chan.send(F.FULL, 1, (digest or SHA1(data)) + data)
    chan.flush()
    kind, _, reason = chan.receive()
    assert kind == F.ABORT and b"does not match" in reason
    assert ram.read_bytes() == b"\0" * SIZE                     # nothing written, the file did not grow


def test_a_chunk_frame_longer_than_a_chunk_is_refused_unread(agent):
    address, keys, ram, _ = agent
    s, chan = open_migration(address, write_key(keys, GUEST))
    assert chan.receive()[0] == F.HELLO
    s.sendall(F.HEADER.pack(F.FULL, 1, 20 + 3 * CHUNK))         # 12 KiB announced for a 4 KiB chunk
    kind, _, reason = chan.receive()
    assert kind == F.ABORT and b"at most" in reason
    assert ram.read_bytes() == b"\0" * SIZE


def test_packed_chunks_round_trip_compressible_or_not():
    body = 20 + CHUNK
    entries = [(k, SHA1(d) + d) for k, d in enumerate([b"\0" * 100 + b"a" * (CHUNK - 100), os.urandom(CHUNK),
                                                      os.urandom(CHUNK), b"text " * (CHUNK // 5) + b"x"])]
    packed = F.pack(entries, zstandard.ZstdCompressor(level=3))
    assert F.unpack(packed, len(entries), body, zstandard.ZstdDecompressor()) == entries
    assert len(packed) < len(entries) * (4 + body) - CHUNK        # the two alike chunks shrank
    noise = [(k, os.urandom(body)) for k in range(F.pack_count(body))]    # as many as a frame holds
    worst = F.pack(noise, zstandard.ZstdCompressor(level=3))
    assert len(entries[0][1]) < len(worst) <= F.packed_limit(body)
    assert F.unpack(worst, len(noise), body, zstandard.ZstdDecompressor()) == noise


def test_a_packed_frame_that_lies_about_its_size_is_refused_before_it_is_inflated():
    body, d = 20 + CHUNK, zstandard.ZstdDecompressor()
    one = F.pack([(1, b"\0" * body)], zstandard.ZstdCompressor())
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))      # 64 MiB, claiming to be 1 chunk
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 8 * (4 + body))
    for payload, count in ((bomb, 1), (one, 2), (unsized, 1), (b"not zstd", 1), (one, F.pack_count(body) + 1)):
        with pytest.raises(F.Refused):
            F.unpack(payload, count, body, d)


def test_packed_chunks_are_checked_and_written(agent):
    address, keys, ram, _ = agent
    s, chan = open_migration(address, write_key(keys, GUEST))
    assert chan.receive()[0] == F.HELLO
    data = [os.urandom(CHUNK), b"z" * (CHUNK - 1) + b"!"]
    chan.send(F.PACKED, 2, F.pack([(3, SHA1(data[0]) + data[0]), (5, SHA1(data[1]) + data[1])],
                                  zstandard.ZstdCompressor()))
    chan.send(F.ROUND_END, 1)
    chan.flush()
    assert chan.receive()[0] == F.ROUND_ACK
    got = ram.read_bytes()
    assert got[3 * CHUNK:4 * CHUNK] == data[0] and got[5 * CHUNK:6 * CHUNK] == data[1]
    chan.send(F.PACKED, 1, F.pack([(6, SHA1(data[0]) + data[1])], zstandard.ZstdCompressor()))  # digest of another
    chan.flush()
    kind, _, reason = chan.receive()
    assert kind == F.ABORT and b"does not match" in reason
    assert ram.read_bytes()[6 * CHUNK:7 * CHUNK] == b"\0" * CHUNK


def test_chunks_beyond_the_ram_are_refused(agent):
    address, keys, ram, _ = agent
    s, chan = open_migration(address, write_key(keys, GUEST))
    assert chan.receive()[0] == F.HELLO
    chan.send(F.UNIFORM, SIZE // CHUNK, b"\1")
    chan.flush()
    assert chan.receive()[0] == F.ABORT
    assert ram.stat().st_size == SIZE


def test_peers_need_the_site_key(agent):
    address, keys, ram, peers = agent
    data = os.urandom(CHUNK)
    s, chan = open_migration(address, write_key(keys, GUEST))
    assert chan.receive()[0] == F.HELLO
    chan.send(F.FULL, 2, SHA1(data) + data)                     # the agent now holds this chunk
    chan.send(F.ROUND_END, 1)
    chan.flush()
    assert chan.receive()[0] == F.ROUND_ACK
    assert ram.read_bytes()[2 * CHUNK:3 * CHUNK] == data
    s2, inp, out = connect(address)
    thief = F.Channel(inp, out, os.urandom(32), "source", CHUNK)
    thief.send(F.PULL, 0, SHA1(data))
    thief.flush()
    assert closed_without_answer(s2)
    _, inp, out = connect(address)
    peer = F.Channel(inp, out, peers, "source", CHUNK)          # a peer of the site gets it
    peer.send(F.PULL, 0, SHA1(data))
    peer.flush()
    assert peer.receive() == (F.PULL_REPLY, 0, data)


def test_the_agent_refuses_to_start_on_an_open_key_directory(tmp_path, redis_address):
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    write_key(keys, F.PEERS)
    keys.chmod(0o755)
    with pytest.raises(PermissionError, match="mode 0700"):
        destination.Agent(argparse.Namespace(listen=f"127.0.0.1:{free_port()}", redis=redis_address,
                                             key_prefix="x:", retries=0, retry_ms=0, pull="deferred",
                                             keys=str(keys), corrupt_every=0, corrupt_snapshot=False))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_ram_file_left_by_another_user_is_refused(tmp_path):
    from g5kdeploy.vm.qemu import Guest
    g = Guest("g", tmp_path / "k", tmp_path / "i", None, tmp_path, ram_path=tmp_path / "ram")
    g.ram_path.write_bytes(b"planted")
    os.chown(g.ram_path, 65534, 65534)                        # nobody's
    with pytest.raises(RuntimeError, match="not this user's"):
        g.claim_ram()
    os.chown(g.ram_path, os.geteuid(), os.getegid())          # a stale one of ours: replaced
    g.claim_ram()
    st = os.stat(g.ram_path)
    assert st.st_size == 0 and st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()
