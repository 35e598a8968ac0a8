"""NodeSet: the value type for a set of nodes (parse, merge, subtract, fold)."""

import dataclasses

import pytest

from slurmft.core.errors import HostNameError
from slurmft.core.nodeset import MAX_HOSTS, NodeSet


def test_parses_expression_and_iterates_in_natural_order():
    nodes = NodeSet("node[10,2-3],gpu01")
    assert list(nodes) == ["gpu01", "node2", "node3", "node10"]
    assert len(nodes) == 4
    assert "node10" in nodes and "node1" not in nodes


def test_str_is_the_folded_hostlist():
    assert str(NodeSet(["node3", "node1", "node2", "node7"])) == "node[1-3,7]"
    assert str(NodeSet()) == ""
    assert repr(NodeSet("n[1-2]")) == "NodeSet('n[1-2]')"


def test_iterable_items_may_be_expressions_and_duplicates_collapse():
    assert NodeSet(["n[1-2]", "n2", "n3"]) == NodeSet("n[1-3]")
    assert NodeSet.parse("n[1-3]") == NodeSet("n1,n2,n3")


def test_set_operations():
    a, b = NodeSet("n[1-4]"), NodeSet("n[3-6]")
    assert str(a | b) == "n[1-6]"
    assert str(a - b) == "n[1-2]"
    assert str(a & b) == "n[3-4]"
    assert a.union("x1") == NodeSet("n[1-4],x1")
    assert a.difference(["n1", "n2"]) == NodeSet("n[3-4]")
    assert a.intersection("n4,n9") == NodeSet("n4")


def test_truthiness_equality_and_hash():
    assert not NodeSet() and not NodeSet("")
    assert NodeSet("n1")
    assert NodeSet("n[1-2]") == NodeSet(["n2", "n1"])
    assert NodeSet("n1") != NodeSet("n2")
    assert {NodeSet("n[1-2]"): 1}[NodeSet("n1,n2")] == 1


def test_is_immutable_and_fits_a_frozen_dataclass():
    nodes = NodeSet("n1")
    with pytest.raises(AttributeError):
        nodes._names = frozenset()

    @dataclasses.dataclass(frozen=True)
    class Job:
        nodes: NodeSet

    assert Job(NodeSet("n1")) == Job(NodeSet("n1"))


@pytest.mark.parametrize("bad", ["bad_name", "-n1", "n[1-2", "n1;rm", "a b"])
def test_bad_names_raise_hostnameerror(bad):
    with pytest.raises(HostNameError):
        NodeSet(bad)


def test_refuses_more_than_max_hosts():
    with pytest.raises(HostNameError):
        NodeSet(f"n[1-{MAX_HOSTS + 1}]")
    with pytest.raises(HostNameError):
        NodeSet([f"a[1-{MAX_HOSTS}]", "b1"])
