"""A cloud's configuration (/etc/nimbus/cloud.json, written by the nimbus cookbook)."""
from __future__ import annotations

import ipaddress
import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

CONFIG = Path("/etc/nimbus/cloud.json")
PROPAGATION_MODES = ("scp", "chain", "qcow", "chain+qcow")
INSTANCE_TYPES = {"m1.tiny": 96, "m1.small": 128, "m1.medium": 256, "m1.large": 512,   # MiB of guest RAM
                  "c1.medium": 1792}           # the thesis's EMR instances: room for a JVM
INSTANCE_CPUS = {"c1.medium": 2}                 # vCPUs, as EC2's (the other types: 1)
API_PORT = 8773                 # every cloud's EC2 API, on its service node
BROKER_PORT = 8774              # its context broker
CHAIN_PORT = 8790               # the VMMs' chain daemons (nimbus.chain)
CUMULUS_PORT = 8888             # Cumulus's S3 endpoint, on the service node (Nimbus's own default)
LIB = Path("/var/lib/nimbus")   # on service and VMM nodes: repository/, boot/, cache/, incoming/, vms/


def shareable(path: str) -> bool:
    """A path a guest may be given: absolute, normalized, no comma (QEMU's option separator)."""
    return path.startswith("/") and "," not in path and posixpath.normpath(path) == path.rstrip("/")


@dataclass
class Vmm:
    host: str
    memory_mb: int
    cpus: int = 1


@dataclass
class Cloud:
    site: str
    credentials: dict[str, str]
    vmms: list[Vmm]
    pool: tuple[str, str]                 # first and last guest address
    prefix: int
    gateway: str
    broker: str                           # host:port the guests reach
    api_port: int = API_PORT
    redis: str = "127.0.0.1:6379"
    redis_password: str | None = None
    propagation: str = "qcow"
    ssh_key: str = "/root/.ssh/nimbus_id"
    bridge: str = "br0"
    repository: str = str(LIB / "repository")
    context_timeout_s: int = 300          # a guest not contextualized by then is stopped
    chain_port: int = CHAIN_PORT
    chain_token: str = ""
    shares: tuple[str, ...] = ()          # VMM directories guests may mount read-only (tag share)
    regions: dict[str, str] = field(default_factory=dict)   # the federation's clouds: region -> endpoint
    cumulus_port: int = CUMULUS_PORT
    cumulus_hash: str = ""                # Swift's hash path prefix + suffix (64 hex), the cloud's own

    @property
    def cumulus(self) -> str:
        """Cumulus's S3 endpoint, as the API on the same node reaches it."""
        return f"http://127.0.0.1:{self.cumulus_port}"

    @classmethod
    def load(cls, path: Path = CONFIG) -> "Cloud":
        d = json.loads(Path(path).read_text())
        d["vmms"] = [Vmm(**v) for v in d["vmms"]]
        d["pool"] = tuple(d["pool"])
        d["shares"] = tuple(d.get("shares") or ())
        return cls(**d)

    def shared(self, tag: str) -> list[str]:
        """The VMM directories a `share` tag asks for (space-separated absolute paths), each
        inside one this cloud lets guests mount; ValueError says what is allowed."""
        paths = tag.split()
        allowed = ", ".join(self.shares) or "none"
        for p in paths:
            if not shareable(p) or len(paths) > 8 or not any(p == s or p.startswith(s.rstrip("/") + "/")
                                                             for s in self.shares):
                raise ValueError(f"tag share={tag[:200]!r}: give up to 8 absolute VMM paths inside {allowed}")
        return paths

    def addresses(self) -> list[str]:
        first, last = (ipaddress.IPv4Address(a) for a in self.pool)
        return [str(ipaddress.IPv4Address(i)) for i in range(int(first), int(last) + 1)]

    def capacity(self, memory_mb: int) -> int:
        """How many guests of this size fit on the empty cloud."""
        return min(sum(v.memory_mb // memory_mb for v in self.vmms), len(self.addresses()))
