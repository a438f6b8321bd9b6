"""ViNe's tables and messages, without a testbed: the most specific GNDT entry wins, the
newer record wins a network two VRs announce, and only records sealed with the overlay's
secret are taken."""
import pytest

from g5kdeploy.vine.tables import Record, gndt, lookup, seal, unseal

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
