import pytest

from g5kdeploy.errors import UserError
from g5kdeploy.testbed.model import NodeSet, expand_hostlist, format_walltime, parse_walltime


def test_nodeset_prints_as_hostlist_and_round_trips(small_description):
    nodes = small_description.nodes()
    text = str(nodes)
    assert text == "graphene-[1-2].nancy.grid5000.fr,paradent-[1-3].rennes.grid5000.fr"
    assert sorted(expand_hostlist(text)) == sorted(nodes.hostnames())
    assert str(NodeSet(nodes.by_site()["rennes"][:2])) == "paradent-[1-2].rennes.grid5000.fr"


@pytest.mark.parametrize("text", ["paradent-[1-", "paradent-[3-1].rennes", "a-[x].b", ""])
def test_malformed_hostlist_is_a_one_line_user_error(text):
    with pytest.raises(UserError) as e:
        expand_hostlist(text)
    assert "\n" not in str(e.value) and "paradent-" in str(e.value)


@pytest.mark.parametrize("text,seconds", [("1", 3600), ("1:30", 5400), ("0:00:30", 30), ("2:05:07", 7507),
                                          (90, 90)])
def test_walltime(text, seconds):
    assert parse_walltime(text) == seconds
    assert parse_walltime(format_walltime(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "abc", "1:99", "0:00", "-1", "1h", "1:2:3:4"])
def test_malformed_walltime(text):
    with pytest.raises(UserError, match="walltime"):
        parse_walltime(text)
