"""The emulated network: one namespace per node and per site router, a backbone, a leg
for the frontend, tc shaping. Every name is journaled before it is created.

Only root, and the users OAR runs as (`oar`, and PostgreSQL answering the nodes), reach the
testbed from the host: policy-routing rules on the socket's user (`ip rule ... uidrange`)
send anyone else's packets to the testbed to `prohibit` (connect() fails, EACCES)."""
from __future__ import annotations

import pwd

from g5kdeploy.testbed import shaping
from g5kdeploy.testbed.description import Description
from g5kdeploy.testbed.local.nodes import PREFIX, netns
from g5kdeploy.testbed.local.state import Journal
from g5kdeploy.testbed.local.system import sh
from g5kdeploy.testbed.model import Node

BACKBONE = PREFIX + "bb"
FRONTEND_LINK = PREFIX + "fe"
RULE_PREF = 1000                         # our ip rules: RULE_PREF, RULE_PREF + 1, ... (then main)
TESTBED_USERS = ("root", "oar", "postgres")
WAN_MTU = 1550                           # site to site: room for an overlay's headers (VXLAN: 50)


def router(site: str) -> str:
    return f"{PREFIX}r-{site}"


def uplink(desc: Description, site: str) -> str:
    """The backbone bridge port toward a site."""
    return f"s{desc.site_index(site)}"


def node_port(desc: Description, node: Node) -> str:
    """The site switch port toward a node."""
    return f"n{desc.nodes().by_site()[node.site].index(node) + 1}"


def _mkns(journal: Journal, name: str, forward: bool = False) -> None:
    journal.record("netns", name=name)
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    if forward:
        sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1")


def build(desc: Description, journal: Journal) -> None:
    """Backbone, frontend leg, site routers and node links (no shaping yet)."""
    fe = f"{desc.frontend_address}/24"
    _mkns(journal, BACKBONE)
    sh("ip", "-n", BACKBONE, "link", "add", "bb0", "type", "bridge")
    sh("ip", "-n", BACKBONE, "link", "set", "bb0", "up")
    journal.record("link", name=FRONTEND_LINK)
    sh("ip", "link", "add", FRONTEND_LINK, "type", "veth", "peer", "name", "fe", "netns", BACKBONE)
    sh("ip", "-n", BACKBONE, "link", "set", "fe", "master", "bb0", "up")
    sh("ip", "addr", "add", fe, "dev", FRONTEND_LINK)
    sh("ip", "link", "set", FRONTEND_LINK, "up")
    journal.record("route", spec=["unreachable", str(desc.network)])
    sh("ip", "route", "replace", "unreachable", str(desc.network))   # nothing leaks to the real network
    for pref, selector in rules(desc):
        journal.record("rule", pref=pref)
        sh("ip", "rule", "add", "pref", str(pref), "to", str(desc.network), *selector)
    for site in desc.sites:
        r, subnet = router(site), desc.site_subnet(site)
        _mkns(journal, r, forward=True)
        sh("ip", "-n", BACKBONE, "link", "add", uplink(desc, site), "type", "veth", "peer", "name", "wan0", "netns", r)
        sh("ip", "-n", BACKBONE, "link", "set", uplink(desc, site), "mtu", str(WAN_MTU), "master", "bb0", "up")
        sh("ip", "-n", r, "addr", "add", f"{desc.site_wan_address(site)}/24", "dev", "wan0")
        sh("ip", "-n", r, "link", "set", "wan0", "mtu", str(WAN_MTU), "up")
        sh("ip", "-n", r, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", r, "addr", "add", f"{desc.site_gateway(site)}/24", "dev", "br0")
        sh("ip", "-n", r, "link", "set", "br0", "up")
        journal.record("route", spec=[str(subnet)])
        sh("ip", "route", "replace", str(subnet), "via", desc.site_wan_address(site))
        for other in desc.sites:
            if other != site and desc.sites[other].access != "nat":     # private networks are not routed
                sh("ip", "-n", r, "route", "add", str(desc.site_subnet(other)), "via", desc.site_wan_address(other))
        if (policy := access_policy(desc, site)):
            sh("ip", "netns", "exec", r, "nft", "-f", "-", input=policy)
    for node in desc.nodes():
        n, r, port = netns(node), router(node.site), node_port(desc, node)
        _mkns(journal, n)
        sh("ip", "-n", r, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", n)
        sh("ip", "-n", r, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", n, "addr", "add", f"{node.address}/24", "dev", "eth0")
        sh("ip", "-n", n, "link", "set", "eth0", "up")
        sh("ip", "-n", n, "route", "add", "default", "via", desc.site_gateway(node.site))


def access_policy(desc: Description, site: str) -> str:
    """The site router's nftables rules for its access (Site.access): `outbound` and `nat`
    let no connection in from the WAN but the frontend's (the testbed's own management, as
    an administrator's); `nat` also hides the site's addresses behind the router's (but
    toward the frontend: OAR knows the nodes by their own). Empty for an open site."""
    access = desc.sites[site].access
    if access == "open":
        return ""
    subnet, fe = desc.site_subnet(site), desc.frontend_address
    rules = ("table inet site {\n"
             "  chain forward {\n    type filter hook forward priority filter; policy accept;\n"
             "    ct state established,related accept\n"
             f"    iifname \"wan0\" oifname \"br0\" ip saddr {fe} accept\n"
             "    iifname \"wan0\" oifname \"br0\" drop\n  }\n}\n")
    if access == "nat":
        rules += ("table ip site-nat {\n"
                  "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n"
                  f"    oifname \"wan0\" ip saddr {subnet} ip daddr != {fe} masquerade\n  }}\n}}\n")
    return rules


def rules(desc: Description) -> list[tuple[int, list[str]]]:
    """(preference, selector and action) of the rules that keep other users out."""
    uids = sorted({u.pw_uid for u in pwd.getpwall() if u.pw_name in TESTBED_USERS})
    allowed = [(RULE_PREF + k, ["uidrange", f"{uid}-{uid}", "lookup", "main"]) for k, uid in enumerate(uids)]
    return allowed + [(RULE_PREF + len(uids), ["prohibit"])]


def our_rules() -> list[str]:
    """Our ip rules still installed."""
    return [line for line in sh("ip", "rule", "show").stdout.splitlines()
            if RULE_PREF <= int(line.split(":")[0]) < RULE_PREF + 16]


def lan_commands(desc: Description, site: str, rate: int) -> list[list[str]]:
    """Every node link of a site limited to `rate`, both directions."""
    cmds = []
    for node in desc.nodes().by_site()[site]:
        cmds += shaping.tbf(netns(node), "eth0", rate)                           # node -> switch
        cmds += shaping.tbf(router(site), node_port(desc, node), rate)           # switch -> node
    return cmds


def wan_commands(desc: Description, site: str, rates: dict[frozenset, int]) -> list[list[str]]:
    """A site's uplink shaped per peer site, leaving it (dst) and entering it (src): the
    peer's subnet, and its router's own address (what tunnels between gateways, ViNe's,
    carry)."""
    peers = {o: (rates[frozenset((site, o))], [str(desc.site_subnet(o)), f"{desc.site_wan_address(o)}/32"])
             for o in desc.sites if o != site}
    return (shaping.htb(router(site), "wan0", peers, "dst")
            + shaping.htb(BACKBONE, uplink(desc, site), peers, "src"))


def apply(cmds: list[list[str]]) -> None:
    for cmd in cmds:
        sh(*cmd, check=cmd[3:5] != ["qdisc", "del"])   # deleting a missing qdisc is fine
