"""Getting an image from the site's repository to the VMMs that run a request's guests
(thesis §3.5): `scp` (one copy per guest), `chain` (one broadcast chain through the VMMs,
`nimbus.chain`), `qcow` (copy-on-write volumes over a per-VMM image cache filled by scp),
`chain+qcow` (cache misses filled by the chain, §3.5.4). Every copy is checked against the
repository's SHA-256 before a guest uses it. Returns how each guest's VMM gets its disk and,
per VMM, how the image got there (`Delivery`).

On the service node, `python3 -m g5kdeploy.nimbus.propagation prepropagate IMAGE [--by scp]`
fills every VMM's cache beforehand (§3.5.2: backing files are pre-propagated) and prints
each VMM's Delivery as JSON; on a VMM, `... verify FILE SHA256` checks a copy (removed if
wrong; 3x faster than coreutils' sha256sum here, which does not use the CPU's SHA unit)."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from g5kdeploy import on_node
from g5kdeploy.nimbus import chain, ssh
from g5kdeploy.nimbus.config import CONFIG, LIB, Cloud

CACHE = LIB / "cache"
INCOMING = LIB / "incoming"
_FILLS: dict[tuple[str, str], threading.Lock] = {}     # (VMM, image) -> held while its cache is checked or filled
_FILLS_LOCK = threading.Lock()


@dataclass
class Delivery:
    """How the image reached one VMM: when it was there and checked, what it cost."""
    host: str
    ok: bool
    end: float                 # epoch s: the copy is on the VMM's disk and verified
    bytes: int = 0             # image bytes this VMM received
    cache: str = ""            # qcow modes: hit | miss
    error: str = ""


def _scp(cloud: Cloud, source: str, host: str, path: str, digest: str, keep_as: Path | None = None) -> Delivery:
    """scp a copy, then check it on the VMM (removed if wrong; installed as `keep_as` if given)."""
    try:
        ssh.scp(cloud.ssh_key, source, host, path)
        ssh.run(cloud.ssh_key, host, f"{on_node('g5kdeploy.nimbus.propagation')} verify {path} {digest}"
                                     + (f" --keep-as {keep_as}" if keep_as else ""))
    except ssh.RemoteError as e:
        return Delivery(host, False, time.time(), error=str(e))
    return Delivery(host, True, time.time(), Path(source).stat().st_size)


def _chain(cloud: Cloud, source: str, hosts: list[str], path: Path, digest: str, record: bool = False) -> list[Delivery]:
    outcomes = chain.send(source, [(h, cloud.chain_port) for h in hosts], str(path.relative_to(LIB)), digest,
                          cloud.chain_token, record=record)
    return [Delivery(o["host"], o["ok"], o.get("end", time.time()), o["bytes"], error=o["error"] if not o["ok"] else "")
            for o in outcomes]


Ready = Callable[[Delivery], None]


def _fill_cache(cloud: Cloud, hosts: list[str], source: str, image: str, digest: str, by_chain: bool,
                ready: Ready) -> None:
    cached = CACHE / f"{image}.img"
    if by_chain:
        for d in _chain(cloud, source, hosts, cached, digest, record=True):
            ready(d)
        return
    ssh.each(lambda h: ready(_scp(cloud, source, h, f"{cached}.part", digest, keep_as=cached)), hosts)


def ensure_cached(cloud: Cloud, hosts: list[str], source: str, image: str, digest: str, by_chain: bool,
                  ready: Ready | None = None) -> dict[str, Delivery]:
    """Every host's cache holds the image: hits are asked of the chain daemons, misses filled.
    `ready` hears of each host as soon as it is known or filled."""
    with _FILLS_LOCK:
        locks = [_FILLS.setdefault((h, image), threading.Lock()) for h in sorted(set(hosts))]
    for lock in locks:           # requests that share a VMM fill its cache once: the later one hits
        lock.acquire()
    try:
        return _ensure_cached(cloud, hosts, source, image, digest, by_chain, ready)
    finally:
        for lock in locks:
            lock.release()


def _ensure_cached(cloud: Cloud, hosts: list[str], source: str, image: str, digest: str, by_chain: bool,
                   ready: Ready | None) -> dict[str, Delivery]:
    delivered: dict[str, Delivery] = {}

    def done(d: Delivery, cache: str) -> None:
        d.cache = cache
        delivered[d.host] = d
        if ready:
            ready(d)
    held = chain.digests(hosts, str((CACHE / f"{image}.img").relative_to(LIB)), cloud.chain_token, cloud.chain_port)
    misses, known = [h for h in hosts if held[h] != digest], time.time()
    for h in hosts:
        if h not in misses:
            done(Delivery(h, True, known), "hit")
    if misses:
        _fill_cache(cloud, misses, source, image, digest, by_chain, lambda d: done(d, "miss"))
    return delivered


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def disks(mode: str, image: str, placement: dict[str, str], tag: str) -> dict[str, list[str]]:
    """The vmm `start` disk arguments of each guest (placement: instance -> VMM host), from
    what propagation leaves on its VMM."""
    if mode in ("qcow", "chain+qcow"):
        return {i: ["--backing", f"{CACHE}/{image}.img"] for i in placement}
    if mode == "chain":
        guests = Counter(placement.values())          # a VMM's only guest takes the copy itself
        return {i: ["--move" if guests[h] == 1 else "--copy", f"{INCOMING}/{tag}.img"] for i, h in placement.items()}
    return {i: ["--move", f"{INCOMING}/{i}.img"] for i in placement}


def propagate(cloud: Cloud, mode: str, source: str, image: str, digest: str, placement: dict[str, str],
              tag: str, ready: Ready) -> None:
    """Get the image to the VMMs of `placement` (instance -> host) where `disks` expects it.
    `ready(delivery)` is called once per VMM as soon as its copies are checked (or failed), so
    that its guests start while other VMMs may still be receiving."""
    hosts = sorted(set(placement.values()))
    if mode in ("qcow", "chain+qcow"):
        ensure_cached(cloud, hosts, source, image, digest, by_chain=mode == "chain+qcow", ready=ready)
    elif mode == "chain":
        for d in _chain(cloud, source, hosts, INCOMING / f"{tag}.img", digest):
            ready(d)
    else:
        def one_vmm(h: str) -> None:                  # a VMM is ready when all its guests' copies are
            mine = [_scp(cloud, source, h, f"{INCOMING}/{i}.img", digest) for i, at in placement.items() if at == h]
            failed = [d for d in mine if not d.ok]
            ready(failed[0] if failed else Delivery(h, True, mine[-1].end, sum(d.bytes for d in mine)))
        ssh.each(one_vmm, hosts)


def cleanup(key: str, mode: str, placement: dict[str, str], tag: str) -> None:
    """Remove what a chain left in incoming/ once every guest has its own copy (or took it)."""
    if mode == "chain":
        ssh.each(lambda h: ssh.run(key, h, f"rm -f {INCOMING}/{tag}.img"), sorted(set(placement.values())))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="g5kdeploy.nimbus.propagation")
    sub = p.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("prepropagate", help="fill every VMM's cache with a repository image")
    pre.add_argument("image")
    pre.add_argument("--by", choices=("chain", "scp"), default="chain")
    pre.add_argument("--config", type=Path, default=CONFIG)
    check = sub.add_parser("verify", help="check a copy against a SHA-256 (removed if wrong)")
    check.add_argument("file", type=Path)
    check.add_argument("sha256")
    check.add_argument("--keep-as", type=Path, help="then install it there, its digest recorded beside it")
    a = p.parse_args(argv)
    if a.command == "verify":
        if (got := sha256_file(a.file)) != a.sha256:
            a.file.unlink(missing_ok=True)
            sys.exit(f"SHA-256 mismatch: {a.file} removed (got {got}, expected {a.sha256})")
        if a.keep_as:
            chain.install(a.file, a.keep_as, a.sha256)
        return
    cloud = Cloud.load(a.config)
    source = Path(cloud.repository) / f"{a.image}.img"
    if not source.exists():
        sys.exit(f"no image {a.image!r} in {cloud.repository}: upload it first")
    delivered = ensure_cached(cloud, [v.host for v in cloud.vmms], str(source), a.image, sha256_file(source),
                              by_chain=a.by == "chain")
    json.dump([asdict(d) for d in delivered.values()], sys.stdout)
    sys.exit(0 if all(d.ok for d in delivered.values()) else 1)


if __name__ == "__main__":
    main()
