"""The broadcast chain (nimbus.chain) over loopback: three real daemons in threads, a
real stream through them; every copy checked, a wrong digest, token or path refused with
nothing left behind, a dead hop reported; and the check of an scp'd copy."""
import hashlib
import os
import threading

import pytest

from g5kdeploy.nimbus import chain

TOKEN = "secret-token"


@pytest.fixture
def daemons(tmp_path):
    """Three chain daemons on 127.0.0.1, each with its own root; (ports, roots)."""
    servers, roots = [], []
    for k in range(3):
        root = tmp_path / f"vmm{k}"
        (root / "cache").mkdir(parents=True)
        servers.append(chain.serve({"address": "127.0.0.1", "port": 0, "token": TOKEN, "root": str(root)}))
        roots.append(root)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    yield [s.server_address[1] for s in servers], roots
    for s in servers:
        s.shutdown()
        s.server_close()


def send(source, ports, path="cache/img.img", digest=None, token=TOKEN, record=False):
    digest = digest or hashlib.sha256(source.read_bytes()).hexdigest()
    return chain.send(str(source), [("127.0.0.1", p) for p in ports], path, digest, token, record=record)


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "image.img"
    p.write_bytes(os.urandom(3 * chain.CHUNK + 12345))
    return p


def leftovers(roots):
    return sorted(str(f.relative_to(r)) for r in roots for f in r.rglob("*") if f.is_file())


def test_every_vmm_gets_a_checked_copy(daemons, image):
    ports, roots = daemons
    outcomes = send(image, ports, record=True)
    assert [o["ok"] for o in outcomes] == [True] * 3, outcomes
    assert all(o["bytes"] == image.stat().st_size and o["end"] >= o["start"] for o in outcomes)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    for r in roots:
        assert (r / "cache/img.img").read_bytes() == image.read_bytes()
        assert chain.recorded_digest(r / "cache/img.img") == digest
    assert chain.digests(["127.0.0.1"], "cache/img.img", TOKEN, ports[0]) == {"127.0.0.1": digest}
    assert chain.digests(["127.0.0.1"], "cache/other.img", TOKEN, ports[0]) == {"127.0.0.1": None}


def test_wrong_digest_keeps_nothing(daemons, image):
    ports, roots = daemons
    outcomes = send(image, ports, digest="0" * 64)
    assert not any(o["ok"] for o in outcomes)
    assert all("SHA-256 mismatch" in o["error"] for o in outcomes), outcomes
    assert leftovers(roots) == []


def test_wrong_token_and_escaping_path_are_refused(daemons, image):
    ports, roots = daemons
    refused = send(image, ports, token="guess")
    assert "wrong token" in refused[0]["error"] and not any(o["ok"] for o in refused)
    escaping = send(image, ports, path="../../etc/passwd")
    assert "outside" in escaping[0]["error"] and not any(o["ok"] for o in escaping)
    assert leftovers(roots) == []


def test_a_dead_hop_is_reported_and_the_others_keep_their_copy(daemons, image):
    ports, roots = daemons
    dead = ports[:1] + [1] + ports[2:]            # nothing listens on port 1
    outcomes = send(image, dead)
    assert outcomes[0]["ok"] and "next hop" in outcomes[0]["error"]
    assert [o["ok"] for o in outcomes[1:]] == [False, False]
    assert "broke before it" in outcomes[1]["error"]
    assert (roots[0] / "cache/img.img").read_bytes() == image.read_bytes()


def test_verify_keeps_a_good_copy_and_removes_a_wrong_one(tmp_path, image):
    from g5kdeploy.nimbus import propagation
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    propagation.main(["verify", str(image), digest])
    assert image.exists()
    with pytest.raises(SystemExit, match="SHA-256 mismatch"):
        propagation.main(["verify", str(image), "0" * 64])
    assert not image.exists()


def ask(port, frame: bytes):
    """Send raw bytes to a daemon; its answer frame (the connection then closes)."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(frame)
        return chain._read_frame(s)


def test_a_huge_head_is_refused_before_it_is_read(daemons):
    ports, roots = daemons
    answer = ask(ports[0], (300 << 20).to_bytes(4, "big"))       # announces 300 MiB, sends none
    assert "at most" in answer["refused"][0]["error"]


@pytest.mark.parametrize("head", [[1, 2], "x", {"token": TOKEN}, {"token": 7, "path": "cache/a.img"},
                                  {"token": TOKEN, "path": "cache/a.img", "size": "big", "sha256": "0" * 64, "next": []}])
def test_a_malformed_head_is_refused_and_the_daemon_goes_on(daemons, image, head):
    import json
    ports, roots = daemons
    body = json.dumps(head).encode()
    answer = ask(ports[0], len(body).to_bytes(4, "big") + body)
    assert "refused" in answer["refused"][0]["error"]
    assert [o["ok"] for o in send(image, ports)] == [True] * 3       # still serving
    assert leftovers(roots) == ["cache/img.img"] * 3


def test_an_empty_token_is_never_accepted(tmp_path):
    with pytest.raises(ValueError, match="needs a token"):
        chain.serve({"address": "127.0.0.1", "port": 0, "token": "", "root": str(tmp_path)})
    import socket
    a, b = socket.socketpair()
    with a, b:
        body = b'{"token": "", "path": "cache/img.img", "size": 1, "sha256": "' + b"0" * 64 + b'", "next": []}'
        a.sendall(len(body).to_bytes(4, "big") + body)
        assert "wrong token" in chain.handle(b, "", tmp_path)[0]["error"]     # a daemon configured without one


def test_a_replaced_or_altered_image_is_no_cache_hit(daemons, image, tmp_path):
    ports, roots = daemons
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert all(o["ok"] for o in send(image, ports[:1], record=True))
    assert chain.digests(["127.0.0.1"], "cache/img.img", TOKEN, ports[0]) == {"127.0.0.1": digest}
    other = tmp_path / "other.img"
    other.write_bytes(os.urandom(1000))
    assert all(o["ok"] for o in send(other, ports[:1]))          # a new copy, not recorded
    assert chain.digests(["127.0.0.1"], "cache/img.img", TOKEN, ports[0]) == {"127.0.0.1": None}
    assert all(o["ok"] for o in send(image, ports[:1], record=True))
    with open(roots[0] / "cache/img.img", "r+b") as f:           # changed in place after the record
        f.write(b"X")
    assert chain.digests(["127.0.0.1"], "cache/img.img", TOKEN, ports[0]) == {"127.0.0.1": None}
