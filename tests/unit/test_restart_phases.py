"""Where a restart's seconds go (observe.report.restart_phases), on synthetic records."""

from slurmft.observe.report import RESTART_PHASES, restart_phases


def recs(*pairs):
    return [{"event": e, "t": t} for e, t in pairs]


def test_each_phase_is_the_gap_between_its_two_marks():
    records = recs(("step", 99.0), ("start", 104.5), ("resume", 105.0), ("step", 105.3))
    phases = restart_phases(100.0, records, launches=[10.0, 101.0])
    assert phases == {"to_relaunch_s": 1.0, "start_s": 3.5, "load_s": 0.5,
                      "first_step_s": 0.3, "total_s": 5.3}
    assert set(phases) - {"total_s"} == set(RESTART_PHASES)


def test_a_restart_that_never_trained_again_has_no_phases():
    assert restart_phases(100.0, recs(("start", 104.0)), launches=[101.0]) is None
    assert restart_phases(100.0, recs(("start", 104.0), ("resume", 105.0)), [101.0]) is None
    assert restart_phases(100.0, [], launches=[]) is None


def test_marks_after_the_next_fault_belong_to_it():
    records = recs(("start", 104.0), ("resume", 104.5), ("step", 130.0))
    assert restart_phases(100.0, records, [101.0], until=120.0) is None
    assert restart_phases(100.0, records, [125.0], until=120.0) is None
