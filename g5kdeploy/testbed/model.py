"""What a testbed is made of: sites, clusters, nodes, reservations, node sets."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime

import hostlist

from g5kdeploy.errors import UserError

DOMAIN = "grid5000.fr"
DOMAINS = {"grid5000": DOMAIN, "futuregrid": "futuregrid.org"}      # a site's kind -> its nodes' domain
ACCESS = ("open", "outbound", "nat")    # who may open connections into a site (Site.access)


@dataclass(frozen=True)
class Node:
    """One machine: `paradent-3.rennes.grid5000.fr`."""
    hostname: str
    address: str
    site: str
    cluster: str
    cores: int
    memory_gib: int

    @property
    def short(self) -> str:
        """`paradent-3`"""
        return self.hostname.split(".")[0]

    def __str__(self) -> str:
        return self.hostname


@dataclass(frozen=True)
class Cluster:
    """A cluster; `queues`, `exotic` and `deploy` say which OAR jobs may have its nodes
    (the Reference API's supported_job_types and exotic; a local cluster takes any job)."""
    name: str
    site: str
    nodes: int
    cores: int
    memory_gib: int
    queues: tuple[str, ...] = ("default",)     # besteffort jobs go anywhere
    exotic: bool = False                       # only jobs that name it (OAR's `-t exotic`)
    deploy: bool = True                        # Kadeploy may deploy it
    domain: str = DOMAIN                       # futuregrid.org for a FutureGrid site's nodes

    def takes(self, queue: str | None, deploy: bool, named: bool) -> bool:
        """Whether a job of that queue (None: default) and kind may have this cluster's
        nodes; `named`: the job names this cluster or its hosts."""
        return ((queue or "default") in self.queues or queue == "besteffort") and (self.deploy or not deploy) \
            and (named or not self.exotic)

    def node_names(self) -> list[str]:
        return [f"{self.name}-{i}.{self.site}.{self.domain}" for i in range(1, self.nodes + 1)]


@dataclass(frozen=True)
class Site:
    """A site; `kind` grid5000 (bare metal through OAR) or futuregrid (a cloud only: its
    nodes run its Nimbus cloud, nobody reserves them); `access`: `open` (anyone may connect
    in), `outbound` (firewalled: connections out only, as Grid'5000 toward the Internet) or
    `nat` (private addresses behind the router's NAT, as FutureGrid's VMs)."""
    name: str
    clusters: tuple[Cluster, ...]
    kind: str = "grid5000"
    access: str = "open"

    @property
    def size(self) -> int:
        return sum(c.nodes for c in self.clusters)


class NodeSet(list):
    """A list of nodes that prints as a hostlist (`paradent-[1-4].rennes.grid5000.fr`)."""

    def __str__(self) -> str:
        return hostlist.collect_hostlist([n.hostname for n in self])

    def hostnames(self) -> list[str]:
        return [n.hostname for n in self]

    def by_site(self) -> dict[str, "NodeSet"]:
        out: dict[str, NodeSet] = {}
        for n in self:
            out.setdefault(n.site, NodeSet()).append(n)
        return out

    def by_address(self) -> "NodeSet":
        """Sorted by IP address (198.18.1.2 before 198.18.1.10)."""
        return NodeSet(sorted(self, key=lambda n: ipaddress.ip_address(n.address)))


def heads(nodes) -> dict[str, tuple[Node, "NodeSet"]]:
    """Per site, its head node (the lowest IP address: a cloud's service node, the Shrinker
    site's Redis, the sky's master) and the others, in address order."""
    return {site: (ns[0], NodeSet(ns[1:])) for site, ns in
            ((s, group.by_address()) for s, group in NodeSet(nodes).by_site().items())}


def expand_hostlist(text: str) -> list[str]:
    """`paradent-[1-3].rennes` -> three names; a malformed hostlist is a UserError."""
    try:
        names = hostlist.expand_hostlist(text)
    except hostlist.BadHostlist as e:
        raise UserError(f"malformed hostlist {text!r} ({e}): write it like paradent-[1-4].rennes") from None
    if not names:
        raise UserError(f"empty hostlist {text!r}: name at least one node, e.g. paradent-1.rennes")
    return names


@dataclass
class Reservation:
    """Nodes obtained from OAR: one job per site, all ending at `end`; `adopted` are the jobs
    that were already there (the enclosing one, or live jobs of the same name)."""
    jobs: dict[str, int]
    nodes: NodeSet
    end: datetime
    name: str = "g5kdeploy"
    adopted: dict[str, int] = field(default_factory=dict)
    deploy: bool = True              # deploy jobs (root through the deployed key) or not (sudo-g5k)

    def __str__(self) -> str:
        jobs = ", ".join(f"{s}:{j}" + (" adopted" if s in self.adopted else "") for s, j in self.jobs.items())
        return f"{self.nodes} (OAR jobs {jobs}, until {self.end:%H:%M:%S})"


@dataclass(frozen=True)
class Demand:
    """One site's part of a request: `count` nodes anywhere on the site, so many per cluster,
    the named hosts, or OAR's own resources string (`raw`)."""
    site: str
    count: int
    clusters: tuple[tuple[str, int], ...] = ()
    hosts: tuple[str, ...] = ()
    raw: str = ""

    @property
    def resources(self) -> str:
        """What OAR is asked for (oarsub -l, the API's `resources`), walltime aside."""
        if self.raw:
            return self.raw
        if self.hosts:
            return "{host IN (%s)}/nodes=%d" % (",".join(f"'{h}'" for h in self.hosts), self.count)
        if self.clusters:
            return "+".join(f"{{cluster='{c}'}}/nodes={n}" for c, n in self.clusters)
        return f"nodes={self.count}"

    @property
    def named(self) -> bool:
        """Whether it names clusters or hosts (and so may have exotic ones: Cluster.takes)."""
        return bool(self.clusters or self.hosts)


_WALLTIME = re.compile(r"^(\d+)(?::([0-5]?\d))?(?::([0-5]?\d))?$")


def parse_walltime(text: str | int) -> int:
    """OAR walltime `H`, `H:MM` or `H:MM:SS` (or seconds as an int) -> seconds."""
    if isinstance(text, int) and text > 0:
        return text
    m = _WALLTIME.match(str(text).strip())
    if not m or (seconds := int(m[1]) * 3600 + int(m[2] or 0) * 60 + int(m[3] or 0)) <= 0:
        raise UserError(f"malformed walltime {text!r}: use H:MM or H:MM:SS, e.g. 1:30")
    return seconds


def format_walltime(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
