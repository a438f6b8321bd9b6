from g5kdeploy.testbed import shaping
from g5kdeploy.testbed.description import parse_rate
from g5kdeploy.testbed.local import network


def test_rates_parse_in_tc_units():
    assert parse_rate("100mbit") == 10**8 and parse_rate("1gbit") == 10**9 and parse_rate("1.5Mbit") == 1_500_000


def test_tbf_burst_covers_a_timer_tick():
    [cmd] = shaping.tbf("ns", "eth0", 10**9)
    assert cmd[:8] == ["tc", "-n", "ns", "qdisc", "replace", "dev", "eth0", "root"]
    burst = int(cmd[cmd.index("burst") + 1])
    assert burst >= 10**9 / 8 / shaping.HZ and cmd[cmd.index("rate") + 1] == "1000000000bit"
    assert int(shaping.tbf("ns", "eth0", 10**6)[0][12]) >= 32000


def test_htb_one_class_and_filter_per_peer():
    cmds = shaping.htb("r", "wan0", {"a": (10**8, ["198.19.2.0/24"]), "b": (5 * 10**7, ["198.19.3.0/24"])}, "dst")
    assert cmds[0] == ["tc", "-n", "r", "qdisc", "del", "dev", "wan0", "root"]
    filters = [c for c in cmds if c[3] == "filter"]
    classes = [c for c in cmds if c[3] == "class"]
    assert len(classes) == 3 and len(filters) == 2   # default (unlimited) + one per peer
    assert classes[0][classes[0].index("rate") + 1] == f"{shaping.UNLIMITED}bit"
    for f, c in zip(filters, classes[1:]):
        assert f[f.index("flowid") + 1] == c[c.index("classid") + 1]
        assert f[f.index("match") + 2] == "dst"
    assert {f[f.index("dst") + 1] for f in filters} == {"198.19.2.0/24", "198.19.3.0/24"}


def test_wan_shaped_on_both_ends_of_each_site_uplink(small_description):
    d = small_description
    rates = {frozenset(("rennes", "nancy")): 2 * 10**7}
    cmds = network.wan_commands(d, "rennes", rates)
    ends = {(c[2], c[6]) for c in cmds if c[3] == "class"}
    assert ends == {("g5k-r-rennes", "wan0"), ("g5k-bb", "s1")}
    matches = {(c[2], c[c.index("match") + 2], c[c.index("match") + 3]) for c in cmds if c[3] == "filter"}
    assert matches == {("g5k-r-rennes", "dst", "198.19.2.0/24"), ("g5k-bb", "src", "198.19.2.0/24"),
                       ("g5k-r-rennes", "dst", "198.19.0.12/32"), ("g5k-bb", "src", "198.19.0.12/32")}
    flows = {c[c.index("flowid") + 1] for c in cmds if c[2] == "g5k-r-rennes" and c[3] == "filter"}
    assert len(flows) == 1                           # one class: tunnelled or not, the same link


def test_lan_shaped_both_directions(small_description):
    cmds = network.lan_commands(small_description, "nancy", 10**9)
    assert {(c[2], c[6]) for c in cmds} == {("g5k-graphene-1", "eth0"), ("g5k-r-nancy", "n1"),
                                            ("g5k-graphene-2", "eth0"), ("g5k-r-nancy", "n2")}
