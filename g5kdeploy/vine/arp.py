"""ARP and RARP frames (RFC 826, RFC 903) as a VR reads and writes them on its LAN: the
RARP a VMM sends for a guest that resumes after a live migration, the ARP that tells
hosts which MAC an address has. `Lan` is the VR's raw sockets on its LAN interface."""
from __future__ import annotations

import select
import socket
import struct
from dataclasses import dataclass

ETH_P_ARP, ETH_P_RARP = 0x0806, 0x8035
REQUEST, REPLY, RARP_REQUEST, RARP_REPLY = 1, 2, 3, 4
BROADCAST = "ff:ff:ff:ff:ff:ff"
ZERO_MAC, ZERO_IP = "00:00:00:00:00:00", "0.0.0.0"
PACKET_OUTGOING = 4
_ARP = struct.Struct("!6s6sHHHBBH6s4s6s4s")         # Ethernet header, then the ARP packet for IPv4


@dataclass(frozen=True)
class Frame:
    """One ARP (ethertype ETH_P_ARP) or RARP (ETH_P_RARP) frame: sender and target
    hardware (sha, tha) and protocol (spa, tpa) addresses, Ethernet source and destination."""
    ethertype: int
    op: int
    sha: str
    spa: str
    tha: str
    tpa: str
    src: str
    dst: str

    def pack(self) -> bytes:
        return _ARP.pack(_mac_bytes(self.dst), _mac_bytes(self.src), self.ethertype, 1, 0x0800, 6, 4,
                         self.op, _mac_bytes(self.sha), socket.inet_aton(self.spa), _mac_bytes(self.tha),
                         socket.inet_aton(self.tpa))


def parse(data: bytes) -> Frame | None:
    """The frame's ARP content; None for anything that is not IPv4 ARP or RARP over Ethernet."""
    if len(data) < _ARP.size:
        return None
    dst, src, ethertype, htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(data)
    if ethertype not in (ETH_P_ARP, ETH_P_RARP) or (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
        return None
    return Frame(ethertype, op, _mac(sha), socket.inet_ntoa(spa), _mac(tha), socket.inet_ntoa(tpa), _mac(src),
                 _mac(dst))


def is_at(ip: str, mac: str, to_ip: str | None = None, to_mac: str = BROADCAST, by: str | None = None) -> Frame:
    """An ARP reply saying `ip` is at `mac`: gratuitous (broadcast, target = itself) unless
    addressed to one host (`to_ip` at `to_mac`), whose cache alone it updates; sent from `by`
    (default `mac`), the Ethernet source switches learn."""
    return Frame(ETH_P_ARP, REPLY, mac, ip, to_mac, to_ip or ip, by or mac, to_mac)


def who_has(ip: str, mac: str, own_ip: str) -> Frame:
    return Frame(ETH_P_ARP, REQUEST, mac, own_ip, ZERO_MAC, ip, mac, BROADCAST)


def rarp(mac: str) -> Frame:
    """What QEMU's announce-self sends for a guest's NIC: 'who is `mac`'."""
    return Frame(ETH_P_RARP, RARP_REQUEST, mac, ZERO_IP, mac, ZERO_IP, mac, BROADCAST)


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _mac_bytes(text: str) -> bytes:
    b = bytes.fromhex(text.replace(":", ""))
    if len(b) != 6:
        raise ValueError(f"bad MAC {text!r}")
    return b



class Lan:
    """Raw sockets on interface `ifname`: ARP and RARP frames in (not the ones sent here), frames out."""

    def __init__(self, ifname: str):
        self.ifname = ifname
        self.socks = []
        for proto in (ETH_P_ARP, ETH_P_RARP):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
            s.bind((ifname, proto))
            self.socks.append(s)
        with open(f"/sys/class/net/{ifname}/address") as f:
            self.mac = f.read().strip()

    def receive(self, timeout: float | None = None) -> list[Frame]:
        ready, _, _ = select.select(self.socks, [], [], timeout)
        out = []
        for s in ready:
            data, addr = s.recvfrom(2048)
            if addr[2] != PACKET_OUTGOING and (f := parse(data)) is not None:
                out.append(f)
        return out

    def send(self, frame: Frame) -> None:
        self.socks[0].send(frame.pack())

    def close(self) -> None:
        for s in self.socks:
            s.close()
