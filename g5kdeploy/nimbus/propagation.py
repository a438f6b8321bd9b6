"""Getting an image from the site's repository to the VMMs that run a request's guests
(thesis §3.5): `scp` (one copy per guest), `chain` (one TakTuk broadcast chain through the
VMMs), `qcow` (copy-on-write volumes over a per-VMM image cache filled by scp), `chain+qcow`
(cache misses filled by the chain). Returns, per instance, how its VMM gets its disk."""
from __future__ import annotations

from collections import defaultdict

from g5kdeploy.nimbus import ssh
from g5kdeploy.nimbus.config import LIB

CACHE = LIB / "cache"
INCOMING = LIB / "incoming"


def _cache_misses(key: str, hosts: list[str], image: str, digest: str) -> list[str]:
    def missing(h: str) -> bool:
        have = ssh.run(key, h, f"cat {CACHE}/{image}.sha256 2>/dev/null || true").strip()
        return have != digest
    return [h for h, m in zip(hosts, ssh.each(missing, hosts)) if m]


def _fill_cache(key: str, hosts: list[str], source: str, image: str, digest: str, mode: str, tag: str) -> None:
    part = f"{CACHE}/{image}.img.{tag}"
    if mode == "chain":
        ssh.chain(key, source, hosts, part)
    else:
        ssh.each(lambda h: ssh.scp(key, source, h, part), hosts)
    ssh.each(lambda h: ssh.run(key, h, f"mv -f {part} {CACHE}/{image}.img && echo {digest} > {CACHE}/{image}.sha256"),
             hosts)


def propagate(key: str, mode: str, source: str, image: str, digest: str, placement: dict[str, str],
              tag: str) -> dict[str, list[str]]:
    """placement: instance -> VMM host. Returns instance -> the vmm `start` disk arguments."""
    by_host: dict[str, list[str]] = defaultdict(list)
    for instance, host in placement.items():
        by_host[host].append(instance)
    hosts = sorted(by_host)
    if mode in ("qcow", "chain+qcow"):
        misses = _cache_misses(key, hosts, image, digest)
        if misses:
            _fill_cache(key, misses, source, image, digest, "chain" if mode == "chain+qcow" else "scp", tag)
        return {i: ["--backing", f"{CACHE}/{image}.img"] for i in placement}
    if mode == "chain":
        staged = f"{INCOMING}/{tag}.img"
        ssh.chain(key, source, hosts, staged)
        return {i: ["--copy", staged] for i in placement}
    ssh.each(lambda i: ssh.scp(key, source, placement[i], f"{INCOMING}/{i}.img"), placement)
    return {i: ["--move", f"{INCOMING}/{i}.img"] for i in placement}


def cleanup(key: str, mode: str, placement: dict[str, str], tag: str) -> None:
    """Remove what a chain left in incoming/ once every guest has its own copy."""
    if mode == "chain":
        ssh.each(lambda h: ssh.run(key, h, f"rm -f {INCOMING}/{tag}.img"), sorted(set(placement.values())))
