import ipaddress

import pytest

from g5kdeploy.errors import UserError
from g5kdeploy.testbed import description


def test_embedded_default_is_two_sites_of_18_and_8_nodes():
    d = description.load()
    assert list(d.sites) == ["rennes", "nancy"]
    assert [c.name for s in d.sites.values() for c in s.clusters] == ["paradent", "graphene"]
    nodes = d.nodes()
    assert len(nodes) == 26 and str(nodes) == "graphene-[1-8].nancy.grid5000.fr,paradent-[1-18].rennes.grid5000.fr"
    assert d.lan_rate == 10**9 and d.wan_rate == 10**8
    allowed = ipaddress.ip_network("198.18.0.0/15")
    assert all(ipaddress.ip_address(n.address) in allowed for n in nodes)
    assert len({n.address for n in nodes}) == 26
    assert ipaddress.ip_address(d.frontend_address) in allowed


def test_override_file(tmp_path):
    f = tmp_path / "tb.toml"
    f.write_text('wan_rate = "10mbit"\n[sites.lyon.clusters.sagittaire]\nnodes = 3\n'
                 '[sites.lille.clusters.chiclet]\nnodes = 2\n'
                 '[[links]]\nbetween = ["lyon", "lille"]\nrate = "1.5gbit"\n')
    d = description.load(f)
    assert [n.short for n in d.nodes()] == ["sagittaire-1", "sagittaire-2", "sagittaire-3", "chiclet-1", "chiclet-2"]
    assert d.wan_rate_between("lille", "lyon") == 1_500_000_000


@pytest.mark.parametrize("toml,message", [
    ('[sites.rennes.clusters.paradent]\nnodes = "x"', "nodes must be a positive integer"),
    ('[sites.rennes.clusters.paradent]\nnodes = 0', "nodes must be a positive integer"),
    ('wan_rate = "fast"\n[sites.rennes.clusters.paradent]\nnodes = 1', "bad rate"),
    ('network = "10.0.0.0/16"\n[sites.rennes.clusters.paradent]\nnodes = 1', "inside 198.18.0.0/15"),
    ('colour = 1\n[sites.rennes.clusters.paradent]\nnodes = 1', "unknown key"),
    ('[sites.rennes.clusters.paradent]\nnodes = 1\nram = 3', "unknown key"),
    ('name = "x"', "no [sites"),
    ('[sites.rennes]\nkind = "grid5000"', "has no cluster"),
    ('[sites.rennes]\nx = 1', "unknown key(s) ['x']"),
    ('[sites.rennes]\nkind = "cloud"\n[sites.rennes.clusters.paradent]\nnodes = 1', "use one of grid5000, futuregrid"),
    ('[sites.rennes]\naccess = "closed"\n[sites.rennes.clusters.paradent]\nnodes = 1', "use one of open, outbound, nat"),
    ('[sites.rennes.clusters.paradent]\nnodes = 254', "at most 253"),
    ('[sites.rennes.clusters.paradent]\nnodes = 1\n[[links]]\nbetween = ["rennes", "lyon"]\nrate = "1gbit"',
     "must name two different sites"),
    ('[sites.rennes.clusters.paradent\nnodes = 1', "not valid TOML"),
    ('name = "evil\\n198.18.0.1 oar-server"\n[sites.rennes.clusters.paradent]\nnodes = 1',   # into /etc/hosts
     "must be lowercase letters"),
    ('[sites."rennes\\n"]\n[sites."rennes\\n".clusters.paradent]\nnodes = 1', "must be lowercase letters"),
])
def test_validation_errors_are_one_line(tmp_path, toml, message):
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(UserError) as e:
        description.load(f)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(f) in str(e.value)


def test_futuregrid_sites_are_behind_nat_and_grid5000_sites_may_be_firewalled(tmp_path):
    f = tmp_path / "sky.toml"
    f.write_text('[sites.rennes]\naccess = "outbound"\n[sites.rennes.clusters.paradent]\nnodes = 1\n'
                 '[sites.nancy.clusters.graphene]\nnodes = 1\n'
                 '[sites.hotel]\nkind = "futuregrid"\n[sites.hotel.clusters.hotel]\nnodes = 2\n')
    d = description.load(f)
    assert [(s.kind, s.access) for s in d.sites.values()] == [("grid5000", "outbound"), ("grid5000", "open"),
                                                             ("futuregrid", "nat")]
    assert str(d.nodes()) == "graphene-1.nancy.grid5000.fr,hotel-[1-2].hotel.futuregrid.org,paradent-1.rennes.grid5000.fr"


def test_missing_file():
    with pytest.raises(UserError, match="cannot read testbed description"):
        description.load("/nonexistent/tb.toml")
