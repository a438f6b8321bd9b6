"""ViNe's data plane as the original's: a user-level router. The kernel sends what the
site's hosts address to other VRs' networks into a TUN device; this process takes each
packet, finds the VR that serves its destination (the most specific GNDT entry) and sends
it to that VR in UDP; packets that come in UDP from another VR go out of the TUN device to
the LAN. Kept beside the kernel's data plane to measure both (benchmark vine)."""
from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import threading

from g5kdeploy.vine import dataplane

PORT = 4790
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000


class Forwarder:
    """The TUN device DEV and a UDP socket on the VR's public address."""

    def __init__(self, address: str, peers: list[str]):
        self.tun = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(self.tun, TUNSETIFF, struct.pack("16sH", dataplane.DEV.encode(), IFF_TUN | IFF_NO_PI))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, PORT))
        self.peers = set(peers)
        self.table: list[tuple[int, int, str]] = []        # (network, mask, VR address), most specific first

    def route(self, gndt: dict[str, str]) -> None:
        """network -> VR address, for the networks other VRs serve."""
        nets = sorted(((ipaddress.ip_network(n), via) for n, via in gndt.items()), key=lambda x: -x[0].prefixlen)
        self.table = [(int(n.network_address), int(n.netmask), via) for n, via in nets]

    def start(self) -> None:
        for loop in (self._out, self._in):
            threading.Thread(target=loop, daemon=True).start()

    def _out(self) -> None:
        read, send = os.read, self.sock.sendto
        while True:
            packet = read(self.tun, 65535)
            if len(packet) < 20:
                continue
            dst = int.from_bytes(packet[16:20], "big")
            for net, mask, via in self.table:
                if dst & mask == net:
                    send(packet, (via, PORT))
                    break

    def _in(self) -> None:
        write, receive = os.write, self.sock.recvfrom
        while True:
            packet, (peer, _) = receive(65535)
            if peer in self.peers:                          # nftables lets no one else in either
                write(self.tun, packet)
