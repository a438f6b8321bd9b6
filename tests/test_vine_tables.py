"""ViNe's tables and messages, without a testbed: the most specific GNDT entry wins, the
newer record wins a network two VRs announce, and only records sealed with the overlay's
secret are taken; the one subnet spanning sites; what a VR answers about a MAC of its LAN."""
import pytest

from g5kdeploy.vine import arp
from g5kdeploy.vine.router import Router
from g5kdeploy.vine.tables import Record, gndt, lookup, seal, spanning, unseal

A = Record("rennes", 1, "198.19.0.11", "02:56:4e:00:00:01", ("198.19.1.0/24",))
B = Record("hotel", 5, "198.19.0.13", "02:56:4e:00:00:03", ("198.19.3.0/24", "198.19.1.77/32"))


def test_the_most_specific_entry_wins():
    table = gndt({"rennes": A, "hotel": B})
    assert lookup(table, "198.19.1.10") == "rennes"
    assert lookup(table, "198.19.1.77") == "hotel"            # a host that moved (ch. 5): its /32
    assert lookup(table, "198.19.3.4") == "hotel" and lookup(table, "198.19.9.1") is None


def test_a_network_two_vrs_announce_goes_to_the_newer_record():
    older = Record("nancy", 3, "198.19.0.12", "02:56:4e:00:00:02", ("198.19.1.77/32",))
    assert gndt({"hotel": B, "nancy": older})["198.19.1.77/32"] == "hotel"
    newer = Record("nancy", 9, "198.19.0.12", "02:56:4e:00:00:02", ("198.19.1.77/32",))
    assert gndt({"hotel": B, "nancy": newer})["198.19.1.77/32"] == "nancy"


def test_only_records_sealed_with_the_secret_are_taken():
    line = seal(B, b"s3cret")
    assert unseal(line, b"s3cret") == B
    with pytest.raises(ValueError, match="bad signature"):
        unseal(line, b"other")
    forged = line.replace(b"198.19.3.0/24", b"198.19.1.0/24")
    with pytest.raises(ValueError, match="bad signature"):
        unseal(forged, b"s3cret")
    for junk in (b"", b"{}", b"[1]", b'{"record": 1, "mac": "x"}'):
        with pytest.raises(ValueError):
            unseal(junk, b"s3cret")


def test_a_record_with_bad_fields_is_refused():
    for bad in ({"networks": ["198.19.1.0/33"]}, {"address": "rennes; rm -rf /"}, {"mac": "02:56:4e:00:00"}):
        with pytest.raises(ValueError):
            Record.of({"vr": "x", "seq": 1, "address": "198.19.0.11", "mac": "02:56:4e:00:00:01",
                       "networks": [], **bad})


def test_the_one_subnet_is_the_smallest_holding_every_sites():
    assert spanning(["198.19.1.0/24", "198.19.2.0/24", "198.19.3.0/24"]) == "198.19.0.0/22"
    assert spanning(["198.19.4.0/24", "198.19.5.0/24"]) == "198.19.4.0/23"
    assert spanning(["198.19.1.0/24"]) == "198.19.1.0/24"


def test_a_vr_says_which_ip_a_mac_had_and_the_hosts_it_may_hold_in_its_arp_cache(tmp_path):
    (tmp_path / "secret").write_text("s3cret")
    r = Router({"vr": "rennes", "index": 1, "address": "198.19.0.11", "lan": "lo", "lan_address": "198.19.1.254",
                "secret_file": str(tmp_path / "secret"), "peers": {"rennes": "198.19.0.11", "nancy": "198.19.0.12"},
                "networks": ["198.19.1.0/24"], "lndt": ["198.19.1.0/24"], "run": str(tmp_path), "migration": True})
    guest, host = "52:54:c6:13:01:c8", "02:00:00:00:00:05"
    try:
        for f in (arp.who_has("198.19.1.5", guest, "198.19.1.200"),       # a host of its LAN
                  arp.is_at("198.19.1.5", host, to_ip="198.19.1.200", to_mac=guest),
                  arp.who_has("198.19.2.7", guest, "198.19.1.200")):     # one of another site's part
            r.support.seen(f)
        assert r.support.answer({"kind": "who-has", "mac": guest}) == {
            "kind": "is-at", "ip": "198.19.1.200", "hosts": ["198.19.1.254", "198.19.1.200", "198.19.1.5",
                                                             "198.19.2.7"]}
        assert r.support.answer({"kind": "who-has", "mac": host})["hosts"][-1] == "198.19.1.5"   # asked nothing off it
        assert r.support.answer({"kind": "who-has", "mac": "02:00:00:00:00:99"})["ip"] is None
    finally:
        r.support.stop()
