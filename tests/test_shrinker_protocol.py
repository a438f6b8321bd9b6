"""Shrinker's protocol pieces without a testbed: chunking, uniform chunks, digests, and the
destination index bookkeeping on a real Redis."""
import os

import pytest

from g5kdeploy.shrinker import chunks as C


def test_uniform_chunks_are_sent_as_their_byte():
    assert C.uniform(b"\0" * 4096) == 0
    assert C.uniform(b"\xab" * 512) == 0xAB
    assert C.uniform(b"\0" * 4095 + b"\1") is None
    assert C.uniform(b"") is None


@pytest.mark.parametrize("name", sorted(C.ALGORITHMS))
def test_digests_have_their_size_and_tell_chunks_apart(name):
    h = C.digest_fn(name)
    a, b = os.urandom(4096), os.urandom(4096)
    assert len(h(a)) == C.ALGORITHMS[name] and h(a) == h(bytes(a)) and h(a) != h(b)


def test_unknown_digest():
    with pytest.raises(ValueError, match="sha1"):
        C.digest_fn("md4")


def test_read_chunks_covers_the_file_in_order(tmp_path):
    data = os.urandom(3 * C.READ_BLOCK + 5000)
    path = tmp_path / "ram"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = list(C.read_chunks(fd, len(data), 4096))
    finally:
        os.close(fd)
    assert [i for i, _ in got] == list(range(len(got)))
    assert b"".join(c for _, c in got) == data
    assert all(len(c) == 4096 for _, c in got[:-1])


def test_index_registers_serves_and_unregisters(redis_address, tmp_path):
    from g5kdeploy.shrinker.destination import Index
    import redis
    host, port = redis_address.rsplit(":", 1)
    r = redis.Redis(host=host, port=int(port))
    r.flushall()
    ram = tmp_path / "ram"
    a, b = os.urandom(4096), os.urandom(4096)
    ram.write_bytes(a + a + b)
    fd = os.open(ram, os.O_RDONLY)
    idx = Index(redis_address, "198.19.2.2:7700", "t:")
    idx.files["g"] = (fd, 4096)
    h = C.digest_fn("sha1")
    idx.record("g", 0, h(a))
    idx.record("g", 1, h(a))
    idx.record("g", 2, h(b))
    idx.flush()
    assert idx.locate([h(a), h(b), h(b"nope")]) == ["198.19.2.2:7700", "198.19.2.2:7700", None]
    assert idx.read(h(a)) == a and idx.read(h(b)) == b
    idx.record("g", 0, None)                  # chunk 0 changed: chunk 1 still holds a
    idx.flush()
    assert r.sismember("t:" + h(a).hex(), "198.19.2.2:7700")
    idx.record("g", 1, None)                  # no copy of a left: unregistered
    idx.flush()
    assert not r.exists("t:" + h(a).hex())
    idx.forget("g")                           # unregisters everything and closes the RAM file
    assert idx.locate([h(b)]) == [None] and idx.read(h(b)) is None
    assert "g" not in idx.files
    with pytest.raises(OSError):
        os.fstat(fd)


def test_changed_chunks_finds_exactly_the_modified_chunks(tmp_path):
    data = bytearray(os.urandom(2 * C.READ_BLOCK))
    path = tmp_path / "ram"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    sent: list[bytes] = []
    try:
        assert len(list(C.read_chunks(fd, len(data), 4096, sent))) == 2 * C.READ_BLOCK // 4096
        assert b"".join(sent) == data
        data[5 * 4096 + 17] ^= 1                      # one byte in chunk 5
        data[C.READ_BLOCK + 200 * 4096] ^= 1          # chunk 456 (second block)
        path.write_bytes(data)
        got = list(C.changed_chunks(fd, len(data), 4096, sent))
        assert [i for i, _ in got] == [5, 256 + 200]
        assert got[0][1] == bytes(data[5 * 4096:6 * 4096])
        assert b"".join(sent) == data                 # updated to what is now sent
        assert list(C.changed_chunks(fd, len(data), 4096, sent)) == []
    finally:
        os.close(fd)


def test_runstates_are_read_from_qemus_trace(tmp_path):
    from g5kdeploy.vm.qemu import Guest
    g = Guest("g", tmp_path / "k", tmp_path / "i", None, tmp_path)
    assert g.runstates() == []                                 # no trace yet
    g.runstate_path.write_text("27090@1795776671.783820:vm_state_notify running 1 reason 9 (running)\n"
                               "27090@1795776672.085752:vm_state_notify running 0 reason 4 (paused)\n")
    assert g.runstates() == [(1795776671.78382, True, "running"), (1795776672.085752, False, "paused")]
    assert "vm_state_notify" in g.argv("tcg") and str(g.runstate_path) in g.argv("tcg")


def test_arguments_reach_a_node_as_one_word_each(monkeypatch):
    from g5kdeploy import remote
    sent = []
    monkeypatch.setattr(remote, "run", lambda command, hosts, timeout=None: sent.append(command) or
                        [remote.HostResult("n", True, 0, "{}", "", 0.0)])
    remote.run_module("n", "g5kdeploy.shrinker.vmm", "start", "--memory", "128; reboot", "--id", "$(id)")
    assert sent[0].endswith("g5kdeploy.shrinker.vmm start --memory '128; reboot' --id '$(id)'")
