"""ViNe's tables and the messages VRs exchange: a VR's record (what it announces), the GNDT
built from every VR's record, and messages (records, the live-migration support's queries)
signed with the overlay's secret."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Record:
    """What a VR announces: its public address and overlay MAC, the networks it serves
    (GNDT entries; a /32 for a single host), and `seq`, larger for each new version."""
    vr: str
    seq: int
    address: str
    mac: str
    networks: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, d: dict) -> "Record":
        nets = tuple(str(ipaddress.ip_network(n)) for n in d["networks"])
        return cls(str(d["vr"]), int(d["seq"]), str(ipaddress.ip_address(d["address"])), _mac(d["mac"]), nets)


def _mac(text: str) -> str:
    parts = str(text).lower().split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise ValueError(f"bad MAC {text!r}")
    return ":".join(parts)


def gndt(records: dict[str, Record]) -> dict[str, str]:
    """network -> VR over every record; a network two VRs announce goes to the newer record."""
    out: dict[str, tuple[int, str]] = {}
    for r in records.values():
        for n in r.networks:
            if n not in out or (r.seq, r.vr) > out[n]:
                out[n] = (r.seq, r.vr)
    return {n: vr for n, (_, vr) in out.items()}


def lookup(table: dict[str, str], address: str) -> str | None:
    """The VR that serves `address`: the most specific GNDT entry holding it."""
    ip = ipaddress.ip_address(address)
    best = max((ipaddress.ip_network(n) for n in table if ip in ipaddress.ip_network(n)),
               key=lambda n: n.prefixlen, default=None)
    return table[str(best)] if best is not None else None


def spanning(networks: list) -> str:
    """The smallest network that holds every one of `networks`."""
    parts = [ipaddress.ip_network(n) for n in networks]
    net = parts[0]
    while not all(p.subnet_of(net) for p in parts):
        net = net.supernet()
    return str(net)


def seal(message: Record | dict, secret: bytes) -> bytes:
    """One line: the message (a record, or a dict with its `kind`) and its HMAC-SHA256
    under the overlay's secret."""
    if isinstance(message, Record):
        message = {"kind": "record", **asdict(message)}
    body = json.dumps(message, sort_keys=True)
    return json.dumps({"record": body, "mac": hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()}).encode() + b"\n"


def unseal_message(line: bytes, secret: bytes) -> dict:
    """The message of a line sealed with `secret`; ValueError for anything else."""
    try:
        msg = json.loads(line)
        body, mac = msg["record"], msg["mac"]
    except (ValueError, KeyError, TypeError):
        raise ValueError("not a sealed message") from None
    if not isinstance(body, str) or not isinstance(mac, str) or \
            not hmac.compare_digest(mac, hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()):
        raise ValueError("bad signature")
    out = json.loads(body)
    if not isinstance(out, dict) or not isinstance(out.get("kind"), str):
        raise ValueError("a sealed message without a kind")
    return out


def unseal(line: bytes, secret: bytes) -> Record:
    """The record of a line sealed with `secret`; ValueError for anything else."""
    msg = unseal_message(line, secret)
    if msg["kind"] != "record":
        raise ValueError(f"a {msg['kind']!r} message where a record was expected")
    return Record.of(msg)
