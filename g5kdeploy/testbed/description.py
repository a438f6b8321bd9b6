"""The TOML testbed description: sites, clusters, link rates, address plan."""
from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from g5kdeploy.errors import UserError
from g5kdeploy.testbed.model import ACCESS, DOMAINS, Cluster, Node, NodeSet, Site

ALLOWED_NETWORK = ipaddress.ip_network("198.18.0.0/15")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)$", re.I)
_NAME = re.compile(r"[a-z][a-z0-9]*")               # whole names only (fullmatch): no newline
_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
SHIPPED = ("default.toml", "sky.toml")           # descriptions that come with the toolkit


def parse_rate(text: str, where: str = "rate") -> int:
    """'100mbit' -> 100_000_000 bit/s (tc units, powers of ten)."""
    m = _RATE.match(str(text).strip())
    if not m or float(m[1]) <= 0:
        raise UserError(f"{where}: bad rate {text!r}: write it like 100mbit or 1gbit")
    return int(float(m[1]) * _UNITS[m[2].lower()])


@dataclass
class Description:
    """A validated testbed description."""
    name: str
    network: ipaddress.IPv4Network
    lan_rate: int
    wan_rate: int
    sites: dict[str, Site]
    links: dict[frozenset, int] = field(default_factory=dict)
    source: dict = field(default_factory=dict)

    # -- address plan -------------------------------------------------------
    def _subnet(self, k: int) -> ipaddress.IPv4Network:
        return list(self.network.subnets(new_prefix=24))[k]

    @property
    def frontend_address(self) -> str:
        return str(self._subnet(0)[1])

    @property
    def backbone(self) -> ipaddress.IPv4Network:
        return self._subnet(0)

    def site_index(self, site: str) -> int:
        return list(self.sites).index(site) + 1

    def site_subnet(self, site: str) -> ipaddress.IPv4Network:
        return self._subnet(self.site_index(site))

    def site_gateway(self, site: str) -> str:
        return str(self.site_subnet(site)[254])

    def site_wan_address(self, site: str) -> str:
        return str(self.backbone[10 + self.site_index(site)])

    # -- nodes ----------------------------------------------------------------
    def nodes(self) -> NodeSet:
        out = NodeSet()
        for site in self.sites.values():
            i = 0
            for c in site.clusters:
                for name in c.node_names():
                    i += 1
                    out.append(Node(name, str(self.site_subnet(site.name)[i]), site.name,
                                    c.name, c.cores, c.memory_gib))
        return out

    def futuregrid(self) -> list[str]:
        """The FutureGrid sites: clouds only, up since testbed-up."""
        return [s for s, site in self.sites.items() if site.kind == "futuregrid"]

    def reservable(self) -> NodeSet:
        """The nodes OAR schedules: Grid'5000's (a FutureGrid site's nodes run its cloud)."""
        return NodeSet(n for n in self.nodes() if self.sites[n.site].kind == "grid5000")

    def wan_rate_between(self, a: str, b: str) -> int:
        return self.links.get(frozenset((a, b)), self.wan_rate)


def _positive_int(value, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"{where} must be a positive integer (got {value!r})")
    return value


def _testbed_name(value, origin: str) -> str:
    """The testbed's name (it becomes a host name, `frontend.<name>`)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise UserError(f"{origin}: name {value!r} must be lowercase letters and digits (it names hosts)")
    return value


def parse(data: dict, origin: str = "description") -> Description:
    """Validate a parsed TOML document; every problem is a one-line UserError."""
    known = {"name", "network", "lan_rate", "wan_rate", "sites", "links"}
    if unknown := set(data) - known:
        raise UserError(f"{origin}: unknown key(s) {sorted(unknown)}; allowed: {sorted(known)}")
    try:
        network = ipaddress.ip_network(data.get("network", "198.19.0.0/16"))
    except ValueError as e:
        raise UserError(f"{origin}: network: {e}") from None
    if not network.subnet_of(ALLOWED_NETWORK) or network.prefixlen > 23:
        raise UserError(f"{origin}: network {network} must be a /23 or larger inside {ALLOWED_NETWORK}")
    raw_sites = data.get("sites")
    if not isinstance(raw_sites, dict) or not raw_sites:
        raise UserError(f"{origin}: no [sites.<name>.clusters.<name>] table: describe at least one site")
    sites: dict[str, Site] = {}
    clusters_seen: set[str] = set()
    for sname, sdata in raw_sites.items():
        if not _NAME.fullmatch(sname):
            raise UserError(f"{origin}: site name {sname!r} must be lowercase letters and digits")
        sdata = sdata or {}
        if unknown := set(sdata) - {"clusters", "kind", "access"}:
            raise UserError(f"{origin}: sites.{sname}: unknown key(s) {sorted(unknown)}; allowed: clusters, kind, access")
        kind = sdata.get("kind", "grid5000")
        if kind not in DOMAINS:
            raise UserError(f"{origin}: sites.{sname}.kind {kind!r}: use one of {', '.join(DOMAINS)}")
        access = sdata.get("access", "nat" if kind == "futuregrid" else "open")
        if access not in ACCESS:
            raise UserError(f"{origin}: sites.{sname}.access {access!r}: use one of {', '.join(ACCESS)}")
        clusters = []
        for cname, cdata in sdata.get("clusters", {}).items():
            where = f"{origin}: sites.{sname}.clusters.{cname}"
            if not _NAME.fullmatch(cname) or cname in clusters_seen:
                raise UserError(f"{where}: cluster names must be unique lowercase words")
            clusters_seen.add(cname)
            if unknown := set(cdata) - {"nodes", "cores", "memory_gib"}:
                raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: nodes, cores, memory_gib")
            clusters.append(Cluster(cname, sname, _positive_int(cdata.get("nodes"), f"{where}.nodes"),
                                    _positive_int(cdata.get("cores", 1), f"{where}.cores"),
                                    _positive_int(cdata.get("memory_gib", 1), f"{where}.memory_gib"),
                                    domain=DOMAINS[kind]))
        if not clusters:
            raise UserError(f"{origin}: site {sname} has no cluster: add [sites.{sname}.clusters.<name>]")
        sites[sname] = Site(sname, tuple(clusters), kind, access)
        if sites[sname].size > 253:
            raise UserError(f"{origin}: site {sname} has {sites[sname].size} nodes; at most 253 per site")
    if len(sites) + 1 > network.num_addresses // 256:
        raise UserError(f"{origin}: network {network} has room for {network.num_addresses // 256 - 1} sites")
    links = {}
    for i, link in enumerate(data.get("links", [])):
        pair = link.get("between", [])
        if len(pair) != 2 or not set(pair) <= set(sites) or pair[0] == pair[1]:
            raise UserError(f"{origin}: links[{i}].between must name two different sites of {sorted(sites)}")
        links[frozenset(pair)] = parse_rate(link.get("rate", ""), f"{origin}: links[{i}].rate")
    return Description(
        name=_testbed_name(data.get("name", "embedded"), origin), network=network,
        lan_rate=parse_rate(data.get("lan_rate", "1gbit"), f"{origin}: lan_rate"),
        wan_rate=parse_rate(data.get("wan_rate", "100mbit"), f"{origin}: wan_rate"),
        sites=sites, links=links, source=data)


def load(path: str | Path | None = None) -> Description:
    """Load a description file, or the embedded default when `path` is None; a bare name
    that is no file here names a shipped description (`sky.toml`: SHIPPED)."""
    shipped = resources.files(__package__)
    if path is None or (not Path(path).exists() and str(path) in SHIPPED):
        path = path or "default.toml"
        text, origin = shipped.joinpath(str(path)).read_text(), str(path)
    else:
        try:
            text, origin = Path(path).read_text(), str(path)
        except OSError as e:
            raise UserError(f"cannot read testbed description {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{origin}: not valid TOML ({e})") from None
    return parse(data, origin)
