"""bench/crash_campaign.py: the kill-during-save campaign (CI size) and the checks it relies on.

The campaign itself runs as a subprocess (its workers are forked, so it wants a process with
no other threads); the torn/lost checks are exercised here on directories made to fail them.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "crash_campaign.py"
# Every mode of the campaign (upload lost verified checkpoints at the destination until the
# lineage fix of 556ecf0; this test caught it).
CI_MODES = ("shared", "upload", "diff")


@pytest.fixture(scope="module")
def cc():
    spec = importlib.util.spec_from_file_location("crash_campaign", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["crash_campaign"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_no_torn_load_and_no_lost_checkpoint_after_180_kills(tmp_path):
    out = tmp_path / "campaign.json"
    trials = 60 * len(CI_MODES)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--trials", str(trials), "--modes", ",".join(CI_MODES),
         "--seed", "13", "--fresh-every", "25", "--dir", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(out.read_text())
    modes = {m["mode"]: m for m in doc["modes"]}
    assert set(modes) == set(CI_MODES)
    for name, m in modes.items():
        assert m["trials"] == 60, name
        assert (m["torn"], m["lost"], m["worker_errors"]) == (0, 0, 0), (name, m["failures"])
        # The campaign did exercise something: saves completed, kills landed inside saves.
        assert m["saves_verified"] > 0, name
        in_save = sum(n for p, n in m["kills_by_phase"].items()
                      if p not in ("startup", "resumed", "reported"))
        assert in_save >= 10, (name, m["kills_by_phase"])
    if "upload" in modes:
        assert modes["upload"]["kills_by_phase"].get("upload", 0) > 0
    assert not list(tmp_path.glob("slurmft-crash-*")), "the campaign leaves no directory behind"


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--modes", "bogus", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "unknown mode bogus" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


# --- the checks can fail ----------------------------------------------------------------------

def save_steps(cc, spec, steps, *, state_of=None):
    """Save ``steps`` (each verified) the way the worker does, then close the manager."""
    mgr = spec.manager(writer=True)
    try:
        for step in steps:
            state = (state_of or cc.expected_state)(step, spec.shape)
            full = (step % cc.FULL_EVERY == 0) if spec.differential else None
            mgr.save(state, step, full=full).result()
    finally:
        mgr.close()


@pytest.fixture
def spec(cc, tmp_path):
    s = cc.mode_spec("shared", tmp_path, keep_last=2, shape=cc.StateShape.from_kb(8))
    s.fresh()
    return s


def test_intact_checkpoints_pass(cc, spec):
    save_steps(cc, spec, range(5))
    obs = cc.observe(spec)
    verdict = cc.judge(obs, [0, 1, 2, 3, 4], spec.keep_last)
    assert obs.dest.loaded_step == 4
    assert (verdict.torn, verdict.lost, verdict.corrupt) == ([], {}, [])


def test_a_checkpoint_with_another_steps_bytes_is_torn(cc, spec):
    def mixed(step, shape):
        state = cc.expected_state(step, shape)
        if step == 3:    # the weights of step 2 under the name of step 3: verifies, but wrong
            state["model"]["weights"] = cc.expected_state(2, shape)["model"]["weights"]
        return state

    save_steps(cc, spec, range(4), state_of=mixed)
    verdict = cc.judge(cc.observe(spec), [0, 1, 2, 3], spec.keep_last)
    assert any("load() (dest) claimed step 3: model/weights" in t for t in verdict.torn)
    assert any(t.startswith("load_info of step 3") for t in verdict.torn)


def test_the_newest_verified_checkpoint_gone_is_lost(cc, spec):
    save_steps(cc, spec, range(4))
    newest = max(Path(spec.shared).glob("step_*"))
    shutil.rmtree(newest)
    verdict = cc.judge(cc.observe(spec), [0, 1, 2, 3], spec.keep_last)
    assert set(verdict.lost) == {3}
    assert "load() gave step 2" in verdict.lost[3]


def test_a_truncated_verified_checkpoint_is_lost_and_counted_corrupt(cc, spec):
    save_steps(cc, spec, range(4))
    data = sorted(Path(spec.shared).glob("step_*"))[-1] / "data.bin"
    data.write_bytes(data.read_bytes()[:100])
    obs = cc.observe(spec)
    verdict = cc.judge(obs, [0, 1, 2, 3], spec.keep_last)
    assert obs.dest.loaded_step == 2 and obs.fallbacks >= 1
    assert 3 in verdict.lost and len(verdict.corrupt) == 1 and verdict.torn == []


def test_an_older_verified_checkpoint_may_go_only_to_rotation(cc):
    present = {5: "", 6: "", 7: ""}
    obs = cc.Observation(views=[cc.View("dest", loaded_step=7)], present=present)
    # keep_last=2: step 5 went missing? it is present; 6 and 7 are the newest verified: fine
    assert cc.judge(obs, [4, 5, 6, 7], keep_last=2).lost == {}
    # step 6 missing while only one newer good checkpoint exists: lost
    obs = cc.Observation(views=[cc.View("dest", loaded_step=7)], present={5: "", 7: ""})
    assert set(cc.judge(obs, [5, 6, 7], keep_last=2).lost) == {6}
    # step 6 missing but two newer good ones (8 was published, not yet reported): rotation
    obs = cc.Observation(views=[cc.View("dest", loaded_step=8)], present={7: "", 8: ""})
    assert cc.judge(obs, [5, 6, 7], keep_last=2).lost == {}


def test_state_mismatch_names_the_first_difference(cc):
    shape = cc.StateShape.from_kb(4)
    assert cc.state_mismatch(cc.expected_state(7, shape), 7, shape) == ""
    assert cc.state_mismatch(cc.expected_state(7, shape), 8, shape) == "step is 7, expected 8"
    state = cc.expected_state(7, shape)
    state["optimizer"]["moments"][5] = 0
    assert cc.state_mismatch(state, 7, shape).startswith("optimizer/moments: element 5 is 0")


def test_upload_mode_is_checked_from_the_destination_and_from_the_node(cc, tmp_path):
    spec = cc.mode_spec("upload", tmp_path, keep_last=2, shape=cc.StateShape.from_kb(8))
    spec.fresh()
    save_steps(cc, spec, range(3))
    obs = cc.observe(spec)
    assert [(v.name, v.loaded_step, v.mismatch) for v in obs.views] == [("dest", 2, ""), ("node", 2, "")]
    assert cc.judge(obs, [0, 1, 2], spec.keep_last).lost == {}
