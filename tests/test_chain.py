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
        assert (r / "cache/img.sha256").read_text().strip() == digest
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
