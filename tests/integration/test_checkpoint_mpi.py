"""mpirun with 2-4 local ranks: rank 0 writes, all ranks load the same checkpoint, and a run
saved with N ranks resumes with a different world size (sampler re-derived from the global
step). Needs Open MPI and mpi4py, not the Slurm cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("mpi4py")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    from slurmft.checkpoint.manager import CheckpointPolicy
    from slurmft.checkpoint.mpi import MPICheckpointManager
    from slurmft.checkpoint.torch import TorchCheckpointer, shard_remaining
    from mpi4py import MPI

    path, stop_at, signal_rank, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    N, BATCH = 400, 4                      # samples per epoch, per-rank batch
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pol = CheckpointPolicy(interval=0, step_interval=5, keep_last=3, signals="SIGUSR1")
    mgr = MPICheckpointManager(path, pol)
    mgr.install_signal_handlers()
    ck = TorchCheckpointer(mgr.manager, model, opt)
    info, raw = mgr.load()
    point = ck.apply(raw, info.name) if info else None
    step = point.step if point else 1
    seen = point.samples_seen if point else 0
    mine = shard_remaining(N, seen, rank, size, seed=1)
    everyone = comm.gather(mine, root=0)
    saved = []
    pos = 0
    while True:
        if signal_rank >= 0 and rank == signal_rank and step == stop_at:
            os.kill(os.getpid(), signal.SIGUSR1)
        idx = mine[pos:pos + BATCH]
        pos += BATCH
        x = torch.stack([torch.arange(6, dtype=torch.float32) * (i % 7) / 7 for i in idx])
        y = x.sum(1, keepdim=True)
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        for p in model.parameters():   # data parallel: average gradients
            p.grad.copy_(torch.from_numpy(comm.allreduce(p.grad.numpy())) / size)
        opt.step()
        seen += BATCH * size
        want = mgr.should_save(step)          # collective: same answer on every rank
        final = mgr.should_stop or (signal_rank < 0 and step == stop_at)
        if want or final:
            mgr.save(ck.state(step, samples_seen=seen), step, durable=True)
            saved.append(step)
        if final:
            break
        step += 1
    digest = float(sum(p.double().sum() for p in model.parameters()))
    digests = comm.gather(digest, root=0)
    mgr.close()
    if rank == 0:
        json.dump({"resumed_from": info.name if info else None, "resumed_step": point.step if point else None,
                   "world": size, "saved": saved, "last_step": step, "digests": digests,
                   "shards": everyone, "seen_at_resume": point.samples_seen if point else 0,
                   "prev_world": point.world_size if point else None}, open(out, "w"))
""")


def mpirun(np_: int, *args: str, tmp: Path) -> dict:
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun not installed")
    script = tmp / "train.py"
    script.write_text(SCRIPT)
    out = tmp / f"out-{np_}-{args[1]}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    argv = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(np_),
            "--mca", "btl", "self,vader", "--mca", "oob_tcp_if_include", "lo",
            sys.executable, str(script), *args, str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_resume_at_other_world_sizes(tmp_path):
    ckpt = tmp_path / "ckpt"
    # 3 ranks; rank 1 gets SIGUSR1 at step 12: every rank saves step 12 and stops.
    a = mpirun(3, str(ckpt), "12", "1", tmp=tmp_path)
    assert a["resumed_from"] is None and a["saved"] == [5, 10, 12] and a["last_step"] == 12
    assert len(set(a["digests"])) == 1
    names = sorted(n for n in os.listdir(ckpt) if n.startswith("step_"))
    assert names == ["step_000000000005", "step_000000000010", "step_000000000012"]

    # N-1 = 2 ranks resume from step 12 and run to step 20.
    b = mpirun(2, str(ckpt), "20", "-1", tmp=tmp_path)
    assert b["resumed_from"] == "step_000000000012" and b["resumed_step"] == 13
    assert b["prev_world"] == 3 and b["seen_at_resume"] == 12 * 4 * 3
    assert b["saved"] == [17, 20]
    assert len(set(b["digests"])) == 1              # every rank loaded the same weights
    rest = sorted(i for shard in b["shards"] for i in shard)
    assert len(rest) == 400 - 144 and len(set(rest)) == len(rest)   # no sample twice

    # Corrupt the newest: rank 0 falls back, and all 4 ranks load that same one.
    data = ckpt / "step_000000000020" / "data.bin"
    raw = bytearray(data.read_bytes())
    raw[3] ^= 0xFF
    data.write_bytes(bytes(raw))
    c = mpirun(4, str(ckpt), "22", "-1", tmp=tmp_path)
    assert c["resumed_from"] == "step_000000000017" and c["resumed_step"] == 18
    assert c["prev_world"] == 2 and len(set(c["digests"])) == 1
