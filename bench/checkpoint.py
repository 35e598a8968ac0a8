"""Checkpoint benchmark: training-thread stall and time-to-durable, same state, same run.

    .venv/bin/python bench/checkpoint.py                 # ~1.2 GB: 100M params + Adam state
    .venv/bin/python bench/checkpoint.py --size-mb 100   # quick

Methods (each repeated ``--repeats`` times, interleaved so disk noise hits all alike):

* raw        write the same bytes to one file + fsync: the physical limit
* torch.save torch.save to a file + fsync (synchronous: stall == durable)
* dcp-async  torch.distributed.checkpoint.async_save (gloo group of 1, FileStore in a temp dir)
* slurmft    TorchCheckpointer.save: stall = snapshot into reused buffers; durable = written,
             fsynced, renamed, read back and verified, ``latest`` updated
* slurmft pipeline   the same with ``pipeline=True`` (writing overlaps the snapshot copy)

Targets: slurmft stall <= 0.15 s and >= 2x below dcp-async; durable <= 1.3x raw;
verification <= 10% of durable. ``reserve()`` allocates slurmft's buffers before the loop
(timed separately). Prints a table; files go to a temp dir that is removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slurmft.checkpoint.manager import CheckpointManager, CheckpointPolicy  # noqa: E402
from slurmft.checkpoint.torch import TorchCheckpointer  # noqa: E402


def build(size_mb: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model whose params + Adam (exp_avg, exp_avg_sq) total about ``size_mb`` MB."""
    params = int(size_mb * 1e6 / 12)           # 3 fp32 copies of every parameter
    width = 4096
    layers = max(1, round(params / (width * width)))
    width = int((params / layers) ** 0.5)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()                                  # creates exp_avg / exp_avg_sq
    return model, opt


def nbytes(model, opt) -> int:
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for st in opt.state.values():
        total += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
    return total


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def bench_raw(model, opt, d: Path) -> tuple[float, float]:
    tensors = [p.detach() for p in model.parameters()]
    for st in opt.state.values():
        tensors += [v for v in st.values() if torch.is_tensor(v) and v.dim() > 0]
    t0 = time.perf_counter()
    with open(d / "raw.bin", "wb", buffering=0) as f:
        for t in tensors:
            f.write(memoryview(t.numpy()).cast("B"))
        os.fsync(f.fileno())
    fsync_path(d)
    dt = time.perf_counter() - t0
    return dt, dt


def bench_torch_save(model, opt, d: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    path = d / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    fsync_path(path)
    fsync_path(d)
    dt = time.perf_counter() - t0
    return dt, dt


def bench_dcp(model, opt, d: Path) -> tuple[float, float]:
    state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    t0 = time.perf_counter()
    resp = dcp.async_save(state, checkpoint_id=str(d / "dcp"))
    stall = time.perf_counter() - t0
    fut = getattr(resp, "upload_completion", resp)
    fut.result()
    return stall, time.perf_counter() - t0


class SlurmftBench:
    def __init__(self, model, opt, root: Path, pipeline: bool = False) -> None:
        self.root = root
        self.verify: list[float] = []
        self.mgr = CheckpointManager(root, CheckpointPolicy(keep_last=1, interval=0, step_interval=0),
                                     on_event=self._event, pipeline=pipeline)
        self.ck = TorchCheckpointer(self.mgr, model, opt)
        self.step = 0

    def _event(self, name: str, fields: dict) -> None:
        if name == "save":
            self.verify.append(fields["verify_s"])

    def __call__(self, model, opt, d: Path) -> tuple[float, float]:
        self.step += 1
        t0 = time.perf_counter()
        handle = self.ck.save(self.step)
        stall = time.perf_counter() - t0
        handle.result()
        return stall, time.perf_counter() - t0


def fmt(xs: list[float]) -> str:
    if not xs:
        return "-"
    med = statistics.median(xs)
    return f"{med:7.3f} [{min(xs):.3f}-{max(xs):.3f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=1200.0, help="state size (default 1200)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir in /work or /tmp)")
    args = ap.parse_args()

    base = args.dir or ("/work" if os.access("/work", os.W_OK) else tempfile.gettempdir())
    free = shutil.disk_usage(base).free
    need = args.size_mb * 1e6 * 7
    if free < need:
        print(f"not enough free space in {base}: {free / 1e9:.1f} GB < {need / 1e9:.1f} GB", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="slurmft-bench-", dir=base))
    try:
        dist.init_process_group("gloo", store=dist.FileStore(str(tmp / "pg-store"), 1),
                                rank=0, world_size=1)
        model, opt = build(args.size_mb)
        size = nbytes(model, opt)
        print(f"state: {size / 1e9:.2f} GB ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params "
              f"+ Adam), repeats: {args.repeats}, dir: {tmp}")
        slurm = SlurmftBench(model, opt, tmp / "slurmft")
        t0 = time.perf_counter()
        slurm.mgr.reserve(slurm.ck.state(0))    # once, before the training loop
        reserve_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        h = slurm.ck.save(0)
        first_stall = time.perf_counter() - t0
        h.result()
        slurm.verify.clear()
        piped = SlurmftBench(model, opt, tmp / "slurmft-pipe", pipeline=True)
        piped.mgr.reserve(piped.ck.state(0))
        methods = {"raw write+fsync": bench_raw, "torch.save+fsync": bench_torch_save,
                   "dcp async_save": bench_dcp, "slurmft": slurm, "slurmft pipeline": piped}
        results: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                d = tmp / name.split()[0].replace(".", "_")
                d.mkdir(exist_ok=True)
                stall, durable = fn(model, opt, d)
                results[name][0].append(stall)
                results[name][1].append(durable)
                if not name.startswith("slurmft"):
                    shutil.rmtree(d)
        slurm.mgr.close()
        piped.mgr.close()

        raw = statistics.median(results["raw write+fsync"][1])
        raw_min = min(results["raw write+fsync"][1])
        print(f"\n{'method':<18} {'stall s median [min-max]':>26} {'durable s median [min-max]':>28} "
              f"{'durable/raw':>11} {'(min/min)':>9} {'GB/s':>6}")
        for name, (stalls, durables) in results.items():
            med = statistics.median(durables)
            print(f"{name:<18} {fmt(stalls):>26} {fmt(durables):>28} {med / raw:>11.2f} "
                  f"{min(durables) / raw_min:>9.2f} {size / 1e9 / med:>6.2f}")
        s_stall = statistics.median(results["slurmft"][0])
        d_stall = statistics.median(results["dcp async_save"][0])
        s_dur = statistics.median(results["slurmft"][1])
        v = statistics.median(slurm.verify) if slurm.verify else float("nan")
        print(f"\nslurmft reserve() before the loop (allocates + touches buffers): {reserve_s:.3f} s; "
              f"first save stall after it: {first_stall:.3f} s")
        print(f"slurmft verification (read back + checksum): {fmt(slurm.verify)} s "
              f"= {100 * v / s_dur:.1f}% of durable")
        print("targets:")
        print(f"  stall <= 0.15 s .................. {s_stall:.3f} s  {'OK' if s_stall <= 0.15 else 'MISSED'}")
        print(f"  stall >= 2x below dcp async_save . {d_stall / s_stall:.1f}x  "
              f"{'OK' if d_stall >= 2 * s_stall else 'MISSED'}")
        print(f"  durable <= 1.3x raw write ........ {s_dur / raw:.2f}x  {'OK' if s_dur <= 1.3 * raw else 'MISSED'}")
        print(f"  verification <= 10% .............. {100 * v / s_dur:.1f}%  "
              f"{'OK' if v <= 0.1 * s_dur else 'MISSED'}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
