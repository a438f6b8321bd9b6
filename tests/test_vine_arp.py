"""What ViNe's live-migration support reads and writes, without a testbed: ARP and RARP
frames as the kernel and QEMU lay them out, the LNDT with a migrated address taken out, the
sealed questions between VRs, and how a trial's watch becomes its measures."""
import ipaddress
import math
import socket
import struct

import pytest

from experiments import vine_migration as vm
from g5kdeploy.vine import arp
from g5kdeploy.vine.migration import without
from g5kdeploy.vine.tables import Record, seal, unseal, unseal_message

SECRET = b"s" * 32


def test_a_gratuitous_reply_is_laid_out_as_rfc_826_says():
    f = arp.is_at("198.19.1.200", "52:54:c6:13:01:c8").pack()
    dst, src, ethertype, htype, ptype, hlen, plen, op = struct.unpack_from("!6s6sHHHBBH", f)
    assert (dst, src.hex(), ethertype, htype, ptype, hlen, plen, op) == \
        (b"\xff" * 6, "5254c61301c8", 0x0806, 1, 0x0800, 6, 4, 2)
    assert f[28:32] == f[38:42] == socket.inet_aton("198.19.1.200")     # sender = target: gratuitous
    assert arp.parse(f) == arp.is_at("198.19.1.200", "52:54:c6:13:01:c8")


def test_a_reply_to_one_host_is_addressed_to_it_alone():
    f = arp.parse(arp.is_at("198.19.1.7", "02:00:00:00:00:01", to_ip="198.19.1.200", to_mac="52:54:c6:13:01:c8").pack())
    assert (f.dst, f.tha, f.tpa, f.sha, f.spa) == ("52:54:c6:13:01:c8", "52:54:c6:13:01:c8", "198.19.1.200",
                                                  "02:00:00:00:00:01", "198.19.1.7")


def test_qemus_announcement_parses_as_a_rarp_request():
    # QEMU's qemu_announce_self: broadcast, ethertype 0x8035, op 3, sha = tha = the NIC's MAC
    mac = bytes.fromhex("5254c61301c8")
    frame = b"\xff" * 6 + mac + struct.pack("!HHHBBH", 0x8035, 1, 0x0800, 6, 4, 3) + mac + b"\0" * 4 + mac + b"\0" * 4
    assert arp.parse(frame + b"\0" * 18) == arp.rarp("52:54:c6:13:01:c8")


@pytest.mark.parametrize("frame", [b"", b"\xff" * 41, b"\xff" * 12 + b"\x08\x00" + b"\0" * 40,
                                   arp.rarp("52:54:00:00:00:01").pack()[:14] + b"\0\x06" + b"\0" * 26])
def test_what_is_not_ipv4_arp_over_ethernet_is_ignored(frame):
    assert arp.parse(frame) is None


def test_a_migrated_address_leaves_a_hole_in_its_network():
    assert without(["198.19.1.0/24", "198.19.1.9"], set()) == ["198.19.1.0/24", "198.19.1.9"]
    parts = without(["198.19.1.0/24"], {"198.19.1.200"})
    nets = [ipaddress.ip_network(n) for n in parts]
    assert sum(n.num_addresses for n in nets) == 255
    assert not any(ipaddress.ip_address("198.19.1.200") in n for n in nets)
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("198.19.1.0/24") for n in nets for a in (n[0], n[-1]))
    assert without(["198.19.1.200"], {"198.19.1.200"}) == []
    assert without(["198.19.2.0/24"], {"198.19.1.200"}) == ["198.19.2.0/24"]


def test_vrs_questions_are_sealed_and_kept_apart_from_records():
    q = unseal_message(seal({"kind": "who-has", "mac": "52:54:00:00:00:01"}, SECRET), SECRET)
    assert q == {"kind": "who-has", "mac": "52:54:00:00:00:01"}
    with pytest.raises(ValueError, match="where a record was expected"):
        unseal(seal({"kind": "who-has", "mac": "52:54:00:00:00:01"}, SECRET), SECRET)
    with pytest.raises(ValueError, match="bad signature"):
        unseal_message(seal({"kind": "who-has"}, b"x" * 32), SECRET)
    r = Record("nancy", 7, "198.19.0.12", "02:56:4e:00:00:02", ("198.19.2.0/24", "198.19.1.200/32"))
    assert unseal(seal(r, SECRET), SECRET) == r


def test_a_watch_becomes_gaps_survival_and_bins():
    t0, t1 = 100.0, 102.0
    lines = [99.0 + 0.01 * k for k in range(200)] + [103.5 + 0.01 * k for k in range(100)]   # 2.5 s silent
    pings = [[99.0 + 0.01 * k, 0.5] for k in range(150)] + [[103.0 + 0.01 * k, 0.7] for k in range(100)]
    c = vm._connection({"lines": lines, "pings": pings, "ended": "open", "skipped": 0}, t0, t1)
    assert c["survived"] and c["stream_gap_s"] == pytest.approx(2.51, abs=0.02)
    assert c["ping_gap_s"] == pytest.approx(2.51, abs=0.02)
    assert (c["rtt_before_ms"], c["rtt_after_ms"]) == (0.5, 0.7)
    broken = vm._connection({"lines": lines[:150], "pings": pings[:150], "ended": "open", "skipped": 0}, t0, t1)
    assert not broken["survived"] and math.isinf(broken["stream_gap_s"]) and math.isinf(broken["ping_gap_s"])
    assert not vm._connection({"lines": lines, "pings": pings, "ended": "open", "skipped": 3}, t0, t1)["survived"]
    bins = vm._timeline({"lines": lines, "pings": pings}, t0)
    assert sum(b["lines"] for b in bins) == len(lines) and sum(b["pings"] for b in bins) == len(pings)
    assert [b["lines"] for b in bins if 1.0 <= b["t"] < 3.4] == [0] * 24


def test_detection_and_reconfiguration_come_from_the_vrs_events():
    ip = "198.19.1.200"
    events = [{"vr": "nancy", "event": "rarp", "t": 10.0},
              {"vr": "nancy", "event": "detected", "t": 10.05, "rarp_t": 10.0, "ip": ip},
              {"vr": "nancy", "event": "changed", "t": 10.06, "seq": 5, "networks": ["198.19.2.0/24", f"{ip}/32"]},
              {"vr": "rennes", "event": "learned", "t": 10.08, "of": "nancy", "seq": 5, "networks": []},
              {"vr": "lille", "event": "learned", "t": 10.11, "of": "nancy", "seq": 5, "networks": []}]
    assert vm._vr_times(events, ip, "nancy", ["rennes", "lille"]) == (0.05, 0.06)
    assert math.isnan(vm._vr_times(events[:4], ip, "nancy", ["rennes", "lille"])[1])
    assert all(math.isnan(x) for x in vm._vr_times(events[:1], ip, "nancy", ["rennes"]))
