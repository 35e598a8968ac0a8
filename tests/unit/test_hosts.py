import pytest

from slurmft.core.errors import HostNameError
from slurmft.core.nodeset import expand, fold, is_valid_hostname, validate_hostname


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("node1", ["node1"]),
        ("node[1-3]", ["node1", "node2", "node3"]),
        ("node[1-2,5]", ["node1", "node2", "node5"]),
        ("gpu[08-10]", ["gpu08", "gpu09", "gpu10"]),
        ("a[1-2],b[3-4]", ["a1", "a2", "b3", "b4"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("node1,node1", ["node1"]),
        ("", []),
    ],
)
def test_expand(expr, expected):
    assert expand(expr) == expected


def test_expand_iterable_concatenates():
    assert expand(["node[1-2]", "gpu1"]) == ["node1", "node2", "gpu1"]


@pytest.mark.parametrize(
    "names, expected",
    [
        (["node1", "node2", "node3"], "node[1-3]"),
        (["gpu08", "gpu09", "gpu10"], "gpu[08-10]"),
        (["a1", "b2"], "a1,b2"),
        ([], ""),
    ],
)
def test_fold(names, expected):
    assert fold(names) == expected


def test_fold_expand_round_trip():
    names = [f"n{i:03d}" for i in range(1, 40) if i % 7]
    assert expand(fold(names)) == names


@pytest.mark.parametrize(
    "bad", ["node1;rm", "node1 node2", "$(reboot)", "node[1-", "-node", "node_1", "a" * 64, "n`x`"]
)
def test_bad_hostlists_rejected(bad):
    with pytest.raises(HostNameError):
        expand(bad)


def test_validate_hostname():
    assert validate_hostname("node-1.cluster") == "node-1.cluster"
    assert is_valid_hostname("x" * 63)
    assert not is_valid_hostname("")
    assert not is_valid_hostname("node1;rm")
    with pytest.raises(HostNameError, match="RFC 1123"):
        validate_hostname("bad name")


def test_a_huge_range_is_refused_before_it_is_expanded():
    import pytest

    from slurmft.core.errors import HostNameError
    from slurmft.core.nodeset import MAX_HOSTS, expand

    with pytest.raises(HostNameError, match=f"more than {MAX_HOSTS} hosts"):
        expand("node[1-10000000]")
    with pytest.raises(HostNameError, match="more than"):
        expand("a[1-300]b[1-300]")
    assert len(expand(f"n[1-{MAX_HOSTS}]")) == MAX_HOSTS
