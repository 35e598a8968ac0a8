"""A rank stuck in a collective, for real: mpirun with 2 local ranks of the example train.py,
``--hang-at-step 6 --hang-rank 1``. The HangDetector (real clock) finds both ranks stuck,
rank 1 as the laggard; each rank's faulthandler dump shows where it is (rank 0 inside the
step's allreduce, rank 1 in block_instead_of_allreduce). The relaunch does not hang again and
finishes. Needs Open MPI, mpi4py and torch, not the Slurm cluster."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurmft.supervise.hang import HangDetector, laggards

pytestmark = pytest.mark.integration

pytest.importorskip("mpi4py")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "slurmft" / "examples" / "train.py"


def mpirun_argv(*args: str) -> list[str]:
    return ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2",
            "--mca", "btl", "self,vader", "--mca", "oob_tcp_if_include", "lo",
            "-x", "SLURMFT_HEARTBEAT_DIR", "-x", "SLURMFT_HANG_DUMP_AFTER",
            sys.executable, str(TRAIN), "--steps", "30", "--step-interval", "5", *args]


def test_collective_hang_is_detected_with_stacks_and_the_relaunch_finishes(tmp_path):
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun not installed")
    hb, ckpt = tmp_path / "hb", tmp_path / "ckpt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               SLURMFT_HEARTBEAT_DIR=str(hb), SLURMFT_HANG_DUMP_AFTER="1")
    det = HangDetector(hb, 2, timeout=3.0, startup_grace=120.0)
    det.reset(2)
    proc = subprocess.Popen(mpirun_argv("--checkpoint-dir", str(ckpt), "--hang-at-step", "6",
                                        "--hang-rank", "1"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        stuck = []
        while len(stuck) < 2 or not all(s.stacks for s in stuck):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no hang detected within 120 s"
            time.sleep(0.2)
            stuck = det.poll()
        by_rank = {s.rank: s for s in stuck}
        assert (by_rank[0].last_step, by_rank[1].last_step) == (6, 5)
        assert [s.rank for s in laggards(stuck)] == [1]
        assert "in block_instead_of_allreduce" in by_rank[1].stacks
        assert "in __call__" in by_rank[0].stacks          # DataParallelStep's Allreduce
        assert by_rank[0].seconds_without_progress >= 3.0
    finally:
        os.killpg(proc.pid, signal.SIGKILL)                # our own mpirun and its ranks
        proc.wait()
    assert (ckpt / ".slurmft-hang-injected").read_text().startswith("rank 1 step 6")
    det.reset(2)
    again = subprocess.run(mpirun_argv("--checkpoint-dir", str(ckpt), "--resume",
                                       "--hang-at-step", "6", "--hang-rank", "1"),
                           env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout
    assert det.poll() == [] and det.last_beat(0).done and det.last_beat(0).step == 29
