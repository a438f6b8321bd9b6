"""A VR's kernel data plane, run where the VR runs (its site's gateway): a VXLAN device whose
peers are the other VRs (static forwarding entries, no learning), the GNDT as routes in a
table of its own consulted for what the site's hosts send, and nftables rules: only the
LNDT's hosts enter or leave the overlay, only the other VRs reach the VXLAN and control
ports. The VR answers ARP on the LAN for every address it routes elsewhere (proxy ARP), so
hosts configured on one subnet that spans the sites (thesis §5.5.4) reach the other sites'
parts through it. Every command is an argument vector (nothing reaches a shell)."""
from __future__ import annotations

import ipaddress

from g5kdeploy.testbed.local.system import sh

DEV = "vine0"
VNI = 74
VXLAN_PORT = 4789
TABLE = "74"                 # the GNDT's routes (ip route ... table 74)
RULE_PREF = "74"
PROTO = "74"                 # marks the host routes of migrated guests in the main table
NFT_TABLE = "vine"


def mac(index: int) -> str:
    """The overlay MAC of the VR numbered `index` (locally administered)."""
    return "02:56:4e:%02x:%02x:%02x" % ((index >> 16) & 255, (index >> 8) & 255, index & 255)


def up(address: str, own_mac: str, lan: str, control_port: int, tunnel_port: int = VXLAN_PORT) -> None:
    """The VXLAN device (from `address`; with another `tunnel_port`, DEV is a user-level
    router's TUN device, made already), the rule sending the LAN's traffic to the GNDT's
    table, the nftables rules (empty sets)."""
    if tunnel_port == VXLAN_PORT:
        down(lan)
        sh("ip", "link", "add", DEV, "type", "vxlan", "id", str(VNI), "local", address, "dstport", str(VXLAN_PORT),
           "nolearning")
        sh("ip", "link", "set", DEV, "address", own_mac)
    sh("ip", "link", "set", DEV, "mtu", "1500", "up")
    for conf in ("all", DEV):                  # packets from the overlay come from networks routed elsewhere
        sh("sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0")
    sh("sysctl", "-qw", f"net.ipv4.neigh.{lan}.proxy_delay=0")        # proxy ARP answers at once
    sh("sysctl", "-qw", f"net.ipv4.conf.{lan}.proxy_arp=1")           # for what is routed off the LAN
    sh("ip", "rule", "add", "pref", RULE_PREF, "iif", lan, "lookup", TABLE)
    sh("nft", "-f", "-", input=(
        f"table inet {NFT_TABLE} {{\n"
        "  set lndt { type ipv4_addr; flags interval; }\n"
        "  set peers { type ipv4_addr; }\n"
        "  chain input {\n    type filter hook input priority filter; policy accept;\n"
        f"    udp dport {tunnel_port} ip saddr != @peers drop\n"
        f"    tcp dport {control_port} ip saddr != @peers drop\n  }}\n"
        "  chain forward {\n    type filter hook forward priority filter; policy accept;\n"
        f"    iifname \"{lan}\" oifname \"{DEV}\" ip saddr != @lndt drop\n"
        f"    iifname \"{DEV}\" oifname \"{lan}\" ip daddr != @lndt drop\n"
        f"    iifname \"{DEV}\" oifname != \"{lan}\" drop\n  }}\n}}\n"))


def down(lan: str) -> None:
    """Remove all of it (what is missing is fine)."""
    sh("nft", "delete", "table", "inet", NFT_TABLE, check=False)
    while sh("ip", "rule", "del", "pref", RULE_PREF, check=False).returncode == 0:
        pass
    sh("ip", "route", "flush", "table", TABLE, check=False)
    sh("ip", "route", "flush", "proto", PROTO, check=False)
    sh("ip", "neigh", "flush", "proxy", "dev", lan, check=False)
    sh("sysctl", "-qw", f"net.ipv4.conf.{lan}.proxy_arp=0", check=False)
    sh("ip", "link", "del", DEV, check=False)


def set_elements(name: str, members: list[str]) -> None:
    """Replace the members of nftables set `name` (lndt: addresses or networks; peers)."""
    elements = ", ".join(str(ipaddress.ip_network(m)) if "/" in m else str(ipaddress.ip_address(m)) for m in members)
    sh("nft", "-f", "-", input=f"flush set inet {NFT_TABLE} {name}\n" +
       (f"add element inet {NFT_TABLE} {name} {{ {elements} }}\n" if members else ""))


def peer(address: str, peer_mac: str) -> None:
    """Frames for a VR's MAC go to its public address; its address resolves to its MAC."""
    sh("bridge", "fdb", "replace", peer_mac, "dev", DEV, "dst", address)
    sh("ip", "neigh", "replace", address, "lladdr", peer_mac, "dev", DEV, "nud", "permanent")


def forget_peer(address: str, peer_mac: str) -> None:
    sh("bridge", "fdb", "del", peer_mac, "dev", DEV, "dst", address, check=False)
    sh("ip", "neigh", "del", address, "dev", DEV, check=False)


def route(network: str, via: str | None) -> None:
    """A GNDT entry served by another VR (the kernel's longest prefix match is ViNe's
    most-specific-entry rule); `via` None: into DEV, where a user-level router chooses."""
    sh("ip", "route", "replace", network, *(("via", via) if via else ()), "dev", DEV,
       *(("onlink",) if via else ()), "table", TABLE)


def unroute(network: str) -> None:
    sh("ip", "route", "del", network, "table", TABLE, check=False)


def host_route(ip: str, lan: str) -> None:
    """A migrated guest now on this LAN: reached there, from the LAN and from the overlay."""
    sh("ip", "-batch", "-", input="".join(f"route replace {ipaddress.ip_address(ip)}/32 dev {lan} proto {PROTO} "
                                          f"table {table}\n" for table in ("main", TABLE)))


def unhost_route(ip: str) -> None:
    for table in ("main", TABLE):
        sh("ip", "route", "del", f"{ip}/32", "proto", PROTO, "table", table, check=False)


def proxy(ip: str, lan: str, on: bool = True) -> None:
    """Answer ARP requests for `ip` on the LAN with this VR's MAC (it is routed elsewhere)."""
    sh("ip", "neigh", "replace" if on else "del", "proxy", ip, "dev", lan, check=on)


def forget_neighbour(ip: str, lan: str) -> None:
    sh("ip", "neigh", "del", ip, "dev", lan, check=False)
