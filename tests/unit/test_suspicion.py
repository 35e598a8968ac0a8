import pytest

from slurmft.core.errors import ConfigError
from slurmft.probe.records import Health, ProbeResult
from slurmft.recovery.suspicion import ConfirmPolicy, FailureTracker, too_many_failed


def _r(host, health):
    return {host: ProbeResult(host, health)}


def test_confirmed_only_after_consecutive_failures():
    t = FailureTracker(ConfirmPolicy(confirm=3))
    for expected in ([], [], ["n1"]):
        t.observe(_r("n1", Health.UNRESPONSIVE))
        assert t.confirmed(["n1"]) == expected
    assert t.streak("n1") == 3


def test_healthy_probe_resets_the_streak():
    t = FailureTracker(ConfirmPolicy(confirm=2))
    t.observe(_r("n1", Health.UNREACHABLE))
    assert t.suspects() == ["n1"]
    t.observe(_r("n1", Health.HEALTHY))
    t.observe(_r("n1", Health.UNREACHABLE))
    assert t.confirmed(["n1"]) == [] and t.suspects() == ["n1"]


def test_forget_clears_hosts():
    t = FailureTracker(ConfirmPolicy(confirm=1))
    t.observe({**_r("a", Health.DEGRADED), **_r("b", Health.DEGRADED)})
    assert t.confirmed(["a", "b"]) == ["a", "b"]
    t.forget(["a"])
    assert t.confirmed(["a", "b"]) == ["b"]


@pytest.mark.parametrize("nodes, failed, frac, expected", [
    (["a", "b", "c", "d"], ["a"], 0.5, False),
    (["a", "b", "c", "d"], ["a", "b"], 0.5, False),
    (["a", "b", "c", "d"], ["a", "b", "c"], 0.5, True),
    (["a"], ["a"], 0.5, False),
    (["a", "b"], ["a", "b"], 1.0, False),
])
def test_mass_failure_guard(nodes, failed, frac, expected):
    assert too_many_failed(nodes, failed, frac) is expected


@pytest.mark.parametrize("kwargs", [{"confirm": 0}, {"max_failed_fraction": 0}, {"max_failed_fraction": 1.5}])
def test_policy_validation(kwargs):
    with pytest.raises(ConfigError):
        ConfirmPolicy(**kwargs)
